"""DEMON (Li et al., ICLR 2024) reader: demonstrative instructions with interleaved images.

A DEMON task file is a JSON object `{"metadata": {"dataset", "split", "num_sample", "task_instruction": [10
templates], "question_type": "open-ended" | "multi-choice" | ""}, "data": [{"sample_id", "task_instruction_id",
"task_instance": {"context": "...{image#1}...{table#2}...", "images_path": [...], "choice_list": [...]},
"response"}]}`; the release lays tasks out as `<category>/<task>/core/core.json` with the images in
`<category>/<task>/core/images/`, and the official scripts (DCDmllm/Cheetah) read a task by that folder path.

The rules, as the official inference and evaluation scripts read the data (re-implemented, no code taken):
- Task and category come from the folders: the task is the folder that holds `core/` (or the task file), the
  category its parent folder. `metadata["dataset"]` is not used for either: it can differ from the folder (MultiModalQA
  says `MMQA`). A file outside that layout takes its task name from `metadata["dataset"]` and its category from the
  known task list; a task whose category cannot be found is skipped, record by record, with the reason.
- The prompt is the task instruction (template `task_instruction_id`) followed by the context and, when the record
  has a `choice_list`, the suffix `Choice list:['a', 'b']. Your answer is:`.
- `{image#k}` and `{table#k}` (MultiModalQA and MMCoQA give tables as images) share one numbering: each becomes the
  processor's `<image>` placeholder and the k-th entry of `images_path` is passed at that position, so the model sees
  the images interleaved with the text in the published order (the official code fills the slots in `images_path`
  order, which is the same where placeholders appear in order, as in the release's examples). Placeholders must
  name exactly images 1..n.
- `question_type` "" (ALFRED) is not refused: a record with choices is read as multi-choice, one without as
  open-ended (ROUGE-L), and `extra["question_type_inferred"]` says so. (The official `evaluate.py` prints "Dataset not
  supported" for it and scores nothing.)
- The choices scored against are the record's `choice_list`, else the `Choice List:[...]` written in the context,
  read as a Python list or, when its quotes are not escaped (COMICS_Dialogue: `'for pete ' s sake ! '`), split at
  the quote-comma-quote separators. A list that cannot be read, or a multi-choice answer that is not one of the
  choices (compared after the official normalisation; the image-choice tasks answer "Image B" and are not checked),
  is a counted skip with the reason.
"""

from __future__ import annotations

import ast
import json
import os
import re

from .official import demon_normalize, is_image_choice_task
from .samples import IMAGE_PLACEHOLDER, EvalSample, LoadResult, resolve_image


CATEGORIES = (
    "Multi-Modal Dialogue",
    "Visual Storytelling",
    "Visual Relation Inference",
    "Multi-Modal Cloze",
    "Knowledge Grounded QA",
    "Text-Rich Images QA",
    "Multi-Image Reasoning",
)

# Task -> category, as the DEMON release lays its folders out (DEMON-Core and DEMON-Full).
TASK_CATEGORIES = {
    "MMCoQA": "Multi-Modal Dialogue",
    "ALFRED": "Multi-Modal Dialogue",
    "AESOP": "Visual Storytelling",
    "DiDeMoSV": "Visual Storytelling",
    "FlintstonesSV": "Visual Storytelling",
    "PororoSV": "Visual Storytelling",
    "VIST": "Visual Storytelling",
    "Spot-the-Diff": "Visual Relation Inference",
    "Birds-to-Words": "Visual Relation Inference",
    "CLEVR-Change": "Visual Relation Inference",
    "IEdit": "Visual Relation Inference",
    "RecipeQA_TextCloze": "Multi-Modal Cloze",
    "RecipeQA_VisualCloze": "Multi-Modal Cloze",
    "COMICS_Dialogue": "Multi-Modal Cloze",
    "COMICS_Panel": "Multi-Modal Cloze",
    "MultiModalQA": "Knowledge Grounded QA",
    "WebQA": "Knowledge Grounded QA",
    "TQA": "Knowledge Grounded QA",
    "ManyModalQA": "Knowledge Grounded QA",
    "OCR-VQA": "Text-Rich Images QA",
    "SlideVQA": "Text-Rich Images QA",
    "DocVQA": "Text-Rich Images QA",
    "Fashion200K": "Multi-Image Reasoning",
    "MIT-States_PropertyCoherence": "Multi-Image Reasoning",
    "MIT-States_StateCoherence": "Multi-Image Reasoning",
    "NLVR2": "Multi-Image Reasoning",
    "VISION": "Multi-Image Reasoning",
    "RecipeQA_ImageCoherence": "Multi-Image Reasoning",
    "VizWiz": "Multi-Image Reasoning",
    "nuScenes": "Multi-Image Reasoning",
    "Gibson": "Multi-Image Reasoning",
}

QUESTION_TYPES = ("open-ended", "multi-choice")
PLACEHOLDER = re.compile(r"\{(?:image|table)#(\d+)\}")
SPLIT_FOLDERS = ("core", "full")
_CHOICE_LIST = re.compile(r"Choice List\s*:\s*\[", re.IGNORECASE)
_LIST_END = re.compile(r"""['"]\s*\]""")
_SEPARATOR = re.compile(r"""['"]\s*,\s*['"]""")
_IMAGE_TAG = re.compile(r"<image\d*>")


def _key(text):
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


_CATEGORY_KEYS = {_key(c): c for c in CATEGORIES}
_TASK_KEYS = {_key(t): c for t, c in TASK_CATEGORIES.items()}


def task_category(task):
    """The DEMON category of a known task name (also when it carries a prefix, e.g. `recipeqa-RecipeQA_VisualCloze`),
    else None."""
    key = _key(task)
    if not key:
        return None
    if key in _TASK_KEYS:
        return _TASK_KEYS[key]
    for known, category in sorted(_TASK_KEYS.items(), key=lambda kv: -len(kv[0])):
        if key.endswith(known):
            return category
    return None


def task_identity(file, metadata=None):
    """`(task, category)` of a task file as the official scripts find it: the task is the folder holding `core/`
    (or holding the file when there is no split folder), the category that folder's parent. Outside that layout the
    task is `metadata["dataset"]` (else the file name) and the category comes from the known task list or
    `metadata["category"]`; the category is None when none of these names one of the 7."""
    metadata = metadata or {}
    folder = os.path.dirname(os.path.abspath(file))
    split = str(metadata.get("split") or "").lower()
    in_split_folder = os.path.basename(folder).lower() in SPLIT_FOLDERS + ((split,) if split else ())
    task_folder = os.path.dirname(folder) if in_split_folder else folder
    parent = _CATEGORY_KEYS.get(_key(os.path.basename(os.path.dirname(task_folder))))
    if parent or in_split_folder:
        task = os.path.basename(task_folder)
    else:
        task = str(metadata.get("dataset") or "").strip() or os.path.splitext(os.path.basename(file))[0]
    category = parent or task_category(task) or task_category(metadata.get("dataset") or "")
    if category is None and metadata.get("category"):
        category = _CATEGORY_KEYS.get(_key(metadata["category"]))
    return task, category


def parse_choice_list(value):
    """The options of a choice list: a list as stored in `choice_list`, or the text of a context holding
    `Choice List:[...]`. Returns `(choices, error)`: `(None, None)` when a context has no choice list, `error` when
    the list is there but cannot be read. A written list is read as a Python literal; when its quotes are not escaped
    (`['ow ! ', 'for pete ' s sake ! ']`) it is split at the quote-comma-quote separators instead."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value], None
    if value is None:
        return None, None
    text = str(value)
    start = _CHOICE_LIST.search(text)
    if start is None:
        if text.lstrip().startswith("["):  # a choice_list stored as the text of a list
            return _read_list(text, text.index("["))
        return None, None
    return _read_list(text, start.end() - 1)


def _read_list(text, open_bracket):
    ends = list(_LIST_END.finditer(text, open_bracket))
    for end in ends:  # the shortest span that is a Python list of strings
        try:
            value = ast.literal_eval(text[open_bracket:end.end()])
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value, None
    snippet = text[open_bracket:open_bracket + 80]
    body = text[open_bracket + 1:ends[0].start() + 1].strip() if ends else ""
    if len(body) < 2 or body[0] not in "'\"":
        return None, f"unparsable choice list: expected quoted options such as ['a', 'b'], got {snippet!r}"
    return [part for part in _SEPARATOR.split(body[1:-1])], None


def map_placeholders(text, num_images):
    """Replaces `{image#k}` and `{table#k}` with `<image>`; returns `(text, image_indices, error)` where
    `image_indices` are the 0-based `images_path` entries in order of appearance, or `error` says why the text and
    the image list disagree (placeholders must name exactly images 1..num_images)."""
    ks = [int(k) for k in PLACEHOLDER.findall(text)]
    if sorted(set(ks)) != list(range(1, num_images + 1)):
        return None, None, (
            f"image placeholder mismatch: the context names {len(set(ks))} image(s) {sorted(set(ks))} but images_path "
            f"lists {num_images}"
        )
    return PLACEHOLDER.sub(IMAGE_PLACEHOLDER, _IMAGE_TAG.sub("", text)), [k - 1 for k in ks], None


def choice_suffix(choices):
    """The suffix the official inference appends to a record with a `choice_list`."""
    return "Choice list:['" + "', '".join(str(c) for c in choices) + "']. Your answer is:"


def _task_files(path):
    if os.path.isfile(path):
        return [path]
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        files.extend(os.path.join(root, n) for n in sorted(names) if n.endswith(".json"))
    return files


def load_demon(path, image_root=None):
    """Reads one DEMON task file or every task file under a folder into a `LoadResult` (benchmark `"demon"`)."""
    path = str(path)
    result = LoadResult(benchmark="demon", samples=[], source=path)
    for file in _task_files(path):
        try:
            with open(file, encoding="utf-8") as f:
                task = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            result.skip(file, f"unreadable task file: {err}")
            continue
        if not (isinstance(task, dict) and isinstance(task.get("metadata"), dict) and isinstance(task.get("data"), list)):
            result.skip(file, "not a DEMON task file: expected an object with 'metadata' and 'data'")
            continue
        _read_task(task, file, image_root, result)
    return result


def _read_task(task, file, image_root, result):
    meta = task["metadata"]
    name, category = task_identity(file, meta)
    question_type = meta.get("question_type")
    instructions = meta.get("task_instruction") or []
    if isinstance(instructions, str):
        instructions = [instructions]
    base = os.path.dirname(os.path.abspath(file))
    roots = [os.path.join(base, "images"), base]
    if image_root:
        roots += [os.path.join(image_root, name), os.path.join(image_root, name, "images"), image_root]
    for record in task["data"]:
        sample_id = f"{name}/{record.get('sample_id') if isinstance(record, dict) else '?'}"
        if category is None:
            result.skip(sample_id, (
                f"unknown category: task {name!r} ({file}) is neither in a DEMON category folder nor a known DEMON task; "
                f"lay it out as <category>/<task>/core/core.json with one of the categories {CATEGORIES}"))
            continue
        if not isinstance(record, dict):
            result.skip(sample_id, f"invalid record: expected an object, got {type(record).__name__}")
            continue
        sample = _read_record(record, sample_id, name, category, question_type, instructions, roots, result)
        if sample is not None:
            result.samples.append(sample)


def _read_record(record, sample_id, name, category, question_type, instructions, roots, result):
    instance = record.get("task_instance") or {}
    context = instance.get("context")
    images_path = instance.get("images_path") or []
    if question_type not in QUESTION_TYPES + ("", None):
        return result.skip(sample_id, f"unknown question_type: {question_type!r} (expected one of {QUESTION_TYPES} or empty)")
    if not isinstance(context, str):
        return result.skip(sample_id, "missing context: task_instance has no context")
    if record.get("response") in (None, ""):
        return result.skip(sample_id, "missing answer: the record has no response")
    instruction_id = record.get("task_instruction_id", 0)
    if not instructions or not isinstance(instruction_id, int) or not 0 <= instruction_id < len(instructions):
        return result.skip(sample_id, f"bad task_instruction_id: {instruction_id!r} for {len(instructions)} instruction templates")
    has_list = "choice_list" in instance
    choices, error = parse_choice_list(instance["choice_list"] if has_list else context)
    if error and (has_list or question_type != "open-ended"):
        return result.skip(sample_id, error)
    prompt = str(instructions[instruction_id]) + context + (choice_suffix(choices or []) if has_list else "")
    text, order, error = map_placeholders(prompt, len(images_path))
    if error:
        return result.skip(sample_id, error)
    resolved = []
    for entry in images_path:
        image, error = resolve_image(entry, roots)
        if error:
            return result.skip(sample_id, error)
        resolved.append(image)
    reference = str(record["response"])
    choices = [PLACEHOLDER.sub("", str(c)).strip().rstrip(":").strip() for c in choices or []]
    inferred = question_type in ("", None)
    if inferred:
        question_type = "multi-choice" if choices else "open-ended"
    if question_type == "multi-choice" and choices and not is_image_choice_task(name):
        if demon_normalize(reference) not in {demon_normalize(c) for c in choices}:
            return result.skip(sample_id, f"answer not among the choices: {reference!r} is not one of {choices}")
    return EvalSample(
        id=sample_id, benchmark="demon", prompt=text, images=[resolved[i] for i in order], reference=reference,
        question_type=question_type, choices=choices, group=name, category=category,
        extra={"task": name, "sample_id": record.get("sample_id"), "question_type_inferred": inferred},
    )


__all__ = [
    "CATEGORIES",
    "TASK_CATEGORIES",
    "choice_suffix",
    "load_demon",
    "map_placeholders",
    "parse_choice_list",
    "task_category",
    "task_identity",
]
