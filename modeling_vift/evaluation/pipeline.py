"""One benchmark end to end: read the data, generate (sharded, resumable), merge, score (`metrics.py`, under the
`official` or `strict` protocol), and write `scores.json`, `report.json` (every skipped / empty / unparsed / failed sample) and
`summary.md` into the output folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from .benchmarks import canonical_benchmark, load_benchmark
from .metrics import compute_demon_scores, compute_math_accuracy
from .official import check_protocol
from .runner import GenerationSettings, merge_predictions, run_generation, with_fusion_defaults
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


@dataclass
class EvalConfig:
    """Everything one benchmark run needs (the recipes fill it from YAML + command line)."""

    benchmark: str
    data_path: str
    output_dir: str
    model_name_or_path: str | None = None
    split: str | None = None
    data_config: str | None = None
    image_root: str | None = None
    prompt_style: str = "dataset"
    query_field: str | None = None
    max_samples: int | None = None
    exclude_ids_file: str | None = None
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    overwrite: bool = False
    progress: bool = True
    metrics_dir: str | None = None
    # "official": the benchmark's own scorer, so numbers sit in published tables; "strict": vift's careful scorer.
    protocol: str = "official"


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


def evaluate_benchmark(config: EvalConfig, model=None, processor=None, extractor=None, state=None, dtype=None):
    """Runs one benchmark; returns `{"scores", "report", "stats", "summary"}` on the main process (None elsewhere).

    `model`/`processor` default to loading `config.model_name_or_path`."""
    from .runner import distributed_state

    state = state or distributed_state()
    benchmark = canonical_benchmark(config.benchmark)
    exclude = read_id_file(config.exclude_ids_file) if config.exclude_ids_file else None
    with state.main_process_first():  # a Hub dataset is downloaded once
        loaded = load_benchmark(
            benchmark, config.data_path, split=config.split, config=config.data_config, image_root=config.image_root,
            prompt_style=config.prompt_style, query_field=config.query_field, max_samples=config.max_samples,
            exclude_ids=exclude, protocol=config.protocol,
        )
    if model is None or processor is None:
        if not config.model_name_or_path:
            raise ValueError("Give model_name_or_path (or pass model and processor).")
        model, processor = load_model_and_processor(config.model_name_or_path, dtype=dtype, device=state.device)
    config.generation = with_fusion_defaults(config.generation, model)
    run_config = {
        "benchmark": benchmark, "model": str(config.model_name_or_path), "data_path": str(config.data_path),
        "split": config.split, "prompt_style": config.prompt_style, "query_field": config.query_field,
        "generation": {k: v for k, v in asdict(config.generation).items() if k != "batch_size"},
    }
    stats = run_generation(model, processor, loaded.samples, config.output_dir, config.generation, run_config=run_config,
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
    return {"scores": scores, "report": report, "stats": stats, "summary": summary}


def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False, default=str)
    os.replace(tmp, path)


__all__ = [
    "EvalConfig",
    "default_metrics_dir",
    "evaluate_benchmark",
    "load_metric",
    "load_model_and_processor",
    "primary_score",
    "read_id_file",
    "score_records",
]
