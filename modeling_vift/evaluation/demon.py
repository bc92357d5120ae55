"""DEMON (Li et al., ICLR 2024) reader: demonstrative instructions with interleaved images.

A DEMON task file is a JSON object `{"metadata": {"dataset", "split", "num_sample", "task_instruction": [10
templates], "question_type": "open-ended" | "multi-choice"}, "data": [{"sample_id", "task_instruction_id",
"task_instance": {"context": "...{image#1}...{image#2}...", "images_path": [...], "choice_list": [...]},
"response"}]}`; the release lays tasks out as `<category>/<task>/.../core.json`.

Each `{image#k}` becomes the processor's `<image>` placeholder and the k-th entry of `images_path` is passed at that
position, so the model sees the images interleaved with the text in the published order. The prompt is the task
instruction (template `task_instruction_id`) followed by the instance context.
"""

from __future__ import annotations

import ast
import json
import os
import re

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
PLACEHOLDER = re.compile(r"\{image#(\d+)\}")
_CHOICE_LIST = re.compile(r"Choice List\s*:\s*(\[.*?\])", re.DOTALL)


def _key(text):
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


_CATEGORY_KEYS = {_key(c): c for c in CATEGORIES}
_TASK_KEYS = {_key(t): c for t, c in TASK_CATEGORIES.items()}


def task_category(task, path=None, metadata=None):
    """The DEMON category of a task: `metadata["category"]`, else a folder of `path` named after a category, else the
    known task list (also when the task name carries a prefix, e.g. `recipeqa-RecipeQA_VisualCloze`), else None."""
    if metadata and metadata.get("category"):
        return _CATEGORY_KEYS.get(_key(metadata["category"]), str(metadata["category"]))
    if path:
        for part in os.path.normpath(os.path.abspath(path)).split(os.sep):
            if _key(part) in _CATEGORY_KEYS:
                return _CATEGORY_KEYS[_key(part)]
    key = _key(task)
    if key in _TASK_KEYS:
        return _TASK_KEYS[key]
    for known, category in sorted(_TASK_KEYS.items(), key=lambda kv: -len(kv[0])):
        if key.endswith(known):
            return category
    return None


def parse_choice_list(context):
    """The options written into a context as `Choice List:['a', 'b']`, or None."""
    match = _CHOICE_LIST.search(context or "")
    if not match:
        return None
    try:
        value = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return None
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else None


def map_placeholders(context, num_images):
    """Replaces `{image#k}` with `<image>`; returns `(text, image_indices, error)` where `image_indices` are the
    0-based `images_path` entries in order of appearance, or `error` says why the context and the image list
    disagree (placeholders must name exactly images 1..num_images)."""
    ks = [int(k) for k in PLACEHOLDER.findall(context)]
    if sorted(set(ks)) != list(range(1, num_images + 1)):
        return None, None, (
            f"image placeholder mismatch: the context names {len(set(ks))} image(s) {sorted(set(ks))} but images_path "
            f"lists {num_images}"
        )
    text = re.sub(r"<image\d*>", "", context)
    return PLACEHOLDER.sub(IMAGE_PLACEHOLDER, text), [k - 1 for k in ks], None


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
    name = str(meta.get("dataset") or os.path.basename(os.path.dirname(file)))
    category = task_category(name, file, meta)
    question_type = meta.get("question_type")
    instructions = meta.get("task_instruction") or []
    if isinstance(instructions, str):
        instructions = [instructions]
    base = os.path.dirname(os.path.abspath(file))
    roots = [base, os.path.join(base, "images")]
    if image_root:
        roots += [os.path.join(image_root, name), os.path.join(image_root, name, "images"), image_root]
    for record in task["data"]:
        sample_id = f"{name}/{record.get('sample_id')}"
        if question_type not in QUESTION_TYPES:
            result.skip(sample_id, f"unknown question_type: {question_type!r} (expected one of {QUESTION_TYPES})")
            continue
        instance = record.get("task_instance") or {}
        context = instance.get("context")
        images_path = instance.get("images_path") or []
        if not isinstance(context, str):
            result.skip(sample_id, "missing context: task_instance has no context")
            continue
        if record.get("response") in (None, ""):
            result.skip(sample_id, "missing answer: the record has no response")
            continue
        instruction_id = record.get("task_instruction_id", 0)
        if not instructions or not isinstance(instruction_id, int) or not 0 <= instruction_id < len(instructions):
            result.skip(sample_id, f"bad task_instruction_id: {instruction_id!r} for {len(instructions)} instruction templates")
            continue
        text, order, error = map_placeholders(context, len(images_path))
        if error:
            result.skip(sample_id, error)
            continue
        resolved = []
        for entry in images_path:
            image, error = resolve_image(entry, roots)
            if error:
                break
            resolved.append(image)
        if error:
            result.skip(sample_id, error)
            continue
        choices = instance.get("choice_list") or parse_choice_list(context) or []
        choices = [PLACEHOLDER.sub("", str(c)).strip().rstrip(":").strip() for c in choices]
        instruction = re.sub(r"<image\d*>", "", str(instructions[instruction_id]))
        result.samples.append(EvalSample(
            id=sample_id, benchmark="demon", prompt=instruction + text, images=[resolved[i] for i in order],
            reference=str(record["response"]), question_type=question_type, choices=choices, group=name,
            category=category, extra={"task": name, "sample_id": record.get("sample_id")},
        ))


__all__ = ["CATEGORIES", "TASK_CATEGORIES", "load_demon", "map_placeholders", "parse_choice_list", "task_category"]
