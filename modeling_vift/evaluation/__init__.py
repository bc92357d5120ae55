"""Evaluation of ViFT models: the paper's math benchmarks (MathVista, MathVerse, MathVision), DEMON and open-ended
LLaVA-Bench-style questions, with plain or fused generation, sharded over processes and resumable, and a sweep of the
fusion settings.

Not part of the remote-code bundle (nothing in modeling_vift's model files imports it); it may use numpy, datasets,
evaluate, accelerate, tqdm and matplotlib. Entry points: `recipes/evaluate_benchmark.py` and `recipes/sweep_fusion.py`.
"""

from .benchmarks import BENCHMARKS, canonical_benchmark, load_benchmark
from .demon import CATEGORIES as DEMON_CATEGORIES
from .demon import load_demon
from .extraction import (
    AnswerExtractor,
    LLMJudgeExtractor,
    extract_choice,
    extract_letter,
    extract_number,
    parse_number,
)
from .pipeline import (
    BenchmarkRunConfig,
    EvalConfig,
    EvaluationFailed,
    evaluate_benchmark,
    load_metric,
    load_model_and_processor,
    score_records,
)
from .runner import GenerationSettings, run_generation
from .samples import DataError, EvalSample, LoadResult
from .scoring import nearest_option, rouge_l, score_demon, score_math
from .sweep import SweepConfig, apply_fusion_setting, run_fusion_sweep, write_fusion_setting


__all__ = [
    "BENCHMARKS",
    "DEMON_CATEGORIES",
    "AnswerExtractor",
    "BenchmarkRunConfig",
    "DataError",
    "EvalConfig",
    "EvalSample",
    "EvaluationFailed",
    "GenerationSettings",
    "LLMJudgeExtractor",
    "LoadResult",
    "SweepConfig",
    "apply_fusion_setting",
    "canonical_benchmark",
    "evaluate_benchmark",
    "extract_choice",
    "extract_letter",
    "extract_number",
    "load_benchmark",
    "load_demon",
    "load_metric",
    "load_model_and_processor",
    "nearest_option",
    "parse_number",
    "rouge_l",
    "run_fusion_sweep",
    "run_generation",
    "score_demon",
    "score_math",
    "score_records",
    "write_fusion_setting",
]
