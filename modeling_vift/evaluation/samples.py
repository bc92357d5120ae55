"""Evaluation samples, the load report of skipped records, and reading records from local files or the Hub.

A benchmark reader turns published records into `EvalSample`s: a user prompt with one `<image>` placeholder per
image (in order of appearance), the images (paths, PIL images or encoded bytes; opened only when generated), the
reference and what the scorer needs. A record that cannot be evaluated (missing image, unknown answer type, ...)
is not dropped silently: it is listed in `LoadResult.skipped` with its reason and reported.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field


IMAGE_PLACEHOLDER = "<image>"


@dataclass
class EvalSample:
    id: str
    benchmark: str
    prompt: str  # the user turn; one IMAGE_PLACEHOLDER per image, in order
    images: list = field(default_factory=list)
    reference: str | None = None
    question_type: str | None = None  # multi_choice / free_form (math), multi-choice / open-ended (DEMON)
    answer_type: str | None = None  # text / integer / float / list / number
    choices: list = field(default_factory=list)
    precision: float | None = None
    group: str | None = None  # breakdown key: MathVista task, MathVerse version, MathVision subject, DEMON task
    category: str | None = None  # DEMON category
    extra: dict = field(default_factory=dict)

    def scoring_fields(self):
        """The JSON-serialisable fields stored next to each prediction (everything but the prompt and images)."""
        data = asdict(self)
        data.pop("prompt")
        data.pop("images")
        data["num_images"] = len(self.images)
        return data


@dataclass
class LoadResult:
    benchmark: str
    samples: list
    skipped: list = field(default_factory=list)  # [{"id": ..., "reason": ...}]
    source: str = ""

    def skip(self, sample_id, reason):
        self.skipped.append({"id": str(sample_id), "reason": reason})

    def skip_counts(self):
        counts = {}
        for item in self.skipped:
            key = item["reason"].split(":", 1)[0]
            counts[key] = counts.get(key, 0) + 1
        return counts


class DataError(ValueError):
    """The data as a whole cannot be read (missing file, wrong format): raised before anything runs."""


# ---------------------------------------------------------------------------------------------- records


def read_records(path, split=None, config=None):
    """Reads the records of a benchmark as a list of dicts, plus a list of `(position, reason)` for unreadable lines.

    `path` is a `.json` file (a list of records, or a dict of records keyed by id, as MathVista's `testmini.json`),
    a `.jsonl` file, a `.parquet` / `.arrow` file, a folder saved with `datasets.save_to_disk`, or a dataset name on
    the Hub / a local dataset folder read with `datasets.load_dataset(path, config, split=split)`."""
    path = str(path)
    bad = []
    if os.path.isfile(path):
        lower = path.lower()
        if lower.endswith(".jsonl"):
            records = []
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        bad.append((f"line {number}", f"invalid JSON: {err.msg}"))
            return records, bad
        if lower.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path} is not valid JSON ({err}).") from None
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                return data["data"], bad
            if isinstance(data, dict):
                return [dict(value, _key=key) if isinstance(value, dict) else {"_key": key, "_value": value} for key, value in data.items()], bad
            if isinstance(data, list):
                return data, bad
            raise DataError(f"{path} holds a JSON {type(data).__name__}; expected a list of records or a dict of them.")
        if lower.endswith((".parquet", ".arrow")):
            import datasets

            kind = "parquet" if lower.endswith(".parquet") else "arrow"
            return list(datasets.load_dataset(kind, data_files=path, split="train")), bad
        raise DataError(f"Don't know how to read {path}: use a .json, .jsonl, .parquet or .arrow file.")
    import datasets

    saved = ("state.json", "dataset_dict.json")
    if os.path.isdir(path) and any(os.path.exists(os.path.join(path, name)) for name in saved):
        data = datasets.load_from_disk(path)
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise DataError(f"{path} holds the splits {list(data)}; choose one with split=...")
            data = data[split]
        return list(data), bad
    if os.path.isdir(path) or "/" in path:
        try:
            data = datasets.load_dataset(path, config, split=split)
        except Exception as err:  # a clear message instead of the loader's stack
            raise DataError(
                f"Could not load the dataset {path!r} (config={config!r}, split={split!r}): {type(err).__name__}: {err}"
            ) from err
        return list(data), bad
    raise DataError(f"{path!r} is neither a file, a folder nor a Hub dataset id (owner/name).")


# ---------------------------------------------------------------------------------------------- images


def resolve_image(value, roots):
    """Returns `(image, error)`: a PIL image, encoded bytes or an existing file path, or an error message."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, "missing image: the record names no image"
    try:
        from PIL import Image

        if isinstance(value, Image.Image):
            return value, None
    except ImportError:  # pragma: no cover - pillow is a dependency
        pass
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"], None
        value = value.get("path")
        if not value:
            return None, "missing image: empty image entry"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    value = str(value)
    candidates = [value] if os.path.isabs(value) else [os.path.join(root, value) for root in roots if root]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate, None
    return None, f"missing image: {value!r} not found (looked in {[str(r) for r in roots if r]})"


def open_image(image):
    """Opens a path / bytes / PIL image as a PIL image (loaded into memory)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray)):
        opened = Image.open(io.BytesIO(image))
    else:
        opened = Image.open(image)
    opened.load()
    return opened


__all__ = ["DataError", "EvalSample", "IMAGE_PLACEHOLDER", "LoadResult", "open_image", "read_records", "resolve_image"]
