"""One benchmark end to end: read the data, generate (sharded, resumable), merge, score (`metrics.py`, under the
`official` or `strict` protocol), and write `scores.json`, `report.json` (every skipped / empty / unparsed / failed sample) and
`summary.md` into the output folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from ..remote_code.configuration_vift import check_fusion_alignment, check_fusion_weights
from .benchmarks import canonical_benchmark, load_benchmark
from .metrics import compute_demon_scores, compute_math_accuracy
from .official import check_protocol
from .runner import (
    GenerationSettings,
    layer_range_for_model,
    merge_predictions,
    parse_layer_range,
    run_generation,
    with_fusion_defaults,
)
from .summary import format_summary


def default_metrics_dir():
    """`metrics/` of the checkout this package is installed from (editable install)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, os.pardir, os.pardir, "metrics"))


def load_metric(name, metrics_dir=None):
    """Loads one of the repository's `evaluate` modules by path (no Hub access)."""
    import evaluate

    metrics_dir = metrics_dir or default_metrics_dir()
    path = os.path.join(metrics_dir, name)
    if not os.path.isfile(os.path.join(path, f"{name}.py")):
        raise FileNotFoundError(
            f"The metric {name!r} was not found at {path}: run from a checkout of the repository (metrics/ ships "
            f"next to modeling_vift/) or pass metrics_dir."
        )
    return evaluate.load(path, keep_in_memory=True)


def _help(text):
    return {"help": text}


@dataclass
class BenchmarkRunConfig:
    """The settings a benchmark evaluation and a fusion sweep share. The dataclasses are the command line of
    `recipes/evaluate_benchmark.py` and `recipes/sweep_fusion.py` (parsed with TRL's `TrlParser`: a YAML `--config`
    plus `--field value` overrides), and what library callers construct."""

    benchmark: str = field(metadata=_help("mathvista, mathverse, mathvision, demon or open_ended (alias llava_bench)."))
    data_path: str = field(metadata=_help("A .json/.jsonl/.parquet file, a DEMON folder, a saved dataset or a Hub dataset id."))
    output_dir: str = field(metadata=_help("Where predictions, scores and the report go (resumed if it exists)."))
    model_name_or_path: Optional[str] = field(default=None, metadata=_help("A ViFT model folder or Hub id (trust_remote_code)."))
    split: Optional[str] = field(default=None, metadata=_help("Split of a Hub / saved dataset (e.g. testmini)."))
    data_config: Optional[str] = field(default=None, metadata=_help("Config name of a Hub dataset."))
    image_root: Optional[str] = field(default=None, metadata=_help("Folder of relative image paths (default: next to the data file)."))
    prompt_style: str = field(default="dataset", metadata=_help("'dataset': the published query when there is one; 'built': ours."))
    query_field: Optional[str] = field(default=None, metadata=_help("Record field holding the query (MathVerse: query_wo or query_cot)."))
    max_samples: Optional[int] = field(default=None, metadata=_help("Use only N samples (the first N; a sweep may draw them, sample_seed)."))
    batch_size: int = field(default=1, metadata=_help("Prompts per generate call (left-padded)."))
    max_new_tokens: int = field(default=64, metadata=_help("Greedy decoding length."))
    system_prompt: Optional[str] = field(default=None, metadata=_help("Optional system turn."))
    dtype: str = field(default="auto", metadata=_help("auto, float32, bfloat16 or float16."))
    max_failed_share: float = field(default=0.1, metadata=_help(
        "A run whose share of failed generations (prompt too long, unreadable image, ...) exceeds this exits non-zero."))
    overwrite: bool = field(default=False, metadata=_help("Discard earlier predictions in output_dir instead of resuming."))
    progress: bool = field(default=True, metadata=_help("Show progress bars."))
    metrics_dir: Optional[str] = field(default=None, metadata=_help(
        "Score through the evaluate modules in this folder (default: in the package)."))
    protocol: str = field(default="official", metadata=_help(
        "'official': the benchmark's own scorer, so numbers sit in published tables; 'strict': vift's careful scorer."))

    def __post_init__(self):
        if not 0.0 <= float(self.max_failed_share) <= 1.0:
            raise ValueError(f"max_failed_share is a share of the samples between 0 and 1, got {self.max_failed_share}.")
        check_protocol(self.protocol)
        self.generation_settings()  # batch_size / max_new_tokens checked before anything loads

    def generation_settings(self, **fusion):
        return GenerationSettings(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                  system_prompt=self.system_prompt, **fusion)


@dataclass
class EvalConfig(BenchmarkRunConfig):
    """One benchmark run. The fusion values left unset come from the model (its generation config, else its config)."""

    exclude_ids_file: Optional[str] = field(default=None, metadata=_help("Ids to leave out (e.g. a sweep's validation_ids.txt)."))
    fusion: bool = field(default=False, metadata=_help("Ability-fused generation."))
    fusion_alpha: Optional[float] = field(default=None, metadata=_help("Weight of the text-only stream (default: the model's)."))
    fusion_beta: Optional[float] = field(default=None, metadata=_help("Weight of the subtracted multimodal stream (default: the model's)."))
    fusion_layers: Optional[str] = field(default=None, metadata=_help(
        "Steered layers start:end, 'all' or 'upper_half' (default: the model's, e.g. as written by sweep_fusion)."))
    fusion_alignment: Optional[str] = field(default=None, metadata=_help(
        "'right' (the authors': the text-only prompt right-aligned) or 'token' (each text token steers its own copy; "
        "for interleaved images). Default: the model's."))
    extractor: str = field(default="rules", metadata=_help("'rules' (default) or 'llm_judge' (needs judge_model)."))
    judge_model: Optional[str] = field(default=None, metadata=_help(
        "Text-generation model used by the llm_judge extractor, or the official MathVista extractor (protocol official)."))
    judge_endpoint: Optional[str] = field(default=None, metadata=_help(
        "OpenAI-compatible base URL: judge_model is then a model name served there."))

    def __post_init__(self):
        super().__post_init__()
        parse_layer_range(self.fusion_layers)  # the syntax now; the range against the model once it is loaded
        check_fusion_weights(self.fusion_alpha, self.fusion_beta)
        check_fusion_alignment(self.fusion_alignment)
        if self.extractor not in ("rules", "llm_judge"):
            raise ValueError(f"extractor must be 'rules' or 'llm_judge', got {self.extractor!r}.")
        if self.extractor == "llm_judge" and not self.judge_model:
            raise ValueError("extractor=llm_judge needs judge_model (a text-generation model).")


class EvaluationFailed(RuntimeError):
    """A run that produced no usable measurement: no sample evaluated, or too many failed generations. Raised after
    the outputs (report.json with every reason) are written."""


def read_id_file(path):
    """Ids listed one per line (or a JSON list) — e.g. the validation ids a fusion sweep wrote."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        return [str(x) for x in json.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_model_and_processor(model_name_or_path, dtype=None, device=None, trust_remote_code=True):
    """Loads a ViFT checkpoint the way users do (`trust_remote_code`), in eval mode."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..publishing.upload import check_model_location

    check_model_location(model_name_or_path)
    kwargs = {"trust_remote_code": trust_remote_code}
    if dtype not in (None, "auto"):
        import torch

        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = AutoModelForImageTextToText.from_pretrained(model_name_or_path, **kwargs).eval()
    if device is not None:
        model.to(device)
    processor = AutoProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    return model, processor


def score_records(benchmark, records, metrics_dir=None, extractor=None, protocol="official"):
    """Scores merged prediction records under `protocol` (`official` or `strict`); returns the metric's result plus
    the lists of failed generations. Scoring runs in the package; `metrics_dir` (optional) scores through the
    `evaluate` modules found there instead. `extractor` (optional: a `MathVistaLLMExtractor` for the official
    MathVista extraction, an `LLMJudgeExtractor`) rewrites math responses first."""
    benchmark = canonical_benchmark(benchmark)
    check_protocol(protocol)
    errors = [{"id": r["id"], "error": r["error"]} for r in records if r.get("error")]
    if benchmark == "open_ended":
        return {"num_answers": len(records), "errors": errors}
    predictions = [r.get("prediction") or "" for r in records]
    fields = [r["sample"] for r in records]
    ids = [r["id"] for r in records]
    if metrics_dir:
        compute_demon, compute_math = load_metric("demon_score", metrics_dir).compute, load_metric("math_accuracy", metrics_dir).compute
    else:
        compute_demon, compute_math = compute_demon_scores, compute_math_accuracy
    if benchmark == "demon":
        result = compute_demon(
            protocol=protocol,
            predictions=predictions, references=[f["reference"] for f in fields], ids=ids,
            question_types=[f["question_type"] for f in fields], choices=[f["choices"] for f in fields],
            tasks=[f["group"] for f in fields], categories=[f["category"] for f in fields],
        )
    else:
        extracted = None
        if extractor is not None:
            extracted = [
                extractor(p, {"question": f["extra"].get("question"), "query": f["extra"].get("query"), "question_type": f["question_type"],
                              "answer_type": f["answer_type"], "choices": f["choices"], "precision": f["precision"],
                              "unit": f["extra"].get("unit")}) if p else None
                for p, f in zip(predictions, fields)
            ]
        result = compute_math(
            benchmark=benchmark, protocol=protocol, questions=[f["extra"].get("question") for f in fields],
            predictions=predictions, references=[f["reference"] for f in fields], ids=ids,
            question_types=[f["question_type"] for f in fields], answer_types=[f["answer_type"] for f in fields],
            choices=[f["choices"] for f in fields], precisions=[f["precision"] for f in fields],
            groups=[f["group"] for f in fields], extracted=extracted,
        )
    failed = {e["id"] for e in errors}
    result["empty"] = [i for i in result.get("empty", []) if i not in failed]  # listed once, as generation errors
    result["errors"] = errors
    return result


def primary_score(benchmark, scores):
    """The one number a benchmark is summarised (and a sweep ranked) by."""
    benchmark = canonical_benchmark(benchmark)
    if benchmark == "demon":
        return scores["overall"]
    if benchmark == "open_ended":
        raise ValueError("open-ended outputs are judged externally: they have no score to rank a sweep by.")
    return scores["accuracy"]


def write_llava_answers(path, records, model_id):
    """Answers in LLaVA-Bench's format (`question_id`, `prompt`, `text`, `answer_id`, `model_id`, `metadata`), for an
    external judge."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({
                "question_id": r["id"], "prompt": r["sample"]["extra"].get("question"), "text": r.get("prediction") or "",
                "answer_id": f"{model_id}-{r['id']}", "model_id": model_id,
                "metadata": {"category": r["sample"].get("group"), "reference": r["sample"].get("reference"),
                             "error": r.get("error")},
            }, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def build_report(load_result, records, scores, missing):
    """Everything that did not score normally, with reasons."""
    predictions = {r["id"]: r.get("prediction") for r in records}
    return {
        "skipped": load_result.skipped,
        "skipped_counts": load_result.skip_counts(),
        "generation_errors": scores.get("errors", []),
        "empty_predictions": scores.get("empty", []),
        "unparsed_predictions": [{"id": i, "prediction": predictions.get(i)} for i in scores.get("unparsed", [])],
        "invalid_samples": scores.get("invalid", []),
        "missing_predictions": missing,
    }


def check_run_outcome(report, stats, max_failed_share):
    """Raises `EvaluationFailed` with the reasons when a run measured nothing (no sample evaluated) or when more than
    `max_failed_share` of its samples failed to generate: a score of such a run would be a number without meaning."""
    evaluated = stats.get("num_samples", 0)
    failed = len(report["generation_errors"]) + len(report["missing_predictions"])
    if evaluated and failed <= max_failed_share * evaluated:
        return
    lines = []
    if not evaluated:
        lines.append(f"No sample was evaluated: all {stats.get('num_records', 0)} records were skipped.")
    else:
        lines.append(f"{failed} of {evaluated} samples failed to generate (more than max_failed_share={max_failed_share:g}).")
    reasons = {}  # kind -> [count, first example]
    for kind, text in [("skipped, " + i["reason"].split(":", 1)[0], i["reason"]) for i in report["skipped"]] + \
            [(": ".join(e["error"].split(": ")[:2]), e["error"]) for e in report["generation_errors"]]:
        reasons.setdefault(kind, [0, text])[0] += 1
    lines += [f"  {count} x {kind} (e.g. {example})" for kind, (count, example) in
              sorted(reasons.items(), key=lambda kv: -kv[1][0])[:10]]
    lines.append("Fix the data paths / images (report.json lists every sample), or raise max_failed_share to accept the run.")
    raise EvaluationFailed("\n".join(lines))


def evaluate_benchmark(config: EvalConfig, model=None, processor=None, extractor=None, state=None, dtype=None, loaded=None):
    """Runs one benchmark; returns `{"scores", "report", "stats", "summary"}` on the main process (None elsewhere).

    `model`/`processor` default to loading `config.model_name_or_path`; `loaded` (a `LoadResult`, e.g. a sweep's
    validation subset) to reading `config.data_path`. A run that evaluated no sample, or whose share of failed
    generations exceeds `config.max_failed_share`, raises `EvaluationFailed` (after writing its outputs)."""
    from .runner import distributed_state

    state = state or distributed_state()
    benchmark = canonical_benchmark(config.benchmark)
    dtype = dtype if dtype is not None else config.dtype
    if loaded is None:
        exclude = read_id_file(config.exclude_ids_file) if config.exclude_ids_file else None
        with state.main_process_first():  # a Hub dataset is downloaded once
            loaded = load_benchmark(
                benchmark, config.data_path, split=config.split, config=config.data_config, image_root=config.image_root,
                prompt_style=config.prompt_style, query_field=config.query_field, max_samples=config.max_samples,
                exclude_ids=exclude, protocol=config.protocol,
            )
    if not loaded.samples:  # refused before a model is loaded
        empty = build_report(loaded, [], {}, [])
        check_run_outcome(empty, {"num_samples": 0, "num_records": len(loaded.skipped)}, config.max_failed_share)
    if model is None or processor is None:
        if not config.model_name_or_path:
            raise ValueError("Give model_name_or_path (or pass model and processor).")
        model, processor = load_model_and_processor(config.model_name_or_path, dtype=dtype, device=state.device)
    generation = config.generation_settings(fusion=config.fusion, fusion_alpha=config.fusion_alpha, fusion_beta=config.fusion_beta,
                                            fusion_alignment=config.fusion_alignment)
    if config.fusion:
        generation.fusion_layers = layer_range_for_model(model, config.fusion_layers)
    generation = with_fusion_defaults(generation, model)
    run_config = {
        "benchmark": benchmark, "model": str(config.model_name_or_path), "data_path": str(config.data_path),
        "split": config.split, "prompt_style": config.prompt_style, "query_field": config.query_field,
        # a plain run records no alignment, as before the option existed (its folders still resume)
        "generation": {k: v for k, v in asdict(generation).items()
                       if k != "batch_size" and not (k == "fusion_alignment" and v is None)},
    }
    stats = run_generation(model, processor, loaded.samples, config.output_dir, generation, run_config=run_config,
                           overwrite=config.overwrite, progress=config.progress, state=state, desc=benchmark)
    if not state.is_main_process:
        return None
    records, missing = merge_predictions(config.output_dir, loaded.samples)
    scores = score_records(benchmark, records, config.metrics_dir, extractor=extractor, protocol=config.protocol)
    if benchmark == "open_ended":
        write_llava_answers(os.path.join(config.output_dir, "answers.jsonl"), records, os.path.basename(str(config.model_name_or_path).rstrip("/")) or "model")
    report = build_report(loaded, records, scores, missing)
    stats.update(num_records=len(loaded.samples) + len(loaded.skipped), num_samples=len(loaded.samples),
                 num_skipped=len(loaded.skipped), num_processes=state.num_processes)
    summary = format_summary(benchmark, scores, report, stats)
    write_json(os.path.join(config.output_dir, "scores.json"),
               {"benchmark": benchmark, "protocol": config.protocol, "scores": scores, "stats": stats})
    write_json(os.path.join(config.output_dir, "report.json"), report)
    with open(os.path.join(config.output_dir, "summary.md"), "w", encoding="utf-8") as f:
        f.write(summary + "\n")
    check_run_outcome(report, stats, config.max_failed_share)
    return {"scores": scores, "report": report, "stats": stats, "summary": summary, "generation": generation}


def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False, default=str)
    os.replace(tmp, path)


__all__ = [
    "BenchmarkRunConfig",
    "EvalConfig",
    "EvaluationFailed",
    "check_run_outcome",
    "default_metrics_dir",
    "evaluate_benchmark",
    "load_metric",
    "load_model_and_processor",
    "primary_score",
    "read_id_file",
    "score_records",
]
