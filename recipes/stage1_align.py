"""ViFT stage 1 (alignment): trains the projector only on image captions with the "plain" template.

```bash
# real scale (8 GPUs, DeepSpeed ZeRO-2)
accelerate launch --config_file recipes/accelerate/zero2.yaml \
    -m recipes.stage1_align --config recipes/stage1_qwen2.5-7b_siglip-so400m.yaml

# tiny, on a CPU
python -m recipes.make_tiny_assets --output_dir vift-tiny
python -m recipes.stage1_align --config recipes/tiny_stage1.yaml
```
Any field of the YAML can be overridden on the command line, e.g. `--max_steps 10 --output_dir out/s1`.
"""

from modeling_vift.training import main, make_parser


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(1, script_args, training_args, model_args)
