"""The `official` protocol: each benchmark's own scorer re-implemented rule by rule, quirks included, so that a
number lands in the same table as the published ones.

Written from the rules of the public scorers (lupantech/MathVista `evaluation/`, ZrrSkywalker/MathVerse
`evaluation/`, mathllm/MATH-V `evaluation/`, DCDmllm/Cheetah `DEMON Benchmark/scripts/evaluate.py` and the `rouge`
package it calls); no code is taken from them. What each one does:

- MathVista: a response is first tried as-is (a choice text, an integer, a float); otherwise an LLM extracts the
  answer (`MathVistaLLMExtractor`; `mathvista_rule_extract` stands in for it without a model). The extraction is then
  normalised: multi-choice takes the first `(x)` letter, maps a letter to its choice text and any other text to the
  choice at the smallest edit distance (so a multi-choice answer always names a choice); integers are truncated
  (`int(float(x))`), floats rounded to the record's precision; the result must equal the answer string.
- MathVerse: an LLM extracts the answer and a second LLM call judges it against the standard answer (a letter is
  consistent with its option text; interval brackets, signs and values must match; units and formatting do not
  matter). `mathverse_rule_extract` / `mathverse_rule_judge` follow the examples the official prompts document.
- MATH-V: the answer is read from the end of the response (a trailing `A.`, "the answer is ...", `\\boxed{}`), cleaned
  of LaTeX decoration and units, and compared with the answer letter and with the answer's option text: equal
  strings, equal tuples, or equal values to 2 decimals after evaluating both as math (sympy here).
- DEMON: texts are normalised by the official punctuation rules; open-ended tasks score the `rouge` package's
  ROUGE-L F (sentences split on ".", unique words); multi-choice tasks pick the option with the highest TF-IDF cosine
  (scikit-learn's defaults: tokens of 2+ word characters, smooth idf, first option on a tie, exact match when no
  token survives); the image-choice tasks compare the first 7 characters and refuse answers naming several images.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from typing import Callable

import numpy as np

from .extraction import LETTERS, answer_segment, extract_letter, extract_number, find_numbers, math_value, parse_number
from .scoring import MULTI_CHOICE, SampleScore


PROTOCOLS = ("official", "strict")


def check_protocol(protocol):
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS} ('official': the benchmark's own scorer, for published "
                         f"tables; 'strict': vift's careful scorer), got {protocol!r}.")
    return protocol


# ============================================================================================== MathVista


def edit_distance(a, b):
    """Levenshtein distance between two strings (insertions, deletions, substitutions of one character)."""
    a, b = str(a), str(b)
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def mathvista_quick_extract(response, question_type, answer_type, choices):
    """The official shortcuts taken before the LLM is asked: an empty response extracts to "", a response equal to a
    choice is that choice, a response that parses as an integer / float is that number. `None` means "ask the LLM"."""
    if response == "":
        return ""
    if question_type == MULTI_CHOICE and response in (choices or []):
        return response
    if answer_type == "integer":
        try:
            return str(int(response))
        except (TypeError, ValueError):
            pass
    if answer_type == "float":
        try:
            return str(float(response))
        except (TypeError, ValueError):
            pass
    return None


def _number_text(value):
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def mathvista_rule_extract(response, question_type, answer_type, choices):
    """What the LLM extraction gives on the common forms: the letter a multi-choice response names (else the choice
    text it contains, else its stated answer), the number of a numeric response, `[a, b]` for a list."""
    quick = mathvista_quick_extract(response, question_type, answer_type, choices)
    if quick is not None:
        return quick
    if question_type == MULTI_CHOICE:
        index = extract_letter(response, min(len(choices or []), len(LETTERS)))
        if index is not None:
            return LETTERS[index]
        lowered = response.lower()
        named = [c for c in choices or [] if str(c).strip() and str(c).lower() in lowered]
        named = [c for c in named if not any(c != o and c.lower() in o.lower() for o in named)]
        if len(named) == 1:
            return named[0]
        return (answer_segment(response) or response).strip()
    if answer_type == "list":
        segment = answer_segment(response) or response
        bracket = re.findall(r"\[([^\[\]]*)\]", segment)
        numbers = find_numbers(bracket[-1]) if bracket else find_numbers(segment)
        return "[" + ", ".join(_number_text(v) for v in numbers) + "]" if numbers else ""
    if answer_type in ("integer", "float"):
        value = extract_number(response)
        return "" if value is None else _number_text(value)
    return (answer_segment(response) or response).strip()


def mathvista_normalize(extraction, choices, question_type, answer_type, precision):
    """The official normalisation of an extraction before it is compared with the answer string (see the module
    docstring); `None` when a number cannot be read."""
    if question_type == MULTI_CHOICE:
        extraction = extraction.strip() if isinstance(extraction, str) else str(extraction)
        letters = re.findall(r"\(([a-zA-Z])\)", extraction)
        if letters:
            extraction = letters[0].upper()
        options = [chr(ord("A") + i) for i in range(len(choices))]
        if extraction in options:
            return choices[options.index(extraction)]
        distances = [edit_distance(extraction, c) for c in choices]
        return choices[distances.index(min(distances))]
    if answer_type == "integer":
        try:
            return str(int(float(extraction)))
        except (TypeError, ValueError, OverflowError):
            return None
    if answer_type == "float":
        try:
            return str(round(float(extraction), int(precision)))
        except (TypeError, ValueError, OverflowError):
            return None
    if answer_type == "list":
        return str(extraction)
    return extraction


def score_mathvista_official(prediction, answer, question_type, answer_type, choices, precision, extracted=None):
    """One MathVista sample as the official scorer counts it. `extracted` is the LLM's extraction when one ran;
    otherwise the rule-based stand-in is used."""
    prediction = "" if prediction is None else str(prediction)
    choices = [str(c) for c in choices or []]
    if question_type == MULTI_CHOICE and not choices:
        return SampleScore(0.0, "unparsed")
    extraction = extracted if extracted is not None else mathvista_rule_extract(prediction, question_type, answer_type, choices)
    normalized = mathvista_normalize(extraction, choices, question_type, answer_type, precision)
    status = "empty" if not prediction.strip() else ("unparsed" if normalized is None else "ok")
    return SampleScore(float(normalized == str(answer)), status, normalized)


# ---------------------------------------------------------------------------------------------- LLM extraction

MATHVISTA_EXTRACTION_PROMPT = """Each example below shows a question, a model's response and the answer written in the form the question asks for. Write the extracted answer of the last example, nothing else.

Question: Which number is missing?
Model response: Counting along the sequence, the missing number is 14.
Extracted answer: 14

Question: What is the fraction of females facing the camera?
Model response: 0.6 of the females face the camera, six out of ten.
Extracted answer: 0.6

Question: How much money does Luca need to buy a sour apple candy and a butterscotch candy? (Unit: $)
Model response: He needs $1.45 for the two candies.
Extracted answer: 1.45

Question: Between which two years does the line graph saw its maximum peak?
Model response: The peak lies between 2007 and 2008.
Extracted answer: [2007, 2008]

Question: What fraction of the shape is blue?
Choices:
(A) 3/11
(B) 8/11
(C) 6/11
(D) 3/5
Model response: (B) 8/11 is correct.
Extracted answer: B"""


def mathvista_extraction_prompt(query, response):
    """The prompt the extractor model sees: the worked examples, then the sample's query and response."""
    return f"{MATHVISTA_EXTRACTION_PROMPT}\n\n{query}\n\nModel response: {response}\n\nExtracted answer: "


def openai_compatible_backend(model, base_url="https://api.openai.com/v1", api_key_env="OPENAI_API_KEY", timeout=60,
                              max_tokens=64):
    """`prompt -> text` over an OpenAI-compatible `/chat/completions` endpoint (plain HTTP, standard library), greedy.
    The key is read from the environment variable `api_key_env` (a local server may need none)."""
    import urllib.request

    url = base_url.rstrip("/") + "/chat/completions"

    def generate(prompt):
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                           "max_tokens": max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if os.environ.get(api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[api_key_env]}"
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            data = json.loads(reply.read().decode())
        try:
            return data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"{url} answered without choices[0].message.content: {str(data)[:200]}") from None

    return generate


def causal_lm_backend(model_name_or_path, max_new_tokens=32, **pipeline_kwargs):
    """`prompt -> text` with any local transformers causal LM (greedy)."""
    from transformers import pipeline

    generator = pipeline("text-generation", model=model_name_or_path, **pipeline_kwargs)

    def generate(prompt):
        out = generator(prompt, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False)
        return out[0]["generated_text"]

    return generate


class MathVistaLLMExtractor:
    """The official MathVista extraction step with a language model as extractor, cached on disk.

    `generate` is a `prompt -> text` callable (`openai_compatible_backend`, `causal_lm_backend` or your own). The
    official shortcuts run first and need no model. Every answer is appended to `cache_path` (JSONL, keyed by the
    prompt's hash and `model_id`) as soon as it arrives, so an interrupted scoring run resumes without asking again.
    A failed call is not cached and yields `None`: that sample falls back to the rule-based extraction."""

    def __init__(self, generate: Callable[[str], str], cache_path=None, model_id="extractor"):
        if not callable(generate):
            raise TypeError(f"MathVistaLLMExtractor needs a callable prompt -> text, got {type(generate).__name__}.")
        self.generate, self.cache_path, self.model_id = generate, cache_path, str(model_id)
        self.cache, self.failures = {}, []
        if cache_path and os.path.exists(cache_path):
            with open(cache_path, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut short by an interruption: asked again
                    self.cache[entry["key"]] = entry["extraction"]

    def _key(self, prompt):
        return hashlib.sha256(f"{self.model_id}\n{prompt}".encode()).hexdigest()

    def __call__(self, response, sample_fields):
        response = "" if response is None else str(response)
        quick = mathvista_quick_extract(response, sample_fields.get("question_type"), sample_fields.get("answer_type"),
                                        sample_fields.get("choices") or [])
        if quick is not None:
            return quick
        prompt = mathvista_extraction_prompt(sample_fields.get("query") or sample_fields.get("question") or "", response)
        key = self._key(prompt)
        if key in self.cache:
            return self.cache[key]
        try:
            extraction = str(self.generate(prompt)).strip()
        except Exception as err:  # network / model failure: reported, that sample uses the rules
            self.failures.append(f"{type(err).__name__}: {err}")
            return None
        extraction = re.sub(r"^\s*extracted answer\s*:\s*", "", extraction, flags=re.IGNORECASE).strip()
        self.cache[key] = extraction
        if self.cache_path:
            os.makedirs(os.path.dirname(os.path.abspath(self.cache_path)), exist_ok=True)
            with open(self.cache_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "extraction": extraction}, ensure_ascii=False) + "\n")
        return extraction


# ============================================================================================== MathVerse

_OPTION = re.compile(r"(?:^|(?<=[\s.]))\(?([A-H])\)?\s*[:：.．]\s*(.+?)(?=\s+\(?[A-H]\)?\s*[:：.．]\s|\n|$)", re.MULTILINE)


def parse_mathverse_choices(question):
    """Options written into a MathVerse question: `A:140°` on one line each, `Choices:\\nA. True`, or inline
    `A. x B. y`. Returns `[(letter, text)]` with consecutive letters from A, else []."""
    text = str(question or "")
    anchor = re.search(r"choices?\s*:?\s*\n", text, re.IGNORECASE)
    found = _OPTION.findall(text[anchor.end():] if anchor else text)
    options = []
    for letter, body in found:
        if letter == LETTERS[len(options)]:
            options.append((letter, body.strip()))
        elif options and letter == options[-1][0]:
            continue
    return options if len(options) >= 2 else []


def _strip_math(text):
    text = str(text)
    text = re.sub(r"\\[()\[\]]", "", text).replace("$", "")
    return text.strip().strip("'\"").strip()


def mathverse_rule_extract(response):
    """What the MathVerse extraction prompt's examples show: the stated answer when the response marks one; an
    option letter (`D. They give ...` -> `D`); else the block after the last lead-in line ending with `:`; a closing
    sentence ending in a number with a unit gives the number; a response that declines gives `null`."""
    response = str(response or "").strip()
    if not response:
        return "null"
    segment = answer_segment(response)
    if segment:
        return _strip_math(segment).rstrip(".")
    lines = [line.strip() for line in response.replace("\\n", "\n").split("\n")]
    lines = [line for line in lines if line]
    lead = max((i for i, line in enumerate(lines) if line.endswith(":")), default=None)
    block = lines[lead + 1:] if lead is not None and lead + 1 < len(lines) else lines[-1:]
    last = lines[-1]
    closing = re.search(r"\s(-?\d+(?:\.\d+)?)\s*(?:[a-zA-Z°%]+|\^\{?\\circ\}?)?\.?\s*$", last)
    if closing and " " in last.strip() and not last.rstrip().endswith(":"):
        block = [last] if lead is None or len(lines) - lead > 2 else block
    if len(block) == 1:
        line = block[0]
        letter = re.match(r"\(?([A-H])\)?(?:[.)]\s|\s*[:：])", line + " ")
        if letter:
            return letter.group(1)
        if lead is not None and line is not last or (lead is not None and not closing):
            return _strip_math(line).rstrip(".").rstrip('",').strip()
        if re.search(r"\b(?:cannot|can not|can't|unable|not enough information)\b", line, re.IGNORECASE):
            return "null"
        if closing and line is last:
            return closing.group(1)
        if "=" in line:
            return _strip_math(line.split(":")[-1]).rstrip(".")
        return _strip_math(line).rstrip(".")
    return "\n".join(block)


_UNITS = r"(?:units?|cm\^?2?|mm|km|m\^?[23]?|m|meters?|degrees?|°|\^\{?\\circ\}?|\\circ|sq\s*units?)"


def _canonical_answer(text):
    text = _strip_math(re.sub(r"^\s*extracted answer\s*:\s*", "", str(text), flags=re.IGNORECASE))
    text = re.sub(r"\\(?:text|mathrm)\{([^{}]*)\}", r"\1", text)
    text = text.replace("−", "-").replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac")
    text = re.sub(r"(?<=[\d}\s])" + _UNITS + r"\s*$", "", text.strip()).strip()
    return re.sub(r"\s+", "", text).lower().rstrip(".")


def mathverse_rule_judge(extraction, answer, question=""):
    """1 when the extraction is consistent with the standard answer (the judge prompt's rules), else 0: a letter
    answer accepts the letter or its option text; otherwise equal after removing math delimiters, units, spaces and
    case, or equal as numbers."""
    if extraction is None or str(extraction).strip().lower() in ("", "null", "none"):
        return 0
    got, want = _canonical_answer(extraction), _canonical_answer(answer)
    if got == want:
        return 1
    options = dict(parse_mathverse_choices(question))
    letter = str(answer).strip().strip("()")
    if letter in options:
        if got.strip("()") == letter.lower() or got == _canonical_answer(options[letter]):
            return 1
        return 0
    a, b = parse_number(got), parse_number(want)
    return int(a is not None and b is not None and abs(a - b) <= 1e-9 * max(1.0, abs(b)))


def score_mathverse_official(prediction, answer, question="", extracted=None):
    prediction = "" if prediction is None else str(prediction)
    if not prediction.strip():
        return SampleScore(0.0, "empty")
    extraction = extracted if extracted is not None else mathverse_rule_extract(prediction)
    status = "unparsed" if str(extraction).strip().lower() == "null" else "ok"
    return SampleScore(float(mathverse_rule_judge(extraction, answer, question)), status, extraction)


# ============================================================================================== MATH-V


def _is_float(text):
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def mathvision_extract(response):
    """The official MATH-V reading of a response (before `mathvision_clean`): a trailing ` C.` / ` (C).` or a leading
    `C\\n` gives the letter; a number after the last "is " is taken; without `\\boxed`, the text after the last
    "the final answer is" / "the answer is" / "the correct answer is" / "the answer should be" (either case), cut at
    the line end and at the first ". "; with several `\\boxed`, the last one."""
    answer = str(response or "").strip()
    for c in "ABCDE":
        if (answer.endswith(f" {c}.") or answer.endswith(f" ({c}).") or answer.startswith(f"{c}\n")
                or answer.startswith(f"({c})\n") or answer.startswith(f"({c}) {c}\n")):
            answer = c
    tail = answer.split("is ")[-1].rstrip(".")
    if _is_float(tail):
        answer = tail
    if "oxed{" not in answer:
        for flag in ("the final answer is", "the answer is", "the correct answer is", "the answer should be"):
            for variant in (flag, flag.replace("the", "The")):
                had = variant in answer
                answer = answer.split(variant)[-1].strip()
                if had:
                    answer = answer.split("\n")[0].split(". ")[0]
    elif answer.count("oxed{") > 1:
        answer = "\\boxed{" + answer.split("oxed{")[-1]
    answer = mathvision_clean(answer)
    for c in "abcde":
        answer = answer.replace(f"({c})", c).replace(f"{{{c}}}", c)
    return answer.rstrip(".").lstrip(":").strip()


def _braced_first_chars(text, command):
    """`\\sqrt2` -> `\\sqrt{2}`, `\\frac12` -> `\\frac{1}{2}` (one character arguments wrapped in braces)."""
    parts = text.split(command)
    out = parts[0]
    for part in parts[1:]:
        if command == "\\sqrt":
            out += command + (part if not part or part[0] == "{" else "{" + part[0] + "}" + part[1:])
        elif part and part[0] == "{":
            out += command + part
        elif len(part) < 2:
            return text
        elif part[1] != "{":
            out += command + "{" + part[0] + "}{" + part[1] + "}" + part[2:]
        else:
            out += command + "{" + part[0] + "}" + part[1:]
    return out


def _strip_latex(text):
    text = text.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    text = text.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "").replace("$", "")
    text = text.split("\\text{ ")[0].replace("\\%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    if len(text.split("=")) == 2:
        text = text.split("=")[-1]
    if len(text.split("\\approx")) == 2:
        text = text.split("\\approx")[-1]
    if "sqrt" in text:
        text = _braced_first_chars(text, "\\sqrt")
    text = text.replace(" ", "")
    if "sqrt" in text:
        text = _braced_first_chars(text, "\\frac")
    if text == "0.5":
        text = "\\frac{1}{2}"
    if len(text.split("/")) == 2:
        a, b = text.split("/")
        if re.fullmatch(r"-?\d+", a) and re.fullmatch(r"-?\d+", b) and text == f"{int(a)}/{int(b)}":
            text = f"\\frac{{{int(a)}}}{{{int(b)}}}"
    return text


def mathvision_clean(text):
    """The official MATH-V answer cleaning: lower-case; the greedy content of `oxed{...}` (to the last `}`), cut at an
    unmatched `}`; the value after the last `=` / `\\approx`; LaTeX decoration, degree signs and a few units removed;
    `0.5` written `\\frac{1}{2}`, `a/b` written `\\frac{a}{b}`."""
    s = str(text).lower().replace("{}", "")
    boxed = re.findall(r"oxed{(.*)}", s, flags=re.S)
    ans = boxed[-1] if boxed else s
    if ans.find("}") != -1 and (ans.find("{") == -1 or ans.find("}") < ans.find("{")):
        ans = ans.split("}")[0]
    ans = ans.split("=")[-1].split("\\approx")[-1]
    ans = ans.replace(" ", "").replace("\\,", "").replace("∞", "\\infty").replace("+\\infty", "\\infty")
    ans = ans.replace("\\\\", "\\").replace("\n", "").replace("\\text", "").replace("\\mbox", "")
    ans = ans.replace("bmatrix", "pmatrix").replace("\\left", "").replace("\\right", "").replace("^{\\circ}", "")
    ans = ans.replace("^\\circ", "").replace("{m}^3", "").replace("m^3", "").replace("{units}", "").replace("units", "")
    ans = ans.replace("{km}", "").replace("km", "")
    return _strip_latex(ans)


def _evaluate_tuple(text):
    parts = text[1:-1].split(",")
    if len(text) < 2 or len(parts) < 2 or (text[0], text[-1]) not in (("(", ")"), ("[", "]")):
        return text
    values = []
    for part in parts:
        if "infty" in part or part in ("a", "-a"):
            values.append(part)
            continue
        value = math_value(part)
        if value is None:
            return text
        values.append(str(round(value, 2)))
    return text[0] + ",".join(values) + text[-1]


def mathvision_equal(answer, reference):
    """The official MATH-V comparison: case-insensitive equal strings, equal tuples / lists after evaluating their
    elements to 2 decimals, or equal values to 2 decimals."""
    a, r = str(answer).lower(), str(reference).lower()
    if not a.replace(" ", "") or not r.replace(" ", ""):
        return False
    if a.strip() == r.strip():
        return True
    a, r = _evaluate_tuple(a), _evaluate_tuple(r)
    if a == r:
        return True
    va, vr = math_value(a), math_value(r)
    return va is not None and vr is not None and round(va, 2) == round(vr, 2)


def score_mathvision_official(prediction, answer, choices=None):
    prediction = "" if prediction is None else str(prediction)
    if not prediction.strip():
        return SampleScore(0.0, "empty")
    extracted = mathvision_extract(prediction)
    answer = str(answer)
    option_text = ""
    if choices:
        index = ord(answer.strip()[:1] or "@") - ord("A")
        option_text = str(choices[index]) if 0 <= index < len(choices) else ""
    correct = mathvision_equal(extracted, answer) or mathvision_equal(extracted, option_text)
    return SampleScore(float(correct), "ok" if extracted else "unparsed", extracted)


# ============================================================================================== DEMON

_DEMON_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")
IMAGE_CHOICE_TASKS = ("RecipeQA_VisualCloze", "RecipeQA_ImageCoherence", "COMICS_Panel")


def demon_normalize(text):
    """The official DEMON text processing: newlines/tabs to spaces; each listed punctuation mark deleted when the text
    has it next to a space (or holds a digit-comma-digit) and replaced by a space otherwise; periods not followed by a
    digit deleted; surrounding quotes stripped; lower-cased."""
    text = str(text).replace("\n", " ").replace("\t", " ").strip()
    original, out = text, text
    number_comma = _COMMA_IN_NUMBER.search(original) is not None
    for mark in _DEMON_PUNCT:
        out = out.replace(mark, "" if (mark + " " in original or " " + mark in original or number_comma) else " ")
    out = _PERIOD.sub("", out)
    return out.strip("'").strip('"').strip().lower()


def _lcs_words(reference, candidate):
    """The words of the LCS the `rouge` package reconstructs (its tie-breaking: up when the cell above is strictly
    larger, else left)."""
    n, m = len(reference), len(candidate)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if reference[i - 1] == candidate[j - 1] else max(table[i - 1][j], table[i][j - 1])
    words, i, j = [], n, m
    while i > 0 and j > 0:
        if reference[i - 1] == candidate[j - 1]:
            words.append(reference[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def rouge_l_package(hypothesis, reference):
    """ROUGE-L F as the `rouge` package's default `get_scores` computes it: both texts split into sentences on ".",
    each sentence's whitespace collapsed and split on single spaces; summary-level union LCS over unique words
    (a word counts once however often it repeats); F = 2PR / (P + R + 1e-8)."""
    hyp = [" ".join(s.split()) for s in str(hypothesis).split(".") if len(s) > 0]
    ref = [" ".join(s.split()) for s in str(reference).split(".") if len(s) > 0]
    if not hyp or not ref:
        raise ValueError("ROUGE needs a non-empty hypothesis and reference.")
    hyp_words = [s.split(" ") for s in hyp]
    m = len({w for s in ref for w in s.split(" ")})
    n = len({w for s in hyp_words for w in s})
    union = set()
    for sentence in ref:
        words = sentence.split(" ")
        for candidate in hyp_words:
            union |= set(_lcs_words(words, candidate))
    recall, precision = len(union) / m, len(union) / n
    return 2.0 * (precision * recall) / (precision + recall + 1e-8)


def sklearn_tfidf_similarities(query, documents):
    """Cosine similarities of `query` to `documents` with scikit-learn's `TfidfVectorizer` defaults (lower-case,
    tokens `\\b\\w\\w+\\b`, idf = ln((1+N)/(1+df)) + 1, L2 norm). Raises ValueError on an empty vocabulary, as
    scikit-learn does."""
    texts = [re.findall(r"(?u)\b\w\w+\b", t.lower()) for t in [query] + list(documents)]
    vocabulary = sorted({w for tokens in texts for w in tokens})
    if not vocabulary:
        raise ValueError("empty vocabulary; perhaps the documents only contain stop words")
    index = {w: i for i, w in enumerate(vocabulary)}
    counts = np.zeros((len(texts), len(vocabulary)))
    for row, tokens in enumerate(texts):
        for word, count in Counter(tokens).items():
            counts[row, index[word]] = count
    idf = np.log((1 + len(texts)) / (1 + (counts > 0).sum(axis=0))) + 1.0
    vectors = counts * idf
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return vectors[1:] @ vectors[0]


def is_image_choice_task(task):
    """The tasks the official script scores as image choices (matched by name, with or without a folder prefix such as
    `recipeqa-`)."""
    key = str(task or "").lower()
    return any(key == t.lower() or key.endswith("-" + t.lower()) for t in IMAGE_CHOICE_TASKS)


def score_demon_official(prediction, reference, question_type, choices=None, task=None):
    """One DEMON sample as the official script scores it (see the module docstring)."""
    pred, ref = demon_normalize(prediction or ""), demon_normalize(reference)
    if question_type == "open-ended":
        if not pred:
            return SampleScore(0.0, "empty")
        return SampleScore(float(rouge_l_package(pred, ref)), "ok")
    if is_image_choice_task(task):
        named = sum(c in pred for c in ("image a", "image b", "image c", "image d"))
        score = float(ref[:7] == pred[:7] and named <= 1)
        return SampleScore(score, "ok" if pred else "empty", pred[:7])
    options = [demon_normalize(c) for c in choices or []]
    if not options:
        return SampleScore(float(pred == ref), "ok" if pred else "empty", pred)
    try:
        similarities = sklearn_tfidf_similarities(pred, options)
        picked = options[int(np.argmax(similarities))]
    except ValueError:
        return SampleScore(float(pred == ref), "ok" if pred else "empty", pred)
    return SampleScore(float(picked == ref), "ok" if pred else "empty", picked)


__all__ = [
    "IMAGE_CHOICE_TASKS",
    "PROTOCOLS",
    "MathVistaLLMExtractor",
    "causal_lm_backend",
    "check_protocol",
    "demon_normalize",
    "edit_distance",
    "math_value",
    "mathverse_rule_extract",
    "mathverse_rule_judge",
    "mathvision_clean",
    "mathvision_equal",
    "mathvision_extract",
    "mathvista_normalize",
    "mathvista_quick_extract",
    "mathvista_rule_extract",
    "openai_compatible_backend",
    "parse_mathverse_choices",
    "rouge_l_package",
    "score_demon_official",
    "score_mathverse_official",
    "score_mathvision_official",
    "score_mathvista_official",
    "sklearn_tfidf_similarities",
]
