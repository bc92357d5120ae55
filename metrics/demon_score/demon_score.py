"""DEMON scores (an `evaluate` module): accuracy for multi-choice tasks (the free-form answer mapped to its nearest
option by TF-IDF cosine after normalisation), ROUGE-L for open-ended tasks, per task, per category and overall.

Load it by path: `evaluate.load("metrics/demon_score")`. A thin wrapper around
`modeling_vift.evaluation.metrics.compute_demon_scores` (installed with vift), which the recipes call directly.
"""

import datasets
import evaluate

from modeling_vift.evaluation.metrics import compute_demon_scores


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
    protocol (`str`): `strict` (default; the rules above) or `official` (the DEMON script's own rules: its punctuation
        handling, the `rouge` package's ROUGE-L, scikit-learn TF-IDF with the first option on ties).
Returns:
    overall (`float`, 0-1), per_category {category: {score, n_tasks, n}}, per_task {task: {score, metric, n,
    category}}, empty [ids], unparsed [ids], invalid [{id, reason}], scores [per sample], protocol.
Examples:
    >>> metric = evaluate.load("metrics/demon_score")
    >>> metric.compute(predictions=["it is true"], references=["True"], question_types=["multi-choice"],
    ...                choices=[["True", "False"]])["overall"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DemonScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, question_types=None, choices=None, tasks=None, categories=None, ids=None,
                 protocol="strict"):
        return compute_demon_scores(predictions, references, question_types=question_types, choices=choices, tasks=tasks,
                                    categories=categories, ids=ids, protocol=protocol)
