"""Accuracy with rule-based answer extraction for MathVista, MathVerse and MathVision (an `evaluate` module).

Load it by path: `evaluate.load("metrics/math_accuracy")`. A thin wrapper: the rules live in
`modeling_vift.evaluation.metrics.compute_math_accuracy` (installed with vift), which the recipes call directly.
"""

import datasets
import evaluate

from modeling_vift.evaluation.metrics import compute_math_accuracy


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
    questions (`list[str]`, optional): the question texts (the MathVerse official judge reads the options there).
    benchmark (`str`, optional): `mathvista`, `mathverse` or `mathvision`: whose official scorer `protocol="official"`
        reproduces.
    protocol (`str`): `strict` (default, vift's careful rules) or `official` (the benchmark's own scorer).
Returns:
    accuracy (`float`, 0-1), correct, total, per_group {group: {score, n}}, empty [ids], unparsed [ids],
    invalid [{id, reason}], scores [0/1 per sample], extracted [the value read per sample], protocol.
Examples:
    >>> metric = evaluate.load("metrics/math_accuracy")
    >>> metric.compute(predictions=["The answer is (B)"], references=["4"], question_types=["multi_choice"],
    ...                choices=[["3", "4"]])["accuracy"]
    1.0
"""


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
                 groups=None, ids=None, extracted=None, questions=None, benchmark=None, protocol="strict"):
        return compute_math_accuracy(predictions, references, question_types=question_types, answer_types=answer_types,
                                     choices=choices, precisions=precisions, groups=groups, ids=ids, extracted=extracted,
                                     questions=questions, benchmark=benchmark, protocol=protocol)
