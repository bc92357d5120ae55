"""Rule-based answer extraction for the math benchmarks, and a pluggable (never required) LLM-judge extractor.

Extraction turns a free-form model response into the value the benchmark scores:
- a choice: the letter the response names (`(B)`, `Answer: B`, `B.`), else the one choice whose text the response
  contains, else (numeric choices) the choice equal to the response's number;
- a number: the content of the last `\\boxed{...}`, else the text after the last "answer is"/"answer:", else the
  whole response; within it the last number, fraction (`3/4`, `\\frac{3}{4}`) or thousands-separated number;
- a list of numbers (MathVista `list` answers), or a short text answer.

Every function returns `None` when nothing can be read: the scorer gives such a response 0 and lists it.
"""

from __future__ import annotations

import math
import re
import string
from fractions import Fraction
from typing import Callable, Protocol


LETTERS = string.ascii_uppercase

_BOXED = re.compile(r"\\boxed\s*\{")
_ANCHOR = re.compile(r"(?:final\s+answer|answer)\s*(?:is|:|=)?\s*[:：]?", re.IGNORECASE)
_LATEX_FRAC = re.compile(r"(-?)\\[dt]?frac\s*\{\s*(-?\d+(?:\.\d+)?)\s*\}\s*\{\s*(-?\d+(?:\.\d+)?)\s*\}")
# a choice letter: "(B)", or "B" followed by the end, a newline or punctuation (not "A circle")
_LETTER = r"(?:\(([A-Z])\)|\b([A-Z])(?=\s*(?:$|[.:,;)\n])))"
_NUMBER = re.compile(
    r"(?<![\w.])(-?\d+(?:\.\d+)?\s*/\s*-?\d+(?:\.\d+)?"  # a fraction a/b
    r"|-?\d{1,3}(?:,\d{3})+(?:\.\d+)?"  # 1,234,567.8
    r"|-?\d+(?:\.\d+)?"  # 12 or 12.5
    r"|-?\.\d+)"  # .5
)


# ---------------------------------------------------------------------------------------------- segments


def _boxed_contents(text):
    """Contents of every `\\boxed{...}` (balanced braces), in order."""
    out = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    out.append(text[start:i])
                    break
    return out


def answer_segment(response):
    """The part of a response that states the answer: the last `\\boxed{}` content, else the rest of the line after
    the last "answer is" / "answer:", else `None`."""
    boxed = _boxed_contents(response)
    if boxed:
        return boxed[-1].strip()
    anchors = list(_ANCHOR.finditer(response))
    if anchors:
        rest = response[anchors[-1].end():].strip()
        line = rest.split("\n", 1)[0].strip()
        if line:
            return line
    return None


# ---------------------------------------------------------------------------------------------- numbers


def parse_number(text):
    """Parses one number written as an integer, a decimal, `1,234`, a fraction `a/b` or `\\frac{a}{b}` (with an
    optional `%`, `$` or trailing unit ignored). Returns a float, or `None` when `text` is not such a number."""
    if text is None:
        return None
    text = normalize_minus(text).strip().strip("$").strip()
    match = _LATEX_FRAC.fullmatch(text)
    if match:
        return _fraction_value(match.group(2), match.group(3), negative=match.group(1) == "-")
    match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*/\s*(-?\d+(?:\.\d+)?)\s*", text)
    if match:
        return _fraction_value(match.group(1), match.group(2))
    text = text.rstrip("%").strip()
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):
        text = text.replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def _fraction_value(numerator, denominator, negative=False):
    try:
        value = float(Fraction(numerator) / Fraction(denominator))
    except (ZeroDivisionError, ValueError):
        return None
    return -value if negative else value


NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty".split())}


def normalize_minus(text):
    """Unicode minus signs and dashes used as minus (`−4`, `–4`) written as `-`."""
    return re.sub(r"[\u2212\u2013\u2012\ufe63\uff0d](?=\s*\d)", "-", str(text))


def find_numbers(text):
    """Every number in `text`, in order of appearance (LaTeX fractions first converted to `a/b`)."""
    text = normalize_minus(text)
    text = _LATEX_FRAC.sub(lambda m: f"{m.group(1)}{m.group(2)}/{m.group(3)}", text)
    values = []
    for match in _NUMBER.finditer(text):
        value = parse_number(match.group(1).replace(" ", ""))
        if value is not None:
            values.append(value)
    return values


def extract_number(response):
    """The number a response gives as its answer (see the module docstring), or `None`."""
    if not response or not response.strip():
        return None
    segment = answer_segment(response)
    if segment is not None:
        numbers = find_numbers(segment)
        if numbers:
            return numbers[0] if len(numbers) == 1 else numbers[-1]
    first_line = response.strip().split("\n", 1)[0].strip()
    lead = re.fullmatch(r"\$?(-?[\d.,/]+)\s*(?:[a-zA-Z°%]{0,12})\.?", normalize_minus(first_line))
    if lead and "\n" in response.strip():  # "5\n\nExplanation: ... 3 ...": the answer comes first
        value = parse_number(lead.group(1))
        if value is not None:
            return value
    numbers = find_numbers(response)
    if numbers:
        return numbers[-1]
    words = [NUMBER_WORDS[w] for w in re.findall(r"[a-z]+", (segment or response).lower()) if w in NUMBER_WORDS]
    return float(words[-1]) if words else None


def extract_number_list(response):
    """The list of numbers a response gives (`[1, 2, 3]`, `1, 2 and 3`), or `None`."""
    if not response or not response.strip():
        return None
    segment = answer_segment(response)
    for text in ([segment] if segment else []) + [response]:
        bracket = re.findall(r"\[([^\[\]]*)\]", text)
        if bracket:
            numbers = find_numbers(bracket[-1])
            if numbers:
                return numbers
    numbers = find_numbers(segment or response)
    return numbers or None


_SYMBOLIC = re.compile(r"\\sqrt|\\pi|\\frac\s*\{[^{}]*[^\d{}.\s-][^{}]*\}|√|π|\^")


def is_symbolic(text):
    """Whether an answer is written symbolically (a root, pi, a power, a fraction of expressions)."""
    return bool(_SYMBOLIC.search(str(text or "")))


def _latex_to_sympy_text(text):
    """A LaTeX expression rewritten for sympy's parser (fractions, roots, powers, pi, products); raises ValueError
    when something other than arithmetic is left."""
    s = text.replace("\\cdot", "*").replace("√", "\\sqrt").replace("\\times", "*").replace("\\pi", " pi ").replace("π", " pi ")
    s = s.replace("\\infty", " oo ").replace("{", "(").replace("}", ")").replace("^", "**")
    for _ in range(10):  # \frac(a)(b) -> ((a)/(b)), innermost first
        new = re.sub(r"\\frac\s*(\((?:[^()]|\([^()]*\))*\))\s*(\((?:[^()]|\([^()]*\))*\))", r"(\1/\2)", s)
        new = re.sub(r"\\sqrt\s*\[([^\]]+)\]\s*(\((?:[^()]|\([^()]*\))*\))", r"root(\2,\1)", new)
        new = re.sub(r"\\sqrt\s*(\((?:[^()]|\([^()]*\))*\))", r"sqrt\1", new)
        if new == s:
            break
        s = new
    if "\\" in s or re.search(r"[a-df-z]|e[a-z]", re.sub(r"pi|oo|sqrt|root", "", s)):
        raise ValueError(f"not arithmetic: {text!r}")
    return s


def math_value(text):
    """The numeric value of a LaTeX / plain arithmetic expression (sympy), or None."""
    import sympy
    from sympy.parsing.sympy_parser import implicit_multiplication_application, parse_expr, standard_transformations

    try:
        expression = parse_expr(_latex_to_sympy_text(str(text)), local_dict={"e": sympy.E, "pi": sympy.pi},
                                transformations=standard_transformations + (implicit_multiplication_application,),
                                evaluate=True)
        value = complex(sympy.N(expression))
    except Exception:  # anything sympy cannot read or evaluate is "not a number", as in the official scorer
        return None
    if value.imag != 0 or math.isnan(value.real) or math.isinf(value.real):
        return None
    return value.real



# ---------------------------------------------------------------------------------------------- choices


def normalize_choice_text(text):
    """Lower-cased text with punctuation removed and whitespace collapsed (used to compare choice texts)."""
    text = normalize_minus(text).lower()
    text = re.sub(r"[^\w\s.+\-]", " ", text)
    text = re.sub(r"(?<![\w])[+\-](?![\d\w])|(?<=\w)-(?=\w)", " ", text)  # signs kept only before a term
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)
    return " ".join(text.split())


def extract_letter(response, num_choices):
    """Index of the choice letter (A, B, ... for `num_choices` choices) a response names, or `None`.

    Order of the rules: a bare letter (`B`, `(b)`, `B.`); the letter that starts the stated answer (after "answer
    is", or in `\\boxed{}`); the last letter after "answer"/"option"/"choice"; a leading `B.` / `(B)`; the only
    parenthesised letter. A capital that starts a word ("A circle") is not a letter."""
    if not response or not response.strip() or num_choices < 1:
        return None
    valid = LETTERS[:num_choices]
    text = response.strip()

    def letter_index(letter):
        letter = (letter or "").upper()
        return valid.index(letter) if letter and letter in valid else None

    match = re.fullmatch(r"\(?\s*([A-Za-z])\s*\)?[.:)]?", text)
    if match and letter_index(match.group(1)) is not None:
        return letter_index(match.group(1))
    segment = answer_segment(text)
    if segment:
        segment = re.sub(r"\\(?:text|mathrm|textbf|mathbf)\s*\{([^{}]*)\}", r"\1", segment).strip()
        match = re.match(_LETTER, segment) or re.match(r"\(?([a-z])\)?(?=\s*(?:$|[.:,;)\n]))", segment)
        if match and letter_index(match.group(1) or match.group(2)) is not None:
            return letter_index(match.group(1) or match.group(2))
    named = re.findall(r"(?i:\b(?:option|choice)\s+)\(?([A-Z])\)?(?![\w])|\(?\b([A-Z])\)?\s+is\s+(?:the\s+)?correct", text)
    named = [a or b for a, b in named if (a or b) in valid]
    if named:
        return letter_index(named[-1])
    anchored = [a or b for a, b in re.findall(r"(?i:answer|option|choice)\s*(?:is|:)?\s*:?\s*" + _LETTER, text)]
    anchored = [a for a in anchored if a in valid]
    if anchored:
        return letter_index(anchored[-1])
    match = re.match(r"\(?([A-Z])(?:[).](?:\s|$)|\s*[:：])", text)
    if match and letter_index(match.group(1)) is not None:
        return letter_index(match.group(1))
    parenthesised = {p for p in re.findall(r"\(([A-Z])\)", text) if p in valid}
    if len(parenthesised) == 1:
        return letter_index(parenthesised.pop())
    return None


def extract_choice(response, choices):
    """Index of the choice a response picks among `choices` (labelled A, B, C, ... in order), or `None`.

    First the letter rules of `extract_letter`; then the one choice text the response (or its stated answer) equals
    or contains as whole words; then, for numeric choices, the choice equal to the response's number."""
    if not response or not response.strip() or not choices:
        return None
    index = extract_letter(response, min(len(choices), len(LETTERS)))
    if index is not None:
        return index
    text = response.strip()
    segment = answer_segment(text)

    normalized = normalize_choice_text(segment or text)
    normalized_choices = [normalize_choice_text(c) for c in choices]
    for candidate in (normalized, normalize_choice_text(text)):
        if candidate in normalized_choices and normalized_choices.count(candidate) == 1:
            return normalized_choices.index(candidate)
    # a choice text counts only where the answer is stated (or in the closing line), not in the explanation
    padded = f" {normalize_choice_text(segment or text.strip().split(chr(10))[-1])} "
    found = [i for i, c in enumerate(normalized_choices) if c and f" {c} " in padded]
    # drop choices contained in a longer matched choice ("2" inside "2 cm", "red" inside "dark red")
    found = [i for i in found if not any(j != i and f" {normalized_choices[i]} " in f" {normalized_choices[j]} " for j in found)]
    if len(found) == 1:
        return found[0]

    values = [parse_number(c) for c in choices]
    if all(v is not None for v in values):
        number = extract_number(text)
        if number is not None:
            hits = [i for i, v in enumerate(values) if abs(v - number) <= 1e-9 * max(1.0, abs(v))]
            if len(hits) == 1:
                return hits[0]
    return None


# ---------------------------------------------------------------------------------------------- pluggable


class AnswerExtractor(Protocol):
    """Anything that maps `(response, sample_fields)` to an answer string the rule-based scorer can read, or `None`.

    `sample_fields` holds `question`, `question_type`, `answer_type`, `choices`, `precision`, `unit`. The default is
    the rule-based scorer itself (no extractor); an LLM judge is one optional implementation."""

    def __call__(self, response: str, sample_fields: dict) -> str | None: ...


DEFAULT_JUDGE_TEMPLATE = (
    "Read a model's response to a math question and write only its final answer, nothing else.\n"
    "If the question has choices, write the letter of the chosen choice. If the response gives no answer, write NONE.\n\n"
    "Question: {question}\n{choices_block}Response: {response}\n\nFinal answer:"
)


class LLMJudgeExtractor:
    """Extracts answers with a language model: `generate` is any callable `prompt -> text` (a transformers
    text-generation pipeline wrapped in a lambda, an API client, ...). Never required: the evaluation runs without
    it, and a judge that returns nothing (or "NONE") leaves the response to the rule-based extraction."""

    def __init__(self, generate: Callable[[str], str], template: str = DEFAULT_JUDGE_TEMPLATE):
        if not callable(generate):
            raise TypeError(f"LLMJudgeExtractor needs a callable prompt -> text, got {type(generate).__name__}.")
        for field in ("{question}", "{response}", "{choices_block}"):
            if field not in template:
                raise ValueError(f"The judge template must contain {field}.")
        self.generate = generate
        self.template = template

    def __call__(self, response, sample_fields):
        if not response or not response.strip():
            return None
        choices = sample_fields.get("choices") or []
        choices_block = "".join(f"({LETTERS[i]}) {c}\n" for i, c in enumerate(choices[: len(LETTERS)]))
        prompt = self.template.format(
            question=sample_fields.get("question", ""),
            choices_block=f"Choices:\n{choices_block}" if choices_block else "",
            response=response,
        )
        answer = self.generate(prompt)
        if answer is None:
            return None
        answer = str(answer).strip()
        return None if not answer or answer.upper() == "NONE" else answer

    @classmethod
    def from_pretrained(cls, model_name_or_path, max_new_tokens=32, **pipeline_kwargs):
        """A judge backed by a local or Hub text-generation model (greedy decoding)."""
        from transformers import pipeline

        generator = pipeline("text-generation", model=model_name_or_path, **pipeline_kwargs)

        def generate(prompt):
            out = generator(prompt, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False)
            return out[0]["generated_text"]

        return cls(generate)


__all__ = [
    "AnswerExtractor",
    "LLMJudgeExtractor",
    "answer_segment",
    "extract_choice",
    "extract_letter",
    "extract_number",
    "extract_number_list",
    "find_numbers",
    "is_symbolic",
    "math_value",
    "normalize_minus",
    "normalize_choice_text",
    "parse_number",
]
