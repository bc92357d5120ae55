"""Try the evaluation recipes on a CPU in about a minute: the fixtures of every benchmark format
(tests/fixtures/eval, random images) and a tiny random ViFT model. The scores mean nothing; the outputs show what a
real run writes (predictions, scores, report of bad input, summary, sweep heatmap).

    python -m recipes.eval_fixtures --output_dir outputs/eval-fixtures

The same run sharded over two processes (without CUDA they talk over gloo on the CPU):
    accelerate launch --multi_gpu --num_processes 2 -m recipes.eval_fixtures --output_dir outputs/eval-fixtures-2p
"""

import os
import time
from dataclasses import dataclass

from modeling_vift.evaluation import EvalConfig, SweepConfig, evaluate_benchmark, run_fusion_sweep
from modeling_vift.evaluation.runner import distributed_state
from modeling_vift.testing_utils import FIXTURE_FILES, materialize_fixtures, save_tiny_model


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(output_dir, max_new_tokens=8):
    import torch

    torch.set_num_threads(1)  # a toy model: thread start-up costs more than its matrix products
    state = distributed_state()
    start = time.perf_counter()
    data, model = os.path.join(output_dir, "data"), os.path.join(output_dir, "tiny-vift")
    if state.is_main_process:
        materialize_fixtures(os.path.join(REPO, "tests", "fixtures", "eval"), data)
        if not os.path.exists(os.path.join(model, "config.json")):
            save_tiny_model(model)
    state.wait_for_everyone()
    generation = dict(max_new_tokens=max_new_tokens, batch_size=2, fusion=True)  # layers: the model's own, [2, 4)
    for benchmark, path in FIXTURE_FILES.items():
        result = evaluate_benchmark(EvalConfig(
            benchmark=benchmark, data_path=os.path.join(data, path), output_dir=os.path.join(output_dir, "eval", benchmark),
            model_name_or_path=model, progress=False, **generation))
        if result is not None:
            print(result["summary"] + "\n")
    sweep = run_fusion_sweep(SweepConfig(
        benchmark="mathvista", data_path=os.path.join(data, FIXTURE_FILES["mathvista"]),
        output_dir=os.path.join(output_dir, "sweep"), alphas=[0.5, 1.0], betas=[0.0, 0.5], layer_ranges=["upper_half", "all"],
        model_name_or_path=model, max_new_tokens=max_new_tokens, batch_size=2, progress=False))
    if sweep is not None:
        print(sweep["table"])
        print(f"\nAll fixture evaluations and the sweep took {time.perf_counter() - start:.1f} s on {state.num_processes} process(es); outputs in {output_dir}")


@dataclass
class FixtureArguments:
    output_dir: str = "outputs/eval-fixtures"
    max_new_tokens: int = 8


if __name__ == "__main__":
    from transformers import HfArgumentParser

    (arguments,) = HfArgumentParser(FixtureArguments).parse_args_into_dataclasses()
    main(arguments.output_dir, arguments.max_new_tokens)
