"""Accuracy with rule-based answer extraction for MathVista, MathVerse and MathVision (an `evaluate` module).

Load it by path from a checkout: `evaluate.load("metrics/math_accuracy")`. The extraction and comparison rules live in
`modeling_vift.evaluation` (installed with this repository) so that the recipes and this module agree.
"""

import datasets
import evaluate

from modeling_vift.evaluation.scoring import ANSWER_TYPES, FREE_FORM, MULTI_CHOICE, aggregate, score_math


_DESCRIPTION = """
Accuracy of free-form model responses on math benchmarks. Each response is read by rules: a choice letter or choice
text for multi-choice questions; for free-form questions the stated answer (\\boxed{}, "answer is", else the whole
response) parsed as an integer, a float compared at the record's precision, a fraction, a list of numbers, or a short
text compared after normalisation. A response that is empty or from which no answer can be read scores 0 and is listed.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): model responses.
    references (`list[str]`): reference answers (a choice text or letter for multi-choice questions).
    question_types (`list[str]`, optional): `multi_choice` or `free_form` per sample (also `multi-choice`,
        `free-form`); default `free_form`.
    answer_types (`list[str]`, optional): `text`, `integer`, `float`, `list` or `number` per free-form sample;
        default `text`.
    choices (`list[list[str]]`, optional): the choices of each multi-choice sample (empty when only a letter is
        compared, as in MathVerse).
    precisions (`list[float]`, optional): decimals kept when comparing `float` answers.
    groups (`list[str]`, optional): a breakdown key per sample (task, problem version, subject).
    ids (`list[str]`, optional): sample ids used in the lists of empty / unparsed / invalid samples.
    extracted (`list[str | None]`, optional): answers already extracted (e.g. by an LLM judge); `None` entries fall
        back to the rules on the raw prediction.
Returns:
    accuracy (`float`, 0-1), correct, total, per_group {group: {score, n}}, empty [ids], unparsed [ids],
    invalid [{id, reason}], scores [0/1 per sample], extracted [the value read per sample].
Examples:
    >>> metric = evaluate.load("metrics/math_accuracy")
    >>> metric.compute(predictions=["The answer is (B)"], references=["4"], question_types=["multi_choice"],
    ...                choices=[["3", "4"]])["accuracy"]
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
class MathAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, question_types=None, answer_types=None, choices=None, precisions=None,
                 groups=None, ids=None, extracted=None):
        n = len(predictions)
        question_types = _per_sample(question_types, n, "question_types", FREE_FORM)
        answer_types = _per_sample(answer_types, n, "answer_types", None)
        choices = _per_sample(choices, n, "choices", None)
        precisions = _per_sample(precisions, n, "precisions", None)
        ids = [str(i) for i in _per_sample(ids, n, "ids", None)] if ids is not None else [str(i) for i in range(n)]
        extracted = _per_sample(extracted, n, "extracted", None)
        grouped = groups is not None
        groups = _per_sample(groups, n, "groups", None)

        scores, values, empty, unparsed, invalid = [], [], [], [], []
        for i in range(n):
            qtype = str(question_types[i] or FREE_FORM).replace("-", "_")
            atype = answer_types[i] or (None if qtype == MULTI_CHOICE else "text")
            if qtype not in (MULTI_CHOICE, FREE_FORM) or (qtype == FREE_FORM and atype not in ANSWER_TYPES):
                invalid.append({"id": ids[i], "reason": f"unknown question/answer type: {question_types[i]!r}/{answer_types[i]!r}"})
                scores.append(0.0)
                values.append(None)
                continue
            result = score_math(predictions[i], references[i], qtype, atype, choices[i], precisions[i], extracted[i])
            scores.append(result.score)
            values.append(result.extracted)
            if result.status == "empty":
                empty.append(ids[i])
            elif result.status == "unparsed":
                unparsed.append(ids[i])
        summary = aggregate(scores, groups if grouped else None)
        return {
            "accuracy": summary["score"],
            "correct": int(sum(scores)),
            "total": n,
            "per_group": summary.get("per_group", {}),
            "empty": empty,
            "unparsed": unparsed,
            "invalid": invalid,
            "scores": scores,
            "extracted": values,
        }
