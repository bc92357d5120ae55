"""Choose ViFT's fusion settings (alpha, beta, steered layers) on a validation split.

    python -m recipes.sweep_fusion --config recipes/eval_sweep_fusion.yaml --model_name_or_path path/to/vift \
        --data_path path/to/validation.json

    accelerate launch --num_processes 8 -m recipes.sweep_fusion --config recipes/eval_sweep_fusion.yaml ...

Every setting is one resumable run under output_dir/runs/. Writes sweep_results.json, best_fusion.json,
heatmap.png and validation_ids.txt (pass it as exclude_ids_file to recipes.evaluate_benchmark so that the reported numbers
are not measured on the samples the setting was chosen on). `--write_best_to both` stores the best setting in the
model folder's config.json and generation_config.json (the defaults of `generate(..., fusion=True)`).
"""

import sys
from dataclasses import dataclass, field
from typing import Optional

from trl import TrlParser

from modeling_vift.evaluation import GenerationSettings, SweepConfig, run_fusion_sweep

from .evaluate_benchmark import REPO, parse_layers


@dataclass
class SweepArguments:
    benchmark: str = field(metadata={"help": "mathvista, mathverse, mathvision or demon."})
    data_path: str = field(metadata={"help": "The validation data (any format recipes.evaluate_benchmark reads)."})
    output_dir: str = field(metadata={"help": "Where the per-setting runs, the results, the heatmap and the best setting go."})
    model_name_or_path: str = field(default=None, metadata={"help": "A ViFT model folder or Hub id."})
    alphas: list[float] = field(default_factory=lambda: [0.5, 1.0], metadata={"help": "Values of alpha."})
    betas: list[float] = field(default_factory=lambda: [0.0, 0.5], metadata={"help": "Values of beta."})
    layer_ranges: list[str] = field(default_factory=lambda: ["default"], metadata={"help": "Layer ranges start:end ('default': the model config's)."})
    split: Optional[str] = field(default=None, metadata={"help": "Split of a Hub / saved dataset."})
    data_config: Optional[str] = field(default=None, metadata={"help": "Config name of a Hub dataset."})
    image_root: Optional[str] = field(default=None, metadata={"help": "Folder of relative image paths."})
    prompt_style: str = field(default="dataset", metadata={"help": "'dataset' or 'built'."})
    query_field: Optional[str] = field(default=None, metadata={"help": "Record field holding the query."})
    max_samples: Optional[int] = field(default=None, metadata={"help": "Validation samples used (all if unset)."})
    sample_seed: Optional[int] = field(default=None, metadata={"help": "With max_samples: draw a random subset with this seed."})
    include_baseline: bool = field(default=True, metadata={"help": "Also score plain generation (no fusion)."})
    batch_size: int = field(default=1, metadata={"help": "Prompts per generate call."})
    max_new_tokens: int = field(default=64, metadata={"help": "Greedy decoding length."})
    system_prompt: Optional[str] = field(default=None, metadata={"help": "Optional system turn."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16."})
    write_best_to: Optional[str] = field(default=None, metadata={"help": "config, generation_config or both (model folder)."})
    overwrite: bool = field(default=False, metadata={"help": "Discard earlier runs instead of resuming."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    metrics_dir: str = field(default=f"{REPO}/metrics", metadata={"help": "Folder of the evaluate modules."})


def main(args):
    config = SweepConfig(
        benchmark=args.benchmark, data_path=args.data_path, output_dir=args.output_dir,
        alphas=list(args.alphas), betas=list(args.betas), layer_ranges=[parse_layers(r) for r in args.layer_ranges],
        model_name_or_path=args.model_name_or_path, split=args.split, data_config=args.data_config,
        image_root=args.image_root, prompt_style=args.prompt_style, query_field=args.query_field,
        max_samples=args.max_samples, sample_seed=args.sample_seed, include_baseline=args.include_baseline,
        generation=GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                      system_prompt=args.system_prompt),
        write_best_to=args.write_best_to, overwrite=args.overwrite, progress=args.progress, metrics_dir=args.metrics_dir,
    )
    result = run_fusion_sweep(config, dtype=args.dtype)
    if result is not None:
        print(result["table"])
    return result


if __name__ == "__main__":
    parser = TrlParser((SweepArguments,))
    (arguments,) = parser.parse_args_and_config()
    main(arguments)
    sys.exit(0)
