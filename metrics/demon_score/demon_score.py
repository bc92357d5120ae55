"""DEMON scores (an `evaluate` module): accuracy for multi-choice tasks (the free-form answer mapped to its nearest
option by TF-IDF cosine after normalisation), ROUGE-L for open-ended tasks, per task, per category and overall.

Load it by path from a checkout: `evaluate.load("metrics/demon_score")`. Implemented in plain Python/numpy in
`modeling_vift.evaluation.scoring`.
"""

import datasets
import evaluate
import numpy as np

from modeling_vift.evaluation.scoring import score_demon


_DESCRIPTION = """
DEMON (demonstrative instruction following) scores. Texts are normalised (lower-case, punctuation stripped). A
multi-choice prediction equal to an option picks it; otherwise the option with the highest TF-IDF cosine similarity
(idf = ln((1+N)/(1+df)) + 1, L2-normalised count vectors) is chosen; a prediction sharing no word with any option, or
tied between options, is unparsed and scores 0. Image-choice tasks ("Image A".."Image D") take the one image letter the
prediction names. Open-ended predictions score their ROUGE-L F1 (longest common word subsequence) against the response.
A task's score is the mean over its samples, a category's the mean of its tasks, overall the mean of the categories.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): model responses.
    references (`list[str]`): DEMON responses.
    question_types (`list[str]`): `multi-choice` or `open-ended` per sample.
    choices (`list[list[str]]`, optional): the options of each multi-choice sample.
    tasks (`list[str]`, optional): the task (dataset) of each sample; default one task "all".
    categories (`list[str]`, optional): the DEMON category of each sample; default "unknown".
    ids (`list[str]`, optional): sample ids used in the lists of empty / unparsed / invalid samples.
Returns:
    overall (`float`, 0-1), per_category {category: {score, n_tasks, n}}, per_task {task: {score, metric, n,
    category}}, empty [ids], unparsed [ids], invalid [{id, reason}], scores [per sample].
Examples:
    >>> metric = evaluate.load("metrics/demon_score")
    >>> metric.compute(predictions=["it is true"], references=["True"], question_types=["multi-choice"],
    ...                choices=[["True", "False"]])["overall"]
    1.0
"""


def _per_sample(values, n, name, default=None):
    if values is None:
        return [default] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"`{name}` has {len(values)} entries but there are {n} predictions: give one per prediction.")
    return values


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DemonScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, question_types=None, choices=None, tasks=None, categories=None, ids=None):
        n = len(predictions)
        question_types = _per_sample(question_types, n, "question_types", None)
        choices = _per_sample(choices, n, "choices", None)
        tasks = [str(t) if t is not None else "all" for t in _per_sample(tasks, n, "tasks", "all")]
        categories = [str(c) if c is not None else "unknown" for c in _per_sample(categories, n, "categories", "unknown")]
        ids = [str(i) for i in _per_sample(ids, n, "ids", None)] if ids is not None else [str(i) for i in range(n)]

        scores, empty, unparsed, invalid = [], [], [], []
        per_task = {}
        for i in range(n):
            if question_types[i] not in ("multi-choice", "open-ended"):
                invalid.append({"id": ids[i], "reason": f"unknown question_type: {question_types[i]!r}"})
                scores.append(0.0)
                task = per_task.setdefault(tasks[i], {"scores": [], "category": categories[i], "types": set()})
                task["scores"].append(0.0)
                continue
            result = score_demon(predictions[i], references[i], question_types[i], choices[i])
            scores.append(result.score)
            if result.status == "empty":
                empty.append(ids[i])
            elif result.status == "unparsed":
                unparsed.append(ids[i])
            task = per_task.setdefault(tasks[i], {"scores": [], "category": categories[i], "types": set()})
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
        return {
            "overall": overall,
            "per_category": per_category,
            "per_task": task_out,
            "empty": empty,
            "unparsed": unparsed,
            "invalid": invalid,
            "scores": scores,
        }
