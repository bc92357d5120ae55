"""Benchmark readers and query builders: MathVista, MathVerse, MathVision, DEMON and LLaVA-Bench-style open-ended
questions, each read in its published format (see `load_benchmark`).

Published fields used:
- MathVista (testmini/test): `pid`, `question`, `image` / `decoded_image`, `choices`, `unit`, `precision`, `answer`,
  `question_type` (`multi_choice` / `free_form`), `answer_type` (`text` / `integer` / `float` / `list`),
  `metadata` (`task`, `category`, ...), `query` (the published prompt with its hint).
- MathVerse (testmini): `sample_index`, `problem_index`, `problem_version`, `question`, `image`, `answer`,
  `question_type` (`multi-choice` / `free-form`), `metadata`, `query_wo`, `query_cot`.
- MathVision: `id`, `question` (may hold `<image1>` tags), `options` (empty for free-form), `image` /
  `decoded_image`, `answer`, `solution`, `level`, `subject`.
- LLaVA-Bench-style: `question_id`, `image`, `text` or `question`, `category`, optional reference
  (`gpt_answer` / `answer`).
- DEMON: see `demon.py`.
"""

from __future__ import annotations

import json
import os
import re

from .extraction import LETTERS, parse_number
from .official import parse_mathverse_choices
from .samples import IMAGE_PLACEHOLDER, DataError, EvalSample, LoadResult, read_records, resolve_image
from .scoring import FREE_FORM, MULTI_CHOICE


MATHVISTA_ANSWER_TYPES = ("text", "integer", "float", "list")
_IMAGE_TAG = re.compile(r"<image\d*>")


def _clean(text):
    """Removes image tags from benchmark text (MathVision's `<image1>`; a literal `<image>` would be read as a
    placeholder)."""
    return _IMAGE_TAG.sub("", str(text or "")).strip()


def _choices_block(choices):
    return "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))


def math_query(question, question_type, answer_type=None, choices=None, precision=None, unit=None):
    """The prompt built when a record has no published query: the question, its choices and an answer-format hint."""
    text = f"Question: {_clean(question)}"
    if unit:
        text += f" (unit: {unit})"
    if choices:
        text += f"\nChoices:\n{_choices_block(choices)}"
    if question_type == MULTI_CHOICE:
        hint = "Answer with the letter of the correct choice."
    elif answer_type == "integer":
        hint = "Answer with an integer."
    elif answer_type == "float":
        digits = int(precision) if precision is not None else 1
        hint = f"Answer with a number with {digits} decimal place{'s' if digits != 1 else ''}."
    elif answer_type == "list":
        hint = "Answer with a list of numbers, e.g. [1, 2, 3]."
    elif answer_type == "number":
        hint = "Answer with a number or a short expression."
    else:
        hint = "Answer with a word or a short phrase."
    return f"{text}\n{hint}"


def image_prompt(query, num_images=1):
    """The user turn: the image placeholder(s) first, then the query (the LLaVA layout)."""
    return IMAGE_PLACEHOLDER * num_images + ("\n" if num_images else "") + query


def _precision(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if value != value else value


def _metadata(record):
    meta = record.get("metadata")
    return meta if isinstance(meta, dict) else {}


# ---------------------------------------------------------------------------------------------- readers


def read_query_file(data_path):
    """MathVista's published prompts when they live apart from the records: the GitHub copy keeps them in
    `data/query.json` (`{pid: query}`) next to `testmini.json`. Returns {} when there is no such file."""
    base = str(data_path) if os.path.isdir(str(data_path)) else os.path.dirname(os.path.abspath(str(data_path)))
    for path in (os.path.join(base, "query.json"), os.path.join(base, "data", "query.json")):
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                queries = json.load(f)
            if not isinstance(queries, dict):
                raise DataError(f"{path} should map each pid to its query, got a {type(queries).__name__}.")
            return {str(k): v for k, v in queries.items()}
    return {}


def read_mathvista(record, result, roots, prompt_style="dataset", query_field="query", queries=None, protocol="strict"):
    sample_id = record.get("pid", record.get("_key"))
    question_type = record.get("question_type")
    if question_type not in (MULTI_CHOICE, FREE_FORM):
        return result.skip(sample_id, f"unknown question_type: {question_type!r} (expected multi_choice or free_form)")
    answer_type = record.get("answer_type") or ("text" if question_type == MULTI_CHOICE else None)
    if answer_type not in MATHVISTA_ANSWER_TYPES:
        return result.skip(sample_id, f"unknown answer_type: {answer_type!r} (expected one of {MATHVISTA_ANSWER_TYPES})")
    if record.get("answer") in (None, ""):
        return result.skip(sample_id, "missing answer: the record has no reference answer")
    choices = [str(c) for c in (record.get("choices") or [])]
    if question_type == MULTI_CHOICE and not choices:
        return result.skip(sample_id, "missing choices: a multi_choice record without choices")
    image, error = resolve_image(record.get("decoded_image") or record.get("image"), roots)
    if error:
        return result.skip(sample_id, error)
    precision = _precision(record.get("precision"))
    query = (record.get(query_field) or (queries or {}).get(str(sample_id))) if prompt_style == "dataset" else None
    if not query and protocol == "official" and prompt_style == "dataset":
        return result.skip(sample_id, "missing official query: the record has no `query` and no query.json lists its "
                                      "pid (put the GitHub copy's data/query.json next to testmini.json, use the Hub "
                                      "dataset, or prompt_style=built)")
    if not query:
        query = math_query(record.get("question"), question_type, answer_type, choices, precision, record.get("unit"))
    meta = _metadata(record)
    return EvalSample(
        id=str(sample_id), benchmark="mathvista", prompt=image_prompt(_clean(query)), images=[image],
        reference=str(record["answer"]), question_type=question_type, answer_type=answer_type, choices=choices,
        precision=precision, group=meta.get("task") or meta.get("category"),
        extra={"question": record.get("question"), "unit": record.get("unit"), "category": meta.get("category"),
               "query": query},
    )


def read_mathverse(record, result, roots, prompt_style="dataset", query_field="query_wo", **_):
    sample_id = record.get("sample_index", record.get("_key"))
    raw_type = str(record.get("question_type", "")).replace("-", "_")
    if raw_type not in (MULTI_CHOICE, FREE_FORM):
        return result.skip(sample_id, f"unknown question_type: {record.get('question_type')!r} (expected multi-choice or free-form)")
    answer = record.get("answer")
    if answer in (None, ""):
        return result.skip(sample_id, "missing answer: the record has no reference answer")
    version = record.get("problem_version")
    images = []
    if str(version).lower() != "text only" or record.get("image"):
        image, error = resolve_image(record.get("image"), roots)
        if error:
            return result.skip(sample_id, error)
        images = [image]
    query = record.get(query_field) if prompt_style == "dataset" else None
    if not query:
        query = math_query(record.get("question"), raw_type, "number" if raw_type == FREE_FORM else None)
    # the options are written into the question (`A:140°`, `Choices:\nA. True`): the scorer gets them
    choices = [text for _, text in parse_mathverse_choices(record.get("question"))] if raw_type == MULTI_CHOICE else []
    return EvalSample(
        id=str(sample_id), benchmark="mathverse", prompt=image_prompt(_clean(query), len(images)), images=images,
        reference=str(answer), question_type=raw_type, answer_type=None if raw_type == MULTI_CHOICE else "number",
        choices=choices,
        group=version, extra={"question": record.get("question"), "problem_index": record.get("problem_index")},
    )


def read_mathvision(record, result, roots, prompt_style="dataset", query_field=None, **_):
    sample_id = record.get("id", record.get("_key"))
    options = [str(o) for o in (record.get("options") or [])]
    answer = record.get("answer")
    if answer in (None, ""):
        return result.skip(sample_id, "missing answer: the record has no reference answer")
    question_type = MULTI_CHOICE if options else FREE_FORM
    if options and str(answer).strip() not in LETTERS[: len(options)]:
        return result.skip(sample_id, f"unknown answer: {answer!r} is not one of the letters of its {len(options)} options")
    image, error = resolve_image(record.get("decoded_image") or record.get("image"), roots)
    if error:
        return result.skip(sample_id, error)
    query = (record.get(query_field) if query_field and prompt_style == "dataset" else None) or math_query(
        record.get("question"), question_type, "number", options
    )
    return EvalSample(
        id=str(sample_id), benchmark="mathvision", prompt=image_prompt(_clean(query)), images=[image],
        reference=str(answer).strip(), question_type=question_type,
        answer_type=None if options else ("number" if parse_number(answer) is not None else "text"), choices=options,
        group=record.get("subject"), extra={"question": record.get("question"), "level": record.get("level")},
    )


def read_open_ended(record, result, roots, prompt_style="dataset", query_field=None, **_):
    sample_id = record.get("question_id", record.get("id", record.get("_key")))
    question = record.get(query_field) if query_field else None
    question = question or record.get("text") or record.get("question") or record.get("prompt")
    if not question:
        return result.skip(sample_id, "missing question: the record has no text/question field")
    image, error = resolve_image(record.get("image"), roots)
    if error:
        return result.skip(sample_id, error)
    reference = record.get("gpt_answer") or record.get("answer")
    return EvalSample(
        id=str(sample_id), benchmark="open_ended", prompt=image_prompt(_clean(question)), images=[image],
        reference=None if reference is None else str(reference), group=record.get("category"),
        extra={"question": question, "image_id": record.get("image_id") or (record.get("image") if isinstance(record.get("image"), str) else None)},
    )


READERS = {
    "mathvista": (read_mathvista, "query"),
    "mathverse": (read_mathverse, "query_wo"),
    "mathvision": (read_mathvision, None),
    "open_ended": (read_open_ended, None),
}
BENCHMARKS = ("mathvista", "mathverse", "mathvision", "demon", "open_ended")
ALIASES = {"llava_bench": "open_ended", "llava-bench": "open_ended", "math_vista": "mathvista", "math_verse": "mathverse",
           "math_vision": "mathvision", "math-vision": "mathvision", "mathv": "mathvision"}


def canonical_benchmark(name):
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}: choose one of {list(BENCHMARKS)} (or the alias llava_bench).")
    return key


def _looks_like_hub_id(path):
    return (not os.path.isabs(path) and not path.startswith(".") and path.count("/") == 1
            and not path.lower().endswith((".json", ".jsonl", ".parquet", ".arrow")))


def load_benchmark(name, data_path, split=None, config=None, image_root=None, prompt_style="dataset",
                   query_field=None, max_samples=None, exclude_ids=None, sample_ids=None, protocol="strict"):
    """Reads a benchmark into a `LoadResult`: the evaluable samples in file order, and every skipped record with
    its reason. `image_root` is where relative image paths live (default: the data file's folder); `exclude_ids`
    drops ids (e.g. the validation ids a fusion sweep used); `sample_ids` keeps only these ids; `max_samples` keeps
    the first N evaluable samples. Under `protocol="official"` MathVista needs the published query (the official hint
    prompt): a record without one is skipped with its reason."""
    name = canonical_benchmark(name)
    if prompt_style not in ("dataset", "built"):
        raise ValueError(f"prompt_style must be 'dataset' (the published query when there is one) or 'built', got {prompt_style!r}.")
    if data_path is None or (not os.path.exists(str(data_path)) and not _looks_like_hub_id(str(data_path))):
        raise DataError(f"{name}: data_path {data_path!r} does not exist (give a local file/folder or a Hub dataset id owner/name).")
    if name == "demon":
        from .demon import load_demon

        result = load_demon(data_path, image_root=image_root)
    else:
        reader, default_field = READERS[name]
        records, bad = read_records(data_path, split=split, config=config)
        base = str(data_path) if os.path.isdir(str(data_path)) else os.path.dirname(os.path.abspath(str(data_path)))
        roots = [r for r in (image_root, base, os.path.join(base, "images")) if r]
        queries = read_query_file(data_path) if name == "mathvista" and os.path.exists(str(data_path)) else {}
        result = LoadResult(benchmark=name, samples=[], source=str(data_path))
        for position, reason in bad:
            result.skip(position, reason)
        for record in records:
            if not isinstance(record, dict):
                result.skip(f"#{len(result.samples) + len(result.skipped)}", f"invalid record: expected an object, got {type(record).__name__}")
                continue
            sample = reader(record, result, roots, prompt_style=prompt_style, query_field=query_field or default_field,
                            queries=queries, protocol=protocol)
            if sample is not None:
                result.samples.append(sample)
    return _filter(result, max_samples=max_samples, exclude_ids=exclude_ids, sample_ids=sample_ids)


def _filter(result, max_samples=None, exclude_ids=None, sample_ids=None):
    seen, kept = set(), []
    for sample in result.samples:
        if sample.id in seen:
            result.skip(sample.id, "duplicate id: an earlier record has the same id")
            continue
        seen.add(sample.id)
        kept.append(sample)
    if exclude_ids:
        exclude = {str(i) for i in exclude_ids}
        kept = [s for s in kept if s.id not in exclude]
    if sample_ids is not None:
        wanted = {str(i) for i in sample_ids}
        kept = [s for s in kept if s.id in wanted]
    if max_samples is not None:
        kept = kept[: int(max_samples)]
    result.samples = kept
    if not kept and not result.skipped:
        raise DataError(f"{result.benchmark}: {result.source} holds no records.")
    return result


__all__ = ["BENCHMARKS", "canonical_benchmark", "image_prompt", "load_benchmark", "math_query"]
