"""Rule-based answer extraction and per-sample math scoring (hand-checked cases)."""

import math

import pytest

from modeling_vift.evaluation.extraction import (
    LLMJudgeExtractor,
    answer_segment,
    extract_choice,
    extract_letter,
    extract_number,
    extract_number_list,
    parse_number,
)
from modeling_vift.evaluation.scoring import numbers_match, score_math


@pytest.mark.parametrize(
    "response, expected",
    [
        ("B", 1),
        ("(c)", 2),
        ("D.", 3),
        ("The answer is (B).", 1),
        ("Answer: C", 2),
        ("I compared all options; the correct option is A", 0),
        ("A. because the circle is larger", 0),
        ("Looking at (B) and nothing else", 1),
        ("A circle is not the answer", None),  # a capital starting a word is not a letter
        ("E", None),  # out of range for four choices
        ("", None),
    ],
)
def test_choice_letters_are_read_from_common_phrasings(response, expected):
    assert extract_letter(response, 4) == expected


def test_choice_text_and_numeric_choices_are_matched_when_no_letter_is_given():
    choices = ["dark red", "red", "blue"]
    assert extract_choice("It is dark red.", choices) == 0  # "red" lies inside the longer match "dark red"
    assert extract_choice("blue", choices) == 2
    assert extract_choice("red or blue", choices) is None  # two different choices: ambiguous
    assert extract_choice("The angle measures 130 degrees", ["40", "50", "130", "140"]) == 2
    assert extract_choice("no idea", choices) is None


@pytest.mark.parametrize(
    "text, value",
    [("3/4", 0.75), ("\\frac{1}{3}", 1 / 3), ("-\\frac{3}{2}", -1.5), ("1,234.5", 1234.5), ("45%", 45.0),
     ("$12$", 12.0), ("1/0", None), ("abc", None), ("inf", None)],
)
def test_numbers_fractions_and_separators_parse(text, value):
    parsed = parse_number(text)
    assert (parsed is None and value is None) or math.isclose(parsed, value)


def test_the_stated_answer_wins_over_other_numbers():
    assert extract_number("There are 3 rows of 4, so the answer is 12.") == 12.0
    assert extract_number("Step 1: 2+2=4. Final answer: \\boxed{\\frac{3}{4}}") == 0.75
    assert extract_number("x = 5 cm and y = 7 cm") == 7.0  # no anchor: the last number
    assert extract_number("The total is 1,000 apples") == 1000.0
    assert extract_number("no numbers here") is None
    assert answer_segment("so the answer is: 42 units\nthanks") == "42 units"
    assert extract_number_list("The answer is [2, 4, 6].") == [2.0, 4.0, 6.0]
    assert extract_number_list("heights 1, 3 and 5") == [1.0, 3.0, 5.0]


def test_numbers_are_compared_at_the_answer_precision():
    assert numbers_match(0.52, "0.5", "float", precision=1)  # 0.52 rounds to 0.5
    assert not numbers_match(0.56, "0.5", "float", precision=1)
    assert numbers_match(3.14159, "3.14", "float", precision=2.0)
    assert numbers_match(7.0, "7", "integer") and not numbers_match(7.4, "7", "integer")
    assert numbers_match(0.33, "\\frac{1}{3}", "number")  # fractions accept two decimals
    assert numbers_match(1.5, "3/2", "number") and not numbers_match(1.4, "3/2", "number")
    assert numbers_match(2.83, "2.83", "number") and not numbers_match(2.8, "2.83", "number")


def test_math_scores_list_empty_and_unparsed_responses():
    choices = ["circle", "square", "triangle"]
    assert score_math("The answer is B", "square", "multi_choice", "text", choices).score == 1.0
    assert score_math("(A)", "square", "multi_choice", "text", choices).score == 0.0
    assert score_math("", "square", "multi_choice", "text", choices).status == "empty"
    assert score_math("hmm", "square", "multi_choice", "text", choices).status == "unparsed"
    assert score_math("C", "C", "multi_choice", None, []).score == 1.0  # MathVerse: letters only
    assert score_math("Answer: D", "D", "multi_choice", None, ["A", "B", "C", "D", "E"]).score == 1.0  # MathVision
    assert score_math("[2, 4, 6]", "[2, 4, 6]", "free_form", "list").score == 1.0
    assert score_math("[2, 4]", "[2, 4, 6]", "free_form", "list").score == 0.0
    assert score_math("Yes.", "yes", "free_form", "text").score == 1.0
    assert score_math("the answer is 12 cm", "12", "free_form", "number").score == 1.0
    result = score_math("no number", "12", "free_form", "integer")
    assert (result.score, result.status) == (0.0, "unparsed")
    assert score_math("2\\sqrt{3}", "2\\sqrt{3}", "free_form", "number").score == 1.0  # non-numeric: text match


def test_llm_judge_extractor_is_pluggable_and_falls_back_to_rules():
    prompts = []

    def judge(prompt):
        prompts.append(prompt)
        return "B" if "square" in prompt else "NONE"

    extractor = LLMJudgeExtractor(judge)
    fields = {"question": "Which is largest?", "choices": ["circle", "square"]}
    answer = extractor("I think the big one, the square.", fields)
    assert answer == "B" and "(B) square" in prompts[0]
    assert score_math("I think the big one, the square.", "square", "multi_choice", "text", ["circle", "square"], extracted=answer).score == 1.0
    assert extractor("no idea", {"question": "q"}) is None  # NONE -> the rules read the raw response
    assert extractor("", fields) is None and len(prompts) == 2  # empty responses never reach the judge
    with pytest.raises(TypeError):
        LLMJudgeExtractor("not callable")
    with pytest.raises(ValueError, match="template"):
        LLMJudgeExtractor(judge, template="no fields")


def test_llm_judge_loads_a_local_text_generation_model(tmp_path):
    from modeling_vift.testing_utils import save_tiny_towers

    _, text_dir = save_tiny_towers(str(tmp_path))
    judge = LLMJudgeExtractor.from_pretrained(text_dir, max_new_tokens=3)
    answer = judge("I think it is the square.", {"question": "Which is largest?", "choices": ["circle", "square"]})
    assert answer is None or (isinstance(answer, str) and answer.strip() == answer and answer)
