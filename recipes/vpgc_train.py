"""ViFT VPG-C stage: trains only the VPG-C module (instruction-guided residual visual re-attention, from the Cheetah
work) on top of a trained ViFT checkpoint; everything else stays frozen. Same data mixtures and vision-aware packing
as stage 2. A checkpoint without VPG-C gets a new module at `vpgc_layer` (zero-initialised: an exact no-op at start).

```bash
# real scale, from the stage-2 output (a middle layer of Qwen2.5-7B's 28)
accelerate launch --config_file recipes/accelerate/multi_gpu.yaml \
    -m recipes.vpgc_train --config recipes/vpgc_qwen2.5-7b_siglip-so400m.yaml

# tiny, on a CPU (after the tiny stage-1 run)
python -m recipes.vpgc_train --config recipes/tiny_vpgc.yaml
```
"""

from modeling_vift.training import main, make_parser


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main("vpgc", script_args, training_args, model_args)
