"""Evaluate a ViFT model on MathVista, MathVerse, MathVision, DEMON or LLaVA-Bench-style open-ended questions.

One process:
    python -m recipes.evaluate_benchmark --config recipes/eval_mathvista.yaml --model_name_or_path path/to/vift

Several processes (each generates a shard; the main process merges and scores once):
    accelerate launch --num_processes 8 -m recipes.evaluate_benchmark --config recipes/eval_mathvista.yaml \
        --model_name_or_path path/to/vift

Fused generation with explicit settings (defaults: the model config's fusion_alpha / fusion_beta / fusion_layers):
    python -m recipes.evaluate_benchmark --config recipes/eval_mathverse.yaml --model_name_or_path path/to/vift \
        --fusion true --fusion_alpha 1.0 --fusion_beta 0.5 --fusion_layers 14:28

Protocols (recorded in scores.json): `--protocol official` (default) reproduces the benchmark's own scorer so numbers
sit in published tables; `--protocol strict` is vift's careful scorer. MathVista's official answer extraction asks an
LLM; give one with `--judge_endpoint http://host:port/v1 --judge_model NAME` (OpenAI-compatible, key in
$OPENAI_API_KEY) or `--judge_model path/to/causal-lm`, cached in output_dir/extractions.jsonl; without one the
rule-based stand-in is used.

An interrupted run resumes when started again with the same output_dir (`--overwrite true` starts afresh).
Outputs in output_dir: predictions.jsonl, scores.json, report.json (skipped / empty / unparsed / failed samples),
summary.md (also printed), and answers.jsonl (LLaVA format) for open-ended questions.
"""

import os
import sys


if __name__ == "__main__" and not __package__:  # run as a file, `import evaluate` would find this file
    sys.exit("Run the recipe from the repository root as a module: python -m recipes.evaluate_benchmark --config ...")

from dataclasses import dataclass, field
from typing import Optional

from trl import TrlParser

from modeling_vift.evaluation import EvalConfig, GenerationSettings, LLMJudgeExtractor, evaluate_benchmark
from modeling_vift.evaluation.official import MathVistaLLMExtractor, causal_lm_backend, openai_compatible_backend


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_layers(text):
    """`"14:28"` -> [14, 28]; None / "" / "default" -> None (the model config's value)."""
    if text in (None, "", "default"):
        return None
    if isinstance(text, (list, tuple)):
        return [int(x) for x in text]
    try:
        start, end = (int(x) for x in str(text).replace("-", ":").split(":"))
    except ValueError:
        raise ValueError(f"A layer range is written start:end (e.g. 14:28), got {text!r}.") from None
    return [start, end]


@dataclass
class EvaluateArguments:
    benchmark: str = field(metadata={"help": "mathvista, mathverse, mathvision, demon or open_ended (alias llava_bench)."})
    data_path: str = field(metadata={"help": "A .json/.jsonl/.parquet file, a DEMON folder, a saved dataset or a Hub dataset id."})
    output_dir: str = field(metadata={"help": "Where predictions, scores and the report go (resumed if it exists)."})
    model_name_or_path: str = field(default=None, metadata={"help": "A ViFT model folder or Hub id (loaded with trust_remote_code)."})
    split: Optional[str] = field(default=None, metadata={"help": "Split of a Hub / saved dataset (e.g. testmini)."})
    data_config: Optional[str] = field(default=None, metadata={"help": "Config name of a Hub dataset."})
    image_root: Optional[str] = field(default=None, metadata={"help": "Folder of relative image paths (default: next to the data file)."})
    prompt_style: str = field(default="dataset", metadata={"help": "'dataset': the published query when there is one; 'built': ours."})
    query_field: Optional[str] = field(default=None, metadata={"help": "Record field holding the query (MathVista: query; MathVerse: query_wo or query_cot)."})
    max_samples: Optional[int] = field(default=None, metadata={"help": "Evaluate only the first N samples."})
    exclude_ids_file: Optional[str] = field(default=None, metadata={"help": "Ids to leave out (e.g. a sweep's validation_ids.txt)."})
    batch_size: int = field(default=1, metadata={"help": "Prompts per generate call (left-padded)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Greedy decoding length."})
    fusion: bool = field(default=False, metadata={"help": "Ability-fused generation."})
    fusion_alpha: Optional[float] = field(default=None, metadata={"help": "Weight of the text-only stream (default: model config)."})
    fusion_beta: Optional[float] = field(default=None, metadata={"help": "Weight of the subtracted multimodal stream (default: model config)."})
    fusion_layers: Optional[str] = field(default=None, metadata={"help": "Steered layers start:end (default: model config)."})
    system_prompt: Optional[str] = field(default=None, metadata={"help": "Optional system turn."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16."})
    extractor: str = field(default="rules", metadata={"help": "'rules' (default) or 'llm_judge' (needs judge_model)."})
    judge_model: Optional[str] = field(default=None, metadata={"help": "Text-generation model used by the llm_judge extractor, or the official MathVista extractor (protocol official)."})
    judge_endpoint: Optional[str] = field(default=None, metadata={"help": "OpenAI-compatible base URL: judge_model is then a model name served there."})
    protocol: str = field(default="official", metadata={"help": "'official' (the benchmark's own scorer) or 'strict' (vift's careful scorer)."})
    overwrite: bool = field(default=False, metadata={"help": "Discard earlier predictions in output_dir instead of resuming."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    metrics_dir: Optional[str] = field(default=None, metadata={"help": "Score through the evaluate modules in this folder (default: the package)."})


def build_config(args):
    generation = GenerationSettings(
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, fusion=args.fusion,
        fusion_alpha=args.fusion_alpha, fusion_beta=args.fusion_beta, fusion_layers=parse_layers(args.fusion_layers),
        system_prompt=args.system_prompt,
    )
    return EvalConfig(
        benchmark=args.benchmark, data_path=args.data_path, output_dir=args.output_dir,
        model_name_or_path=args.model_name_or_path, split=args.split, data_config=args.data_config,
        image_root=args.image_root, prompt_style=args.prompt_style, query_field=args.query_field,
        max_samples=args.max_samples, exclude_ids_file=args.exclude_ids_file, generation=generation,
        overwrite=args.overwrite, progress=args.progress, metrics_dir=args.metrics_dir, protocol=args.protocol,
    )


def main(args):
    if args.extractor not in ("rules", "llm_judge"):
        raise ValueError(f"extractor must be 'rules' or 'llm_judge', got {args.extractor!r}.")
    if args.extractor == "llm_judge" and not args.judge_model:
        raise ValueError("extractor=llm_judge needs judge_model (a text-generation model).")
    from accelerate import PartialState

    extractor = None
    if args.extractor == "llm_judge" and PartialState().is_main_process:  # only the main process scores
        extractor = LLMJudgeExtractor.from_pretrained(args.judge_model)
    elif (args.protocol == "official" and args.benchmark.lower() == "mathvista" and args.judge_model
          and PartialState().is_main_process):
        generate = (openai_compatible_backend(args.judge_model, base_url=args.judge_endpoint) if args.judge_endpoint
                    else causal_lm_backend(args.judge_model))
        extractor = MathVistaLLMExtractor(generate, cache_path=os.path.join(args.output_dir, "extractions.jsonl"),
                                          model_id=args.judge_model)
    result = evaluate_benchmark(build_config(args), extractor=extractor, dtype=args.dtype)
    if result is not None:
        print(result["summary"])
    return result


if __name__ == "__main__":
    parser = TrlParser((EvaluateArguments,))
    (arguments,) = parser.parse_args_and_config()
    main(arguments)
    sys.exit(0)
