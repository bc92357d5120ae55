"""Choose ViFT's fusion settings (alpha, beta, steered layers, and with `--fusion_alignments right token` the
alignment) on a validation split.

    python -m recipes.sweep_fusion --config recipes/eval_sweep_fusion.yaml --model_name_or_path path/to/vift \
        --data_path path/to/validation.json

    accelerate launch --num_processes 8 -m recipes.sweep_fusion --config recipes/eval_sweep_fusion.yaml ...

Every setting is one resumable `evaluate_benchmark` run under output_dir/runs/. Writes sweep_results.json,
best_fusion.json, heatmap.png and validation_ids.txt (pass it as exclude_ids_file to recipes.evaluate_benchmark so
that the reported numbers are not measured on the samples the setting was chosen on); scores are fractions in [0, 1].
`--write_best_to both` stores the best setting (alignment included) in the model folder's config.json and
generation_config.json: the defaults of `generate(..., fusion=True)` and of `recipes.evaluate_benchmark --fusion true`.
Every field of `modeling_vift.evaluation.SweepConfig` is a flag (`--help` lists them).
"""

import sys

from trl import TrlParser

from modeling_vift.evaluation import EvaluationFailed, SweepConfig, run_fusion_sweep


def make_parser():
    return TrlParser((SweepConfig,))


def main(config: SweepConfig):
    result = run_fusion_sweep(config)
    if result is not None:
        print(result["table"])
    return result


if __name__ == "__main__":
    (arguments,) = make_parser().parse_args_and_config()
    try:
        main(arguments)
    except EvaluationFailed as err:
        sys.exit(f"Sweep failed (outputs in {arguments.output_dir}):\n{err}")
    sys.exit(0)
