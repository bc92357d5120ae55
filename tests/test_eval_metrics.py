"""The repository's `evaluate` modules (loaded by path) and their building blocks, against hand-computed values."""

import math
import os

import pytest

from modeling_vift.evaluation.pipeline import load_metric
from modeling_vift.evaluation.scoring import (
    lcs_length,
    nearest_option,
    normalize_text,
    rouge_l,
    score_demon,
    tfidf_cosine,
)


METRICS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "metrics")


@pytest.fixture(scope="module")
def demon_metric():
    return load_metric("demon_score", METRICS)


@pytest.fixture(scope="module")
def math_metric():
    return load_metric("math_accuracy", METRICS)


def test_normalisation_lowercases_and_strips_punctuation():
    assert normalize_text("Hello, World!  It's\n3.5 (or 1,000).") == "hello world it s 3.5 or 1000"


def test_tfidf_cosine_matches_the_hand_computation():
    # texts: q = "red car", d1 = "red car", d2 = "blue car"; N = 3; df(red) = 2, df(car) = 3, df(blue) = 1
    idf_red, idf_car, idf_blue = math.log(4 / 3) + 1, math.log(4 / 4) + 1, math.log(4 / 2) + 1
    expected_d2 = idf_car**2 / (math.hypot(idf_red, idf_car) * math.hypot(idf_blue, idf_car))
    sims = tfidf_cosine("red car", ["red car", "blue car"])
    assert sims[0] == pytest.approx(1.0)
    assert sims[1] == pytest.approx(expected_d2) and sims[1] == pytest.approx(0.311917, abs=1e-6)


def test_nearest_option_picks_exact_then_tfidf_and_refuses_ties_and_no_overlap():
    assert nearest_option("FALSE.", ["True", "False"]) == 1
    assert nearest_option("I think the statement is true", ["True", "False"]) == 0
    assert nearest_option("banana", ["True", "False"]) is None  # shares no word: not mapped to option 0
    assert nearest_option("true or false", ["True", "False"]) is None  # tied


def test_rouge_l_matches_the_hand_computation():
    assert lcs_length("a b c d".split(), "a c".split()) == 2
    assert rouge_l("a b c d", "a c") == pytest.approx(2 * 0.5 * 1.0 / 1.5)  # P = 2/4, R = 2/2
    assert rouge_l("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(5 / 6)  # LCS 5 of 6 and 6
    assert rouge_l("", "the cat") == 0.0


def test_demon_image_choice_tasks_take_the_single_named_image():
    assert score_demon("I pick Image B.", "Image B", "multi-choice", ["Image A", "Image B"]).score == 1.0
    assert score_demon("image a or image b", "Image B", "multi-choice", ["Image A", "Image B"]).status == "unparsed"


def test_demon_metric_aggregates_tasks_then_categories(demon_metric):
    result = demon_metric.compute(
        predictions=["It is true", "true", "the cat sat on the mat", "", "banana"],
        references=["True", "False", "the cat is on the mat", "False", "True"],
        question_types=["multi-choice", "multi-choice", "open-ended", "multi-choice", "multi-choice"],
        choices=[["True", "False"], ["True", "False"], None, ["True", "False"], ["True", "False"]],
        tasks=["T1", "T1", "T2", "T3", "T3"],
        categories=["C1", "C1", "C1", "C2", "C2"],
        ids=["a", "b", "c", "d", "e"],
    )
    assert result["per_task"]["T1"] == {"score": 0.5, "metric": "accuracy", "n": 2, "category": "C1"}
    assert result["per_task"]["T2"]["score"] == pytest.approx(5 / 6) and result["per_task"]["T2"]["metric"] == "rouge_l"
    assert result["per_task"]["T3"]["score"] == 0.0
    assert result["per_category"]["C1"]["score"] == pytest.approx((0.5 + 5 / 6) / 2)
    assert result["per_category"]["C1"]["n_tasks"] == 2 and result["per_category"]["C1"]["n"] == 3
    assert result["overall"] == pytest.approx(((0.5 + 5 / 6) / 2 + 0.0) / 2)
    assert result["empty"] == ["d"] and result["unparsed"] == ["e"]


def test_math_metric_scores_groups_and_lists_bad_predictions(math_metric):
    result = math_metric.compute(
        predictions=["The answer is (B)", "12", "the answer is 0.52", "", "no idea", "5"],
        references=["square", "13", "0.5", "7", "7", "5"],
        question_types=["multi_choice", "free_form", "free_form", "free_form", "free_form", "free_form"],
        answer_types=["text", "integer", "float", "integer", "integer", "fraction"],
        choices=[["circle", "square"], None, None, None, None, None],
        precisions=[None, None, 1.0, None, None, None],
        groups=["g1", "g1", "g2", "g2", "g2", "g2"],
        ids=["1", "2", "3", "4", "5", "6"],
    )
    assert result["scores"] == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert result["accuracy"] == pytest.approx(2 / 6) and (result["correct"], result["total"]) == (2, 6)
    assert result["per_group"] == {"g1": {"score": 0.5, "n": 2}, "g2": {"score": 0.25, "n": 4}}
    assert result["empty"] == ["4"] and result["unparsed"] == ["5"]
    assert result["invalid"][0]["id"] == "6" and "fraction" in result["invalid"][0]["reason"]


def test_metric_inputs_of_the_wrong_length_are_refused_clearly(math_metric):
    with pytest.raises(ValueError, match="one per prediction"):
        math_metric.compute(predictions=["1", "2"], references=["1", "2"], answer_types=["integer"])
