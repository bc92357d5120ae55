"""Scoring in plain Python/numpy: math answers (choice, integer, float with precision, fraction, list, text), DEMON
(TF-IDF nearest-option accuracy, ROUGE-L) and per-group aggregation.

Each per-sample scorer returns a `SampleScore(score, status, extracted)`; `status` is `"ok"`, `"empty"` (no
prediction) or `"unparsed"` (no answer could be read). Empty and unparsed predictions score 0 and are listed.
"""

from __future__ import annotations

import math
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np

from .extraction import (
    LETTERS,
    answer_segment,
    extract_choice,
    extract_letter,
    extract_number,
    extract_number_list,
    find_numbers,
    is_symbolic,
    math_value,
    normalize_choice_text,
    parse_number,
)


MULTI_CHOICE = "multi_choice"
FREE_FORM = "free_form"
ANSWER_TYPES = ("text", "integer", "float", "list", "number")


@dataclass
class SampleScore:
    score: float
    status: str  # "ok" | "empty" | "unparsed"
    extracted: object = None


# ---------------------------------------------------------------------------------------------- text


def normalize_text(text):
    """DEMON normalisation: lower-case, punctuation stripped (decimal points and digit-grouping commas inside numbers
    kept as part of the number), whitespace collapsed."""
    text = str(text).lower().replace("\n", " ").replace("\t", " ")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)
    text = re.sub(r"[^\w\s.]|_", " ", text)
    return " ".join(text.split())


def tokenize(text):
    """Word tokens of already-normalised text (single characters included)."""
    return text.split()


def tfidf_cosine(query, documents):
    """Cosine similarities between `query` and each of `documents` in a TF-IDF space fitted on all of them.

    Term frequency is the raw count; idf(t) = ln((1 + N) / (1 + df(t))) + 1 over the N = 1 + len(documents) texts;
    vectors are L2-normalised. An all-zero vector has similarity 0 with everything."""
    texts = [tokenize(query)] + [tokenize(d) for d in documents]
    vocabulary = sorted({t for tokens in texts for t in tokens})
    if not vocabulary:
        return np.zeros(len(documents))
    index = {t: i for i, t in enumerate(vocabulary)}
    counts = np.zeros((len(texts), len(vocabulary)))
    for row, tokens in enumerate(texts):
        for token, count in Counter(tokens).items():
            counts[row, index[token]] = count
    df = (counts > 0).sum(axis=0)
    idf = np.log((1 + len(texts)) / (1 + df)) + 1.0
    vectors = counts * idf
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return vectors[1:] @ vectors[0]


def nearest_option(prediction, options):
    """Index of the option closest to `prediction` (both normalised): an exact match first, else the highest TF-IDF
    cosine. `None` when no option shares a word with the prediction or when the best similarity is tied."""
    pred = normalize_text(prediction)
    normalized = [normalize_text(o) for o in options]
    if not pred or not options:
        return None
    if normalized.count(pred) == 1:
        return normalized.index(pred)
    sims = tfidf_cosine(pred, normalized)
    best = float(sims.max())
    if best <= 0 or int(np.isclose(sims, best, rtol=0, atol=1e-12).sum()) > 1:
        return None
    return int(sims.argmax())


def lcs_length(a, b):
    """Length of the longest common subsequence of two token lists."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction, reference):
    """ROUGE-L F1 on normalised word tokens: 2PR/(P+R) with P = LCS/len(pred), R = LCS/len(ref); 0 if either is empty."""
    pred, ref = tokenize(normalize_text(prediction)), tokenize(normalize_text(reference))
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


_IMAGE_LETTER = re.compile(r"\bimage\s+([a-z])\b")


def image_letter_choice(prediction):
    """For DEMON's image-choice tasks ("Image A" ... "Image D"): the one image letter a prediction names, else None."""
    letters = set(_IMAGE_LETTER.findall(normalize_text(prediction)))
    return letters.pop() if len(letters) == 1 else None


def is_image_letter_answer(text):
    return _IMAGE_LETTER.fullmatch(normalize_text(text)) is not None


# ---------------------------------------------------------------------------------------------- DEMON


def score_demon(prediction, reference, question_type, choices=None):
    """One DEMON sample: ROUGE-L for `open-ended`; for `multi-choice`, 1 if the option nearest to the prediction
    (exact match, else TF-IDF cosine) is the reference. Image-choice tasks (answers "Image A".."Image D") match the
    one image letter the prediction names."""
    if prediction is None or not str(prediction).strip():
        return SampleScore(0.0, "empty")
    if question_type == "open-ended":
        return SampleScore(rouge_l(prediction, reference), "ok")
    if is_image_letter_answer(reference):
        letter = image_letter_choice(prediction)
        if letter is None:
            return SampleScore(0.0, "unparsed")
        return SampleScore(float(letter == _IMAGE_LETTER.fullmatch(normalize_text(reference)).group(1)), "ok", f"image {letter}")
    if not choices:
        pred = normalize_text(prediction)
        return SampleScore(float(pred == normalize_text(reference)), "ok", pred)
    index = nearest_option(prediction, choices)
    if index is None:
        return SampleScore(0.0, "unparsed")
    return SampleScore(float(normalize_text(choices[index]) == normalize_text(reference)), "ok", choices[index])


# ---------------------------------------------------------------------------------------------- math


def _decimals(text):
    match = re.fullmatch(r"\s*-?\d*\.(\d+)\s*", str(text))
    return len(match.group(1)) if match else 0


def _is_fraction(text):
    text = str(text)
    return "frac" in text or re.fullmatch(r"\s*-?\d+(?:\.\d+)?\s*/\s*-?\d+(?:\.\d+)?\s*", text) is not None


def numbers_match(prediction, answer_text, answer_type="number", precision=None):
    """Compares a predicted number with the reference `answer_text`.

    - `integer`: equal as integers (a prediction of 3.0 reads as 3).
    - `float` (MathVista): both rounded to `precision` decimals (default: the answer's own decimals).
    - `number` (MathVerse/MathVision free-form): a fraction answer accepts its exact value or the value to 2 decimals;
      a decimal answer with d decimals accepts predictions equal after rounding to d decimals; an integer answer
      needs an exact integer."""
    answer = parse_number(answer_text)
    if answer is None or prediction is None:
        return False
    if answer_type == "integer":
        return abs(prediction - round(prediction)) < 1e-9 and round(prediction) == round(answer)
    if answer_type == "float":
        digits = int(precision) if precision is not None and not (isinstance(precision, float) and math.isnan(precision)) else _decimals(answer_text)
        return round(prediction, digits) == round(answer, digits)
    if _is_fraction(answer_text):
        return abs(prediction - answer) <= 1e-9 * max(1.0, abs(answer)) or round(prediction, 2) == round(answer, 2)
    digits = _decimals(answer_text)
    if digits == 0:
        return abs(prediction - answer) < 1e-9
    return round(prediction, digits) == round(answer, digits)


def _normalize_math_text(text):
    text = str(text).strip().lower()
    text = re.sub(r"\\(?:text|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", text)
    text = text.replace("\\left", "").replace("\\right", "").replace("$", "")
    text = re.sub(r"\s+", "", text)
    return text.strip(".")


def score_math(prediction, answer, question_type, answer_type=None, choices=None, precision=None, extracted=None):
    """One math sample.

    `question_type` is `multi_choice` or `free_form`. For multi-choice the answer is either a choice text (MathVista)
    or a letter (MathVerse, MathVision); `choices` may be empty when the options are only in the question text
    (MathVerse), in which case the letter the prediction names is compared with the answer letter.
    `answer_type` is `text`, `integer`, `float`, `list` (MathVista) or `number` (a free-form numeric answer).
    `extracted`, when given (an LLM judge's output), replaces the raw prediction for the extraction rules."""
    source = extracted if extracted is not None else prediction
    if prediction is None or not str(prediction).strip():
        return SampleScore(0.0, "empty")
    source = str(source)
    choices = list(choices or [])
    answer = str(answer)

    if question_type == MULTI_CHOICE:
        answer_is_letter = re.fullmatch(r"\(?([A-Z])\)?", answer.strip()) is not None
        if choices:
            index = extract_choice(source, choices)
            if index is None:
                return SampleScore(0.0, "unparsed")
            if answer_is_letter and normalize_choice_text(answer) not in [normalize_choice_text(c) for c in choices]:
                correct = LETTERS[index] == answer.strip().strip("()")
            else:
                correct = normalize_choice_text(choices[index]) == normalize_choice_text(answer)
            return SampleScore(float(correct), "ok", choices[index])
        letter = _letter_only(source)
        if letter is None:
            return SampleScore(0.0, "unparsed")
        return SampleScore(float(letter == answer.strip().strip("()")), "ok", letter)

    answer_type = answer_type or "text"
    if answer_type == "list":
        values = extract_number_list(source)
        reference = find_numbers(answer)
        if values is None:
            return SampleScore(0.0, "unparsed")
        correct = len(values) == len(reference) and all(abs(a - b) < 1e-9 for a, b in zip(values, reference))
        return SampleScore(float(correct), "ok", values)
    if answer_type in ("integer", "float", "number"):
        segment = answer_segment(source) or source.strip().split("\n")[-1]
        if answer_type == "number" and (is_symbolic(answer) or is_symbolic(segment)):
            # `6\sqrt{6}` is a value, not the number 6: both sides evaluated (sympy) and compared
            symbolic = _symbolic_match(segment, answer)
            if symbolic is not None:
                return symbolic
        if answer_type == "number" and parse_number(answer) is None:
            answer_type = "text"
        else:
            value = extract_number(source)
            if value is None:
                return SampleScore(0.0, "unparsed")
            return SampleScore(float(numbers_match(value, answer, answer_type, precision)), "ok", value)
    # text answers: the stated answer (boxed / after "answer is") or the whole response, compared normalised
    segment = answer_segment(source)
    candidates = [c for c in (segment, source, source.strip().split("\n", 1)[0]) if c]
    target = _normalize_math_text(answer)
    for candidate in candidates:
        if _normalize_math_text(candidate) == target or normalize_choice_text(candidate) == normalize_choice_text(answer):
            return SampleScore(1.0, "ok", candidate)
    return SampleScore(0.0, "ok", candidates[0].strip())


def _symbolic_match(segment, answer):
    """Compares a symbolic prediction or answer by value: equal to 1e-6 (relative), or a decimal prediction equal to the
    answer's value rounded to the prediction's decimals (at least 2). `None` when the answer has no value."""
    target = math_value(_normalize_math_text(answer).replace("\\dfrac", "\\frac"))
    if target is None:
        return None
    spans = re.findall(r"\$([^$]+)\$", segment)  # the last inline formula, else the text after the last " is "
    cleaned = spans[-1] if spans else re.split(r"\bis\b", segment)[-1]
    cleaned = re.sub(r"\\(?:text|mathrm)\s*\{[^{}]*\}", "", cleaned).replace("$", "").strip().rstrip(".")
    cleaned = cleaned.split("=")[-1].split("\\approx")[-1].strip()
    value = math_value(cleaned) if is_symbolic(cleaned) else None
    if value is None:
        numbers = find_numbers(cleaned) if not is_symbolic(cleaned) else []
        if not numbers:
            return SampleScore(0.0, "unparsed")
        value = numbers[-1]
        digits = _decimals(re.findall(r"-?\d+\.\d+", cleaned)[-1]) if re.search(r"\d\.\d", cleaned) else 0
        return SampleScore(float(digits >= 2 and round(target, digits) == round(value, digits)), "ok", value)
    return SampleScore(float(abs(value - target) <= 1e-6 * max(1.0, abs(target))), "ok", cleaned)


def _letter_only(text):
    """The choice letter (A-Z) a response names, when the choices are not listed separately (MathVerse)."""
    index = extract_letter(text, len(LETTERS))
    return None if index is None else LETTERS[index]


# ---------------------------------------------------------------------------------------------- aggregation


def aggregate(scores, groups=None):
    """Mean score overall and per group; `scores` and `groups` are parallel lists (groups may be None)."""
    out = {"score": float(np.mean(scores)) if scores else 0.0, "n": len(scores)}
    if groups is not None:
        per = OrderedDict()
        for score, group in zip(scores, groups):
            per.setdefault("unknown" if group in (None, "") else str(group), []).append(score)
        out["per_group"] = {g: {"score": float(np.mean(v)), "n": len(v)} for g, v in sorted(per.items())}
    return out


__all__ = [
    "ANSWER_TYPES",
    "FREE_FORM",
    "MULTI_CHOICE",
    "SampleScore",
    "aggregate",
    "image_letter_choice",
    "lcs_length",
    "nearest_option",
    "normalize_text",
    "numbers_match",
    "rouge_l",
    "score_demon",
    "score_math",
    "tfidf_cosine",
]
