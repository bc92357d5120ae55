"""The benchmark metrics as plain functions: the recipes score through these, and the `evaluate` modules in the
repository's `metrics/` are thin wrappers around them (so scoring works from a regular, non-editable install).

`protocol="official"` applies the benchmark's own scorer (`official.py`), `protocol="strict"` vift's careful scorer
(`scoring.py`).
"""

from __future__ import annotations

import numpy as np

from .official import (
    check_protocol,
    score_demon_official,
    score_mathverse_official,
    score_mathvision_official,
    score_mathvista_official,
)
from .scoring import ANSWER_TYPES, FREE_FORM, MULTI_CHOICE, aggregate, score_demon, score_math


MATH_BENCHMARKS = ("mathvista", "mathverse", "mathvision")


def per_sample(values, n, name, default=None):
    """One value per prediction (`default` for all when `values` is None); a list of the wrong length is refused."""
    if values is None:
        return [default] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"`{name}` has {len(values)} entries but there are {n} predictions: give one per prediction.")
    return values


def _score_math_sample(protocol, benchmark, prediction, reference, qtype, atype, choices, precision, extracted, question):
    if protocol == "strict" or benchmark is None:
        return score_math(prediction, reference, qtype, atype, choices, precision, extracted)
    if benchmark == "mathvista":
        return score_mathvista_official(prediction, reference, qtype, atype, choices, precision, extracted)
    if benchmark == "mathverse":
        return score_mathverse_official(prediction, reference, question or "", extracted)
    return score_mathvision_official(prediction, reference, choices)


def compute_math_accuracy(predictions, references, question_types=None, answer_types=None, choices=None,
                          precisions=None, groups=None, ids=None, extracted=None, questions=None, benchmark=None,
                          protocol="strict"):
    """Accuracy on MathVista / MathVerse / MathVision (see `metrics/math_accuracy` for the arguments). `benchmark`
    selects the official scorer when `protocol="official"`; without it the strict rules apply."""
    check_protocol(protocol)
    if benchmark is not None and benchmark not in MATH_BENCHMARKS:
        raise ValueError(f"benchmark must be one of {MATH_BENCHMARKS} (or None), got {benchmark!r}.")
    n = len(predictions)
    references = per_sample(references, n, "references")
    question_types = per_sample(question_types, n, "question_types", FREE_FORM)
    answer_types = per_sample(answer_types, n, "answer_types", None)
    choices = per_sample(choices, n, "choices", None)
    precisions = per_sample(precisions, n, "precisions", None)
    ids = [str(i) for i in per_sample(ids, n, "ids", None)] if ids is not None else [str(i) for i in range(n)]
    extracted = per_sample(extracted, n, "extracted", None)
    questions = per_sample(questions, n, "questions", None)
    grouped = groups is not None
    groups = per_sample(groups, n, "groups", None)

    scores, values, empty, unparsed, invalid = [], [], [], [], []
    for i in range(n):
        qtype = str(question_types[i] or FREE_FORM).replace("-", "_")
        atype = answer_types[i] or (None if qtype == MULTI_CHOICE else "text")
        if qtype not in (MULTI_CHOICE, FREE_FORM) or (qtype == FREE_FORM and atype not in ANSWER_TYPES):
            invalid.append({"id": ids[i], "reason": f"unknown question/answer type: {question_types[i]!r}/{answer_types[i]!r}"})
            scores.append(0.0)
            values.append(None)
            continue
        result = _score_math_sample(protocol, benchmark, predictions[i], references[i], qtype, atype, choices[i],
                                    precisions[i], extracted[i], questions[i])
        scores.append(result.score)
        values.append(result.extracted)
        if result.status == "empty":
            empty.append(ids[i])
        elif result.status == "unparsed":
            unparsed.append(ids[i])
    summary = aggregate(scores, groups if grouped else None)
    return {
        "accuracy": summary["score"], "correct": int(sum(scores)), "total": n, "per_group": summary.get("per_group", {}),
        "empty": empty, "unparsed": unparsed, "invalid": invalid, "scores": scores, "extracted": values,
        "protocol": protocol,
    }


def compute_demon_scores(predictions, references, question_types=None, choices=None, tasks=None, categories=None,
                         ids=None, protocol="strict"):
    """DEMON scores per task, per category and overall (see `metrics/demon_score` for the arguments)."""
    check_protocol(protocol)
    n = len(predictions)
    references = per_sample(references, n, "references")
    question_types = per_sample(question_types, n, "question_types", None)
    choices = per_sample(choices, n, "choices", None)
    tasks = [str(t) if t is not None else "all" for t in per_sample(tasks, n, "tasks", "all")]
    categories = [str(c) if c is not None else "unknown" for c in per_sample(categories, n, "categories", "unknown")]
    ids = [str(i) for i in per_sample(ids, n, "ids", None)] if ids is not None else [str(i) for i in range(n)]

    scores, empty, unparsed, invalid = [], [], [], []
    per_task = {}
    for i in range(n):
        task = per_task.setdefault(tasks[i], {"scores": [], "category": categories[i], "types": set()})
        if question_types[i] not in ("multi-choice", "open-ended"):
            invalid.append({"id": ids[i], "reason": f"unknown question_type: {question_types[i]!r}"})
            scores.append(0.0)
            task["scores"].append(0.0)
            continue
        if protocol == "official":
            result = score_demon_official(predictions[i], references[i], question_types[i], choices[i], tasks[i])
        else:
            result = score_demon(predictions[i], references[i], question_types[i], choices[i])
        scores.append(result.score)
        if result.status == "empty":
            empty.append(ids[i])
        elif result.status == "unparsed":
            unparsed.append(ids[i])
        task["scores"].append(result.score)
        task["types"].add(question_types[i])

    task_out, category_scores = {}, {}
    for name, task in sorted(per_task.items()):
        metric = "accuracy" if task["types"] == {"multi-choice"} else ("rouge_l" if task["types"] == {"open-ended"} else "mixed")
        score = float(np.mean(task["scores"]))
        task_out[name] = {"score": score, "metric": metric, "n": len(task["scores"]), "category": task["category"]}
        category_scores.setdefault(task["category"], []).append((score, len(task["scores"])))
    per_category = {
        c: {"score": float(np.mean([s for s, _ in v])), "n_tasks": len(v), "n": sum(k for _, k in v)}
        for c, v in sorted(category_scores.items())
    }
    overall = float(np.mean([v["score"] for v in per_category.values()])) if per_category else 0.0
    return {"overall": overall, "per_category": per_category, "per_task": task_out, "empty": empty,
            "unparsed": unparsed, "invalid": invalid, "scores": scores, "protocol": protocol}


__all__ = ["MATH_BENCHMARKS", "compute_demon_scores", "compute_math_accuracy", "per_sample"]
