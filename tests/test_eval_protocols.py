"""The `official` protocol reproduces each benchmark's own scorer; `strict` is vift's careful scorer.

The official cases are the examples the official repositories document (MathVista's extraction prompt demos,
MathVerse's extraction and judge prompt demos, MATH-V's scorer docstrings, the `rouge` package's LCS rules) with the
outcome the official pipeline gives them; the agreement tests count how many vift reproduces.
"""

import json

import pytest

from modeling_vift.evaluation.benchmarks import load_benchmark
from modeling_vift.evaluation.extraction import extract_letter, extract_number
from modeling_vift.evaluation.metrics import compute_demon_scores, compute_math_accuracy
from modeling_vift.evaluation.official import (
    MathVistaLLMExtractor,
    demon_normalize,
    edit_distance,
    mathverse_rule_extract,
    mathverse_rule_judge,
    mathvision_equal,
    mathvision_extract,
    mathvista_normalize,
    rouge_l_package,
    score_demon_official,
    score_mathvista_official,
    sklearn_tfidf_similarities,
)
from modeling_vift.evaluation.scoring import score_math


# MathVista: the five worked examples of the official extraction prompt -> (response, type info, answer)
MATHVISTA_DEMOS = [
    ("The number missing in the sequence is 14.", "free_form", "integer", [], None, "14"),
    ("The fraction of females facing the camera is 0.6, which means that six out of ten females in the group are "
     "facing the camera.", "free_form", "float", [], 1, "0.6"),
    ("Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.", "free_form", "float", [], 2, "1.45"),
    ("The line graph saw its maximum peak between 2007 and 2008.", "free_form", "list", [], None, "[2007, 2008]"),
    ("The correct answer is (B) 8/11.", "multi_choice", "text", ["3/11", "8/11", "6/11", "3/5"], None, "8/11"),
]

# MathVerse: the extraction prompt's six demos -> documented extraction
MATHVERSE_EXTRACTIONS = [
    ("Rounded to two decimal places, the perimeter of the sector is approximately:\n\n(-2, 1)", "(-2, 1)"),
    ("at those points.\n\nTherefore, the correct option that represents the meaning of the intersection points of the "
     "graphs is:\n\nD. They give the solutions to the equation $f(t)=g(t)$.\",", "D"),
    (" at 1 (there's a closed circle at y = 1), the range in interval notation is \\((-4, 1]\\).\n\nFinal values:\n"
     "Domain: \\((-3, 3]\\)\nRange: \\((-4, 1]\\)", "Domain: \\((-3, 3]\\)\nRange: \\((-4, 1]\\)"),
    ("As it stands, I cannot provide the correct option letter because there isn't enough information to solve for 'y'.",
     "null"),
    ("Given that AB = 17.6 meters, we can now substitute into the equation:\n\nd = 17.6 / cos(38\u00b0)\n\nTherefore, to "
     "one decimal place, the distance d between Ned and Bart is approximately 22.3 meters.", "22.3"),
    (" have all the coefficients for the quadratic function:\n\\( f(x) = ax^2 + bx + c \\)\n\\( f(x) = -1x^2 - 2x + 1 \\)"
     "\n\nTherefore, the equation for the graphed function \\( f \\) is:\n\\( f(x) = -x^2 - 2x + 1 \\)\"",
     "f(x) = -x^2 - 2x + 1"),
]

# MathVerse: the judge prompt's four demos -> (question, standard answer, extraction, judgement)
MATHVERSE_JUDGEMENTS = [
    ("Write the set of numbers represented on the number line in interval notation.", "(-2,1]",
     "Extracted Answer: \\((-2, 1)\\)", 0),
    ("Find the domain and range of the function f using interval notation.", "domain: [-4, 0) and range: (-3, 1]",
     "Range: \\((-4, 1]\\)", 0),
    ("Two curves are symmetrical about the x-axis. Use the vertical line test to determine if this relation is a "
     "function.\nChoices:\nA:This is a function\nB:This is not a function", "B", "This is not a function", 1),
    ("Given the graph of the ellipse that intersects with x-axis at 9 and -9 and with y-axis at 3 and -3, determine its "
     "equation.A. \\frac{{x^2}}{{81}} + \\frac{{y^2}}{{9}} = 1 B. Can not determine.\n", "A",
     "\\frac{{x^2}}{{81}} + \\frac{{y^2}}{{9}} = 1", 1),
]


def test_official_mathvista_agrees_with_the_documented_extraction_examples():
    agree = sum(score_mathvista_official(r, a, q, t, c, p).score == 1.0 for r, q, t, c, p, a in MATHVISTA_DEMOS)
    assert agree == len(MATHVISTA_DEMOS)


def test_official_mathvista_normalisation_quirks():
    choices = ["tokyo", "osaka", "shanghai", "hong kong"]
    assert mathvista_normalize("(D) hong kong", choices, "multi_choice", "text", None) == "hong kong"
    assert mathvista_normalize("tokio", choices, "multi_choice", "text", None) == "tokyo"  # nearest by edit distance
    assert mathvista_normalize("3.7", [], "free_form", "integer", None) == "3"  # int(float(x)) truncates
    assert mathvista_normalize("1.26", [], "free_form", "float", 1.0) == "1.3"
    assert mathvista_normalize("many", [], "free_form", "integer", None) is None
    assert edit_distance("kitten", "sitting") == 3
    # a multi-choice response always lands on a choice, so an unreadable one can still be "correct"
    assert score_mathvista_official("I am not sure.", "osaka", "multi_choice", "text", ["tokyo", "osaka"], None).extracted in ("tokyo", "osaka")


def test_mathvista_llm_extractor_caches_and_resumes(tmp_path):
    calls = []

    def fake_llm(prompt):
        calls.append(prompt)
        return "Extracted answer: B"

    cache = tmp_path / "extractions.jsonl"
    fields = {"question_type": "multi_choice", "answer_type": "text", "choices": ["3/11", "8/11"],
              "query": "Question: What fraction of the shape is blue?"}
    extractor = MathVistaLLMExtractor(fake_llm, cache_path=str(cache), model_id="m")
    assert extractor("I think it is the second one", fields) == "B"
    assert extractor("8/11", fields) == "8/11" and len(calls) == 1  # the official shortcut needs no model
    resumed = MathVistaLLMExtractor(lambda p: pytest.fail("asked again"), cache_path=str(cache), model_id="m")
    assert resumed("I think it is the second one", fields) == "B"

    def broken(prompt):
        raise ConnectionError("endpoint down")

    failing = MathVistaLLMExtractor(broken, model_id="m")
    assert failing("I think it is the second one", fields) is None and "endpoint down" in failing.failures[0]


def test_official_mathverse_agrees_with_the_documented_examples():
    extractions = [mathverse_rule_extract(r) == want for r, want in MATHVERSE_EXTRACTIONS]
    judgements = [mathverse_rule_judge(e, a, q) == j for q, a, e, j in MATHVERSE_JUDGEMENTS]
    assert sum(extractions) == len(MATHVERSE_EXTRACTIONS) and sum(judgements) == len(MATHVERSE_JUDGEMENTS)


def test_mathverse_choice_formats_units_and_non_letter_answers():
    question = "As shown in the figure, find the angle.\nChoices:\nA:40°\nB:50°\nC:130°\nD:140°"
    result = compute_math_accuracy(["D:140°", "The answer is 4.4 m", "So the angle is 60^\\circ", "C"],
                                   ["D", "4.4", "60", "This is not a function"],
                                   question_types=["multi-choice", "free-form", "free-form", "multi-choice"],
                                   answer_types=[None, "number", "number", None], questions=[question, "", "", question],
                                   benchmark="mathverse", protocol="official")
    assert result["scores"] == [1.0, 1.0, 1.0, 0.0] and result["protocol"] == "official"


def test_official_mathvision_reading_and_sympy_comparison():
    assert mathvision_extract("Hence the answer is \\boxed{6\\sqrt{6}}.") == "6\\sqrt{6}"
    assert mathvision_extract("Let me check each option.\nThe answer is C. Because of symmetry.") == "c"
    assert mathvision_equal("6\\sqrt{6}", "14.7")  # values equal to 2 decimals
    assert mathvision_equal("(2*3,5+2)", "(6,7)")  # tuples evaluated element by element
    assert mathvision_equal("\\frac{1}{2}", "0.5") and not mathvision_equal("a", "b")
    result = compute_math_accuracy(["The answer is \\boxed{6\\sqrt{6}}", "The answer is C."], ["14.7", "C"],
                                   question_types=["free_form", "multi_choice"], answer_types=["number", None],
                                   choices=[[], ["1", "2", "3"]], benchmark="mathvision", protocol="official")
    assert result["scores"] == [1.0, 1.0]


def test_official_demon_rouge_counts_unique_words_per_the_rouge_package():
    # the package reconstructs the LCS "the cat the" here and counts its unique words {the, cat}: P = 2/3, R = 2/5
    assert rouge_l_package("the cat the cat sat", "the cat sat on the mat") == pytest.approx(0.5, abs=1e-6)
    assert rouge_l_package("a b c", "a b c") == pytest.approx(1.0, abs=1e-6)
    assert demon_normalize("Hello, world! x-y") == "hello world x y"  # "," sits before a space: deleted; "-" does not: a space
    assert demon_normalize("(a) 1,000.") == "a 1000"


def test_official_demon_tfidf_ties_image_choices_and_empty_vocabulary():
    assert list(sklearn_tfidf_similarities("red car", ["red", "blue"]).round(6)) == pytest.approx([0.605349, 0.0], abs=1e-5)
    # no shared word: all similarities 0, the first option wins (argmax), as in the official script
    assert score_demon_official("zebra", "left", "multi-choice", ["left", "right"]).score == 1.0
    # single-letter tokens are dropped by the tokeniser: empty vocabulary -> exact match
    assert score_demon_official("b", "b", "multi-choice", ["a", "b"]).score == 1.0
    assert score_demon_official("Image B.", "Image B", "multi-choice", [], "recipeqa-RecipeQA_VisualCloze").score == 1.0
    assert score_demon_official("image b or image c", "Image B", "multi-choice", [], "COMICS_Panel").score == 0.0
    scores = compute_demon_scores(["it is true", "the cat sat"], ["True", "the cat sat"],
                                  question_types=["multi-choice", "open-ended"], choices=[["True", "False"], None],
                                  tasks=["a", "b"], categories=["x", "y"], protocol="official")
    assert scores["scores"] == [1.0, pytest.approx(1.0, abs=1e-6)] and scores["protocol"] == "official"


def test_protocol_must_be_known():
    with pytest.raises(ValueError, match="protocol must be one of"):
        compute_math_accuracy(["1"], ["1"], protocol="loose")


# ---------------------------------------------------------------------------------------------- strict fixes


def test_strict_keeps_minus_signs():
    assert score_math("The answer is (3,4)", "(3,-4)", "free_form", "text").score == 0.0
    assert score_math("The answer is (3,-4)", "(3,-4)", "free_form", "text").score == 1.0
    assert score_math("The answer is 4-4\\sqrt{3}", "4+4\\sqrt{3}", "free_form", "text").score == 0.0
    assert score_math("The answer is \u22124.", "-4", "free_form", "number").score == 1.0  # Unicode minus


def test_strict_scores_symbolic_answers_by_value():
    assert score_math("The answer is 6\\sqrt{6}", "6", "free_form", "number").score == 0.0
    assert score_math("So the length is $6\\sqrt{6}$.", "6\\sqrt{6}", "free_form", "number").score == 1.0
    assert score_math("The answer is 14.70", "6\\sqrt{6}", "free_form", "number").score == 1.0


def test_strict_choice_text_counts_only_where_the_answer_is_stated():
    choices = ["red", "green", "blue"]
    assert score_math("A red square and a green circle are drawn; I cannot tell.", "red", "multi_choice", None, choices).score == 0.0
    assert score_math("The square is red, so the answer is blue.", "blue", "multi_choice", None, choices).score == 1.0


@pytest.mark.parametrize("response, letter", [
    ("Option B is the correct answer.", 1), ("After checking, the answer is b", 1), ("Answer: (b)", 1),
    ("\\boxed{\\text{C}}", 2), ("A: No", 0), ("D:140°", 3),
])
def test_strict_reads_more_letter_forms(response, letter):
    assert extract_letter(response, 4) == letter


def test_strict_number_words_and_the_leading_answer():
    assert extract_number("There are two objects left.") == 2.0
    assert extract_number("5\n\nExplanation: there are 2 cubes and 3 spheres.") == 5.0


# ---------------------------------------------------------------------------------------------- loaders


def test_mathvista_reads_the_official_query_from_query_json(tmp_path):
    record = {"pid": "7", "question": "How many?", "image": "a.png", "choices": None, "unit": None, "precision": None,
              "answer": "3", "question_type": "free_form", "answer_type": "integer", "metadata": {}}
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "testmini.json").write_text(json.dumps({"7": record}))
    missing = load_benchmark("mathvista", str(tmp_path / "testmini.json"), protocol="official")
    assert not missing.samples and "missing official query" in missing.skipped[0]["reason"]
    (tmp_path / "query.json").write_text(json.dumps({"7": "Hint: give an integer.\nQuestion: How many?"}))
    loaded = load_benchmark("mathvista", str(tmp_path / "testmini.json"), protocol="official")
    assert loaded.samples[0].prompt.endswith("Hint: give an integer.\nQuestion: How many?")


def test_scoring_runs_without_the_repository_metrics_folder():
    from modeling_vift.evaluation.pipeline import score_records

    records = [{"id": "1", "prediction": "The answer is 3", "error": None,
                "sample": {"reference": "3", "question_type": "free_form", "answer_type": "integer", "choices": [],
                           "precision": None, "group": None, "extra": {"question": "q"}}}]
    for protocol in ("official", "strict"):
        assert score_records("mathvista", records, protocol=protocol)["accuracy"] == 1.0
