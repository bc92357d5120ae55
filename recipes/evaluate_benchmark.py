"""Evaluate a ViFT model on MathVista, MathVerse, MathVision, DEMON or LLaVA-Bench-style open-ended questions.

One process:
    python -m recipes.evaluate_benchmark --config recipes/eval_mathvista.yaml --model_name_or_path path/to/vift

Several processes (each generates a shard; the main process merges and scores once):
    accelerate launch --num_processes 8 -m recipes.evaluate_benchmark --config recipes/eval_mathvista.yaml \
        --model_name_or_path path/to/vift

Fused generation uses the model's own fusion settings (its generation config, else its config: e.g. what
`recipes.sweep_fusion --write_best_to both` wrote) unless given; a range that does not fit the model is refused:
    python -m recipes.evaluate_benchmark --config recipes/eval_mathverse.yaml --model_name_or_path path/to/vift \
        --fusion true --fusion_alpha 1.0 --fusion_beta 0.5 --fusion_layers upper_half
(`--fusion_alignment token` pairs each text token with its own copy, for images between pieces of text; the default is
the model's, else `right`, the authors'.)

Protocols (recorded in scores.json): `--protocol official` (default) reproduces the benchmark's own scorer so numbers
sit in published tables; `--protocol strict` is vift's careful scorer. MathVista's official answer extraction asks an
LLM; give one with `--judge_endpoint http://host:port/v1 --judge_model NAME` (OpenAI-compatible, key in
$OPENAI_API_KEY) or `--judge_model path/to/causal-lm`, cached in output_dir/extractions.jsonl; without one the
rule-based stand-in is used.

Every field of `modeling_vift.evaluation.EvalConfig` is a flag (`--help` lists them). An interrupted run resumes when
started again with the same output_dir (`--overwrite true` starts afresh). A run that evaluated no sample, or whose
share of failed generations exceeds `--max_failed_share` (0.1), exits with status 1 and the reasons.
Outputs in output_dir: predictions.jsonl, scores.json, report.json (skipped / empty / unparsed / failed samples),
summary.md (also printed), and answers.jsonl (LLaVA format) for open-ended questions.
"""

import os
import sys


if __name__ == "__main__" and not __package__:  # run as a file, `import evaluate` would find this file
    sys.exit("Run the recipe from the repository root as a module: python -m recipes.evaluate_benchmark --config ...")

from trl import TrlParser

from modeling_vift.evaluation import EvalConfig, EvaluationFailed, LLMJudgeExtractor, evaluate_benchmark
from modeling_vift.evaluation.official import MathVistaLLMExtractor, causal_lm_backend, openai_compatible_backend


def make_parser():
    return TrlParser((EvalConfig,))


def main(config: EvalConfig):
    from accelerate import PartialState

    extractor = None
    if config.extractor == "llm_judge" and PartialState().is_main_process:  # only the main process scores
        extractor = LLMJudgeExtractor.from_pretrained(config.judge_model)
    elif (config.protocol == "official" and config.benchmark.lower() == "mathvista" and config.judge_model
          and PartialState().is_main_process):  # the official MathVista extraction asks an LLM
        generate = (openai_compatible_backend(config.judge_model, base_url=config.judge_endpoint)
                    if config.judge_endpoint else causal_lm_backend(config.judge_model))
        extractor = MathVistaLLMExtractor(generate, cache_path=os.path.join(config.output_dir, "extractions.jsonl"),
                                          model_id=config.judge_model)
    result = evaluate_benchmark(config, extractor=extractor)
    if result is not None:
        print(result["summary"])
    return result


if __name__ == "__main__":
    (arguments,) = make_parser().parse_args_and_config()
    try:
        main(arguments)
    except EvaluationFailed as err:
        sys.exit(f"Evaluation failed (outputs in {arguments.output_dir}):\n{err}")
    sys.exit(0)
