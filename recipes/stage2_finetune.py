"""ViFT stage 2 (ability-specific fine-tuning): captions mixed with text-only instructions, LLM + projector + vision
tower trained with separate learning rates (or LoRA on the LLM with `--use_peft`), vision-aware packing.

```bash
# real scale (8 GPUs, DeepSpeed ZeRO-3), starting from the stage-1 output
accelerate launch --config_file recipes/accelerate/zero3.yaml \
    -m recipes.stage2_finetune --config recipes/stage2_qwen2.5-7b_siglip-so400m.yaml

# LoRA on the language model, projector fully trained
accelerate launch --config_file recipes/accelerate/multi_gpu.yaml \
    -m recipes.stage2_finetune --config recipes/stage2_lora_qwen2.5-7b_siglip-so400m.yaml

# tiny, on a CPU (after `python -m recipes.make_tiny_assets --output_dir vift-tiny`)
python -m recipes.stage2_finetune --config recipes/tiny_stage2.yaml
accelerate launch --num_processes 2 --cpu -m recipes.stage2_finetune --config recipes/tiny_stage2.yaml
```
"""

from modeling_vift.training import main, make_parser


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(2, script_args, training_args, model_args)
