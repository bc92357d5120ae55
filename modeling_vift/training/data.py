"""Training data for ViFT: readers for the authors' LLaVA/Bunny JSON and TRL conversational datasets, YAML
mixtures, image loading with counted skips, and tokenisation with `ViFTProcessor`.

Not part of the remote-code bundle (it imports `datasets`, `yaml`, PIL).
"""

import hashlib
import io
import json
import os
from collections import Counter
from dataclasses import dataclass, fields

import yaml


IMAGE_PLACEHOLDER = "<image>"

# LLaVA/Bunny `from` values -> chat roles.
ROLE_MAP = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


class SampleError(ValueError):
    """A sample that cannot be used. `reason` is a short key under which skips are counted."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # picklable, so errors raised in `datasets.map` worker processes reach the caller
        return type(self), (self.reason, str(self))


def record_image_paths(record):
    """The image paths of an authors' record: `image` may be absent/None, a string, or a list of strings."""
    image = record.get("image")
    if image is None or image == "":
        return []
    if isinstance(image, str):
        return [image]
    if isinstance(image, (list, tuple)) and all(isinstance(p, str) and p for p in image):
        return list(image)
    raise SampleError(
        "bad_image_field",
        f"Record {record.get('id')!r}: `image` must be a path string or a list of path strings, got {image!r}.",
    )


def _text_to_content(text, placeholder):
    """Splits a LLaVA `value` at `<image>` placeholders into content items; the newline after a placeholder is
    dropped (the chat template renders an image item as `<image>` + newline)."""
    content = []
    pieces = text.split(placeholder)
    for i, piece in enumerate(pieces):
        if i > 0:
            content.append({"type": "image"})
            if piece.startswith("\n"):
                piece = piece[1:]
        if piece.strip():
            content.append({"type": "text", "text": piece})
    return content


def conversations_to_messages(record, placeholder=IMAGE_PLACEHOLDER):
    """Converts an authors' LLaVA/Bunny record (`{"id", "image"?, "conversations": [{"from", "value"}, ...]}`)
    to TRL conversational messages: `[{"role": "user"|"assistant"|"system", "content": [{"type": "image"} |
    {"type": "text", "text": str}, ...]}, ...]`, one image item per `<image>` placeholder, in order.

    Raises `SampleError` (a `ValueError` with a `reason` key) for an unknown `from` role, a conversation that
    does not end on an assistant turn, an empty turn, or a number of `<image>` placeholders that differs from the
    number of images in `image`.
    """
    record_id = record.get("id")
    conversations = record.get("conversations")
    if not isinstance(conversations, (list, tuple)) or not conversations:
        raise SampleError(
            "no_conversations",
            f"Record {record_id!r} has no `conversations` list (got {type(conversations).__name__}); expected "
            f'[{{"from": "human", "value": ...}}, {{"from": "gpt", "value": ...}}, ...].',
        )
    messages = []
    for turn_index, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise SampleError(
                "bad_turn",
                f"Record {record_id!r}, turn {turn_index}: expected a dict with `from` and `value`, got {turn!r:.200}.",
            )
        role = ROLE_MAP.get(str(turn["from"]).lower())
        if role is None:
            raise SampleError(
                "unknown_role",
                f"Record {record_id!r}, turn {turn_index}: unknown `from` role {turn['from']!r}; expected one of "
                f"{sorted(ROLE_MAP)}.",
            )
        value = turn["value"]
        if not isinstance(value, str):
            raise SampleError(
                "bad_turn",
                f"Record {record_id!r}, turn {turn_index}: `value` must be a string, got {type(value).__name__}.",
            )
        content = _text_to_content(value, placeholder)
        if not content or (role == "assistant" and not any(c["type"] == "text" for c in content)):
            raise SampleError(
                "empty_text",
                f"Record {record_id!r}, turn {turn_index} ({turn['from']}): the turn has no text; every assistant "
                f"turn needs text and every other turn needs text or an image.",
            )
        messages.append({"role": role, "content": content})
    check_sample_messages(messages, len(record_image_paths(record)), record_id)
    return messages


def check_sample_messages(messages, num_images, record_id=None, placeholder=IMAGE_PLACEHOLDER):
    """Checks a conversation in TRL's format: known roles, ends on a non-empty assistant turn, and as many image
    items (or `<image>` placeholders in string contents) as images. Raises `SampleError`."""
    if not messages:
        raise SampleError("no_conversations", f"Record {record_id!r} has no messages.")
    placeholders = 0
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise SampleError(
                "unknown_role",
                f"Record {record_id!r}, message {index}: unknown role {role!r}; expected system, user or assistant.",
            )
        content = message.get("content")
        if isinstance(content, str):
            placeholders += content.count(placeholder)
            has_text = bool(content.replace(placeholder, "").strip())
        elif isinstance(content, (list, tuple)):
            has_text = False
            for item in content:
                kind = item.get("type") if isinstance(item, dict) else None
                if kind == "image":
                    placeholders += 1
                elif kind == "text":
                    text = item.get("text")
                    if not isinstance(text, str):
                        raise SampleError(
                            "bad_turn", f"Record {record_id!r}, message {index}: a text item has no string `text`."
                        )
                    placeholders += text.count(placeholder)
                    has_text = has_text or bool(text.replace(placeholder, "").strip())
                else:
                    raise SampleError(
                        "bad_turn",
                        f"Record {record_id!r}, message {index}: content items must be {{'type': 'text', 'text': ...}} "
                        f"or {{'type': 'image'}}, got {item!r:.200}.",
                    )
        else:
            raise SampleError(
                "bad_turn",
                f"Record {record_id!r}, message {index}: `content` must be a string or a list of items, "
                f"got {type(content).__name__}.",
            )
        if role == "assistant" and not has_text:
            raise SampleError("empty_text", f"Record {record_id!r}, message {index}: the assistant turn has no text.")
        if role != "assistant" and not has_text and not placeholders:
            raise SampleError("empty_text", f"Record {record_id!r}, message {index}: the {role} turn is empty.")
    if messages[-1]["role"] != "assistant":
        raise SampleError(
            "ends_on_user",
            f"Record {record_id!r}: the conversation ends on a {messages[-1]['role']} turn; training needs it to end "
            f"on an assistant answer (drop the trailing turn or the record).",
        )
    if not any(m["role"] == "user" for m in messages):
        raise SampleError("no_user_turn", f"Record {record_id!r}: the conversation has no user turn.")
    if placeholders != num_images:
        kind = "image_without_placeholder" if num_images > placeholders else "placeholder_without_image"
        raise SampleError(
            kind,
            f"Record {record_id!r}: the conversation holds {placeholders} image placeholder(s) but the record has "
            f"{num_images} image(s); each image needs exactly one `<image>` placeholder (or {{'type': 'image'}} "
            f"item) where it belongs in the conversation.",
        )


# ----------------------------------------------------------------------------------------------------------------------
# Skip accounting
# ----------------------------------------------------------------------------------------------------------------------


class SkipReport:
    """Counts of samples left out (by source and reason) and of samples truncated, printed at the end of a run.

    Reasons: `unknown_role`, `ends_on_user`, `empty_text`, `placeholder_without_image`, `image_without_placeholder`,
    `missing_image`, `unreadable_image`, `too_long_image` (the sample's images do not fit in max_length),
    `too_long` (with `overlong="drop"`), `no_loss_tokens`, `too_many_images`, ...
    """

    def __init__(self, skipped=None, truncated=None, seen=None):
        self.skipped = Counter(skipped or {})
        self.truncated = Counter(truncated or {})
        self.seen = Counter(seen or {})

    def skip(self, source, reason, count=1):
        self.skipped[f"{source}/{reason}"] += count

    def merge(self, other):
        self.skipped.update(other.skipped)
        self.truncated.update(other.truncated)
        self.seen.update(other.seen)
        return self

    @property
    def total_skipped(self):
        return sum(self.skipped.values())

    def to_dict(self):
        return {"skipped": dict(self.skipped), "truncated": dict(self.truncated), "seen": dict(self.seen)}

    def format(self, title="ViFT data report"):
        lines = [f"{title}: {self.total_skipped} sample(s) skipped, {sum(self.truncated.values())} truncated."]
        for key, count in sorted(self.skipped.items()):
            source, reason = key.split("/", 1)
            seen = self.seen.get(source)
            share = f" ({count / seen:.2%} of {seen})" if seen else ""
            lines.append(f"  skipped  {source:<24} {reason:<28} {count}{share}")
        for source, count in sorted(self.truncated.items()):
            lines.append(f"  truncated {source:<23} {'(text cut at max_length)':<28} {count}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------------


class ImageLoadError(SampleError):
    """An image that cannot be used: `reason` is `missing_image` or `unreadable_image`; `path` is the file that
    failed (None for embedded bytes or a record without a reference)."""

    def __init__(self, reason, message, path=None):
        super().__init__(reason, message)
        self.path = path

    def __reduce__(self):
        return type(self), (self.reason, str(self), self.path)


def load_image(ref, image_folder=None):
    """Opens one image reference and decodes it fully: a path (relative to `image_folder`), a `datasets.Image`
    storage dict (`{"bytes", "path"}`), or a PIL image. Raises `ImageLoadError` when it is missing or unreadable."""
    from PIL import Image

    if isinstance(ref, Image.Image):
        return ref
    source = ref
    try:
        if isinstance(ref, dict):
            if ref.get("bytes"):
                source = "<embedded bytes>"
                image = Image.open(io.BytesIO(ref["bytes"]))
                image.load()
                return image
            ref = ref.get("path")
            source = ref
        if not ref:
            raise ImageLoadError("missing_image", "The record lists an image but holds neither its bytes nor a path.")
        path = ref if image_folder is None or os.path.isabs(ref) else os.path.join(image_folder, ref)
        source = path
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except ImageLoadError:
        raise
    except FileNotFoundError as error:
        raise ImageLoadError(
            "missing_image", f"Image {source!r} does not exist ({error.strerror}); check `image_folder` and the path.",
            path=None if source == "<embedded bytes>" else source,
        ) from None
    except Exception as error:  # PIL raises several types for broken files (UnidentifiedImageError, OSError, ...)
        raise ImageLoadError(
            "unreadable_image", f"Image {source!r} cannot be decoded: {type(error).__name__}: {error}",
            path=None if source == "<embedded bytes>" else source,
        ) from None


# ----------------------------------------------------------------------------------------------------------------------
# Sources and mixtures
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class SourceConfig:
    """One source of a mixture.

    `path`: a LLaVA/Bunny JSON (list) or JSONL file, a parquet/arrow file, a folder (`save_to_disk` output or data
    files), or a Hub dataset id. `image_folder`: where the relative image paths of LLaVA records (or of
    `datasets.Image` entries stored by path) live. Give at most one of `fraction` (share of this source's usable
    records to take; above 1 repeats it) and `weight` (share of the mixture's `num_samples`); neither means all.
    """

    name: str
    path: str
    image_folder: str | None = None
    split: str = "train"
    subset: str | None = None
    revision: str | None = None
    fraction: float | None = None
    weight: float | None = None

    def __post_init__(self):
        if self.fraction is not None and self.weight is not None:
            raise ValueError(f"Source {self.name!r}: give `fraction` or `weight`, not both.")
        for key in ("fraction", "weight"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"Source {self.name!r}: `{key}` must be a number >= 0, got {value!r}.")


@dataclass
class MixtureConfig:
    """Several sources mixed with fractions or weights and shuffled with `seed`.

    YAML (relative paths are resolved against the YAML file's folder)::

        seed: 42
        num_samples: 2000000        # only with weights
        sources:
          - {name: captions, path: second_stage_captions.json, image_folder: images, weight: 0.7}
          - {name: magpie, path: text_data_magpie.json, weight: 0.3}
    """

    sources: list
    seed: int | None = None
    num_samples: int | None = None

    @classmethod
    def from_value(cls, value, base_dir=None):
        """From a mapping (inline in a recipe YAML) or the path of a mixture YAML."""
        if isinstance(value, str):
            with open(value) as f:
                loaded = yaml.safe_load(f)
            return cls.from_value(loaded, base_dir=os.path.dirname(os.path.abspath(value)))
        if not isinstance(value, dict) or not isinstance(value.get("sources"), list) or not value["sources"]:
            raise ValueError(
                "A dataset mixture must be a mapping with a non-empty `sources` list, e.g. "
                "{'sources': [{'name': 'captions', 'path': 'captions.json', 'image_folder': 'images'}]}; "
                f"got {value!r:.300}."
            )
        unknown = set(value) - {"sources", "seed", "num_samples"}
        if unknown:
            raise ValueError(f"Unknown mixture key(s) {sorted(unknown)}: expected sources, seed, num_samples.")
        sources = []
        known = {f.name for f in fields(SourceConfig)}
        for i, entry in enumerate(value["sources"]):
            if not isinstance(entry, dict) or "path" not in entry:
                raise ValueError(f"Mixture source {i} must be a mapping with at least `path`, got {entry!r:.200}.")
            bad = set(entry) - known
            if bad:
                raise ValueError(f"Mixture source {i}: unknown key(s) {sorted(bad)}; expected some of {sorted(known)}.")
            entry = dict(entry)
            entry.setdefault("name", os.path.splitext(os.path.basename(str(entry["path"]).rstrip("/")))[0])
            if base_dir is not None:
                for key in ("path", "image_folder"):
                    local = entry.get(key)
                    if local and not os.path.isabs(local) and os.path.exists(os.path.join(base_dir, local)):
                        entry[key] = os.path.join(base_dir, local)
            sources.append(SourceConfig(**entry))
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"Mixture source names must be unique, got {names}.")
        weighted = [s.weight is not None for s in sources]
        if any(weighted) and not all(weighted):
            raise ValueError("Either every mixture source has a `weight` or none does (use `fraction` otherwise).")
        if any(weighted) and not value.get("num_samples"):
            raise ValueError("A mixture with weights needs `num_samples` (the total number of samples to draw).")
        if any(weighted) and sum(s.weight for s in sources) <= 0:
            raise ValueError("Mixture weights must not all be zero.")
        return cls(sources=sources, seed=value.get("seed"), num_samples=value.get("num_samples"))


_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def load_raw_dataset(config):
    """Loads a source as a memory-mapped `datasets.Dataset` (never as a Python list)."""
    import datasets

    path = config.path
    extension = os.path.splitext(path)[1].lower()
    if os.path.isfile(path):
        if extension not in _FILE_BUILDERS:
            raise ValueError(
                f"Source {config.name!r}: cannot read {path!r}; expected one of {sorted(_FILE_BUILDERS)} or a folder."
            )
        return datasets.load_dataset(_FILE_BUILDERS[extension], data_files=path, split="train")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "state.json")) or os.path.exists(os.path.join(path, "dataset_dict.json")):
            loaded = datasets.load_from_disk(path)
            return loaded[config.split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(path, name=config.subset, split=config.split)
    if os.path.isabs(path) or path.startswith("."):
        raise FileNotFoundError(f"Source {config.name!r}: {path!r} does not exist.")
    return datasets.load_dataset(path, name=config.subset, split=config.split, revision=config.revision)


class DataSource:
    """A loaded source: the raw records (images left undecoded) and how to read messages and images from them."""

    def __init__(self, config, dataset=None):
        import datasets

        self.config = config
        self.name = config.name
        dataset = load_raw_dataset(config) if dataset is None else dataset
        columns = set(dataset.column_names)
        if "conversations" in columns:
            self.format = "llava"
            self.image_column = "image" if "image" in columns else None
        elif "messages" in columns:
            self.format = "messages"
            self.image_column = "images" if "images" in columns else ("image" if "image" in columns else None)
        else:
            raise ValueError(
                f"Source {config.name!r} has columns {sorted(columns)}; expected the authors' LLaVA/Bunny format "
                f"(`conversations` + optional `image`) or TRL's conversational format (`messages` + optional `images`)."
            )
        feature = dataset.features.get(self.image_column) if self.image_column else None
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(self.image_column, datasets.Image(decode=False))
        elif isinstance(feature, datasets.List) and isinstance(feature.feature, datasets.Image) and feature.feature.decode:
            dataset = dataset.cast_column(self.image_column, datasets.List(datasets.Image(decode=False)))
        self.dataset = dataset
        self._images = dataset.select_columns([self.image_column]) if self.image_column else None

    def __len__(self):
        return len(self.dataset)

    def record_messages(self, record):
        """Messages and image references of one raw record; raises `SampleError` for a malformed record."""
        if self.format == "llava":
            messages = conversations_to_messages(record)
            refs = record_image_paths(record)
        else:
            messages = record["messages"]
            if not isinstance(messages, list):
                raise SampleError("bad_turn", f"Record {record.get('id')!r}: `messages` must be a list.")
            refs = self._refs(record.get(self.image_column) if self.image_column else None)
            check_sample_messages(messages, len(refs), record.get("id"))
        return messages, refs

    @staticmethod
    def _refs(value):
        if value is None:
            return []
        return list(value) if isinstance(value, (list, tuple)) else [value]

    def image_refs(self, row):
        if self._images is None:
            return []
        value = self._images[int(row)][self.image_column]
        return record_image_paths({"image": value}) if self.format == "llava" else self._refs(value)

    def load_images(self, row):
        """Decoded PIL images of record `row`, in order; raises `ImageLoadError`."""
        return [load_image(ref, self.config.image_folder) for ref in self.image_refs(row)]

    def image_exists(self, ref):
        if isinstance(ref, dict):
            if ref.get("bytes"):
                return True
            ref = ref.get("path")
        if not ref:
            return False
        folder = self.config.image_folder
        return os.path.exists(ref if folder is None or os.path.isabs(ref) else os.path.join(folder, ref))


# ----------------------------------------------------------------------------------------------------------------------
# Tokenisation
# ----------------------------------------------------------------------------------------------------------------------


class SampleTokenizer:
    """Turns one conversation into token ids and labels with a `ViFTProcessor`.

    `template="chat"`: the language model's chat template (through the processor); loss on assistant turns only.
    `template="plain"`: the authors' stage-1 layout, the image(s) then the caption then a newline; loss on the
    caption only. Ids are returned with one `<image>` id per image (the collator expands it to
    `processor.image_seq_length` tokens); `length` counts the expanded tokens.

    Longer than `max_length`: a sample whose images would be cut is dropped (`too_long_image`); otherwise its text is
    cut at `max_length` (`overlong="truncate"`, counted as truncated) or the sample is dropped (`overlong="drop"`).
    """

    def __init__(self, processor, template="chat", max_length=None, overlong="truncate"):
        if template not in ("chat", "plain"):
            raise ValueError(f"template must be 'chat' or 'plain', got {template!r}.")
        if overlong not in ("truncate", "drop"):
            raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}.")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.template = template
        self.max_length = max_length
        self.overlong = overlong
        self.image_token_id = processor.image_token_id
        self.image_seq_length = processor.image_seq_length

    def expanded_length(self, input_ids):
        n_images = sum(1 for i in input_ids if i == self.image_token_id)
        return len(input_ids) + n_images * (self.image_seq_length - 1)

    def __call__(self, messages, num_images, record_id=None):
        if self.template == "plain":
            input_ids, labels = self._plain(messages, num_images, record_id)
        else:
            input_ids, labels = self._chat(messages, record_id)
        found = sum(1 for i in input_ids if i == self.image_token_id)
        if found != num_images:
            raise SampleError(
                "image_token_mismatch",
                f"Record {record_id!r}: the rendered prompt holds {found} image token(s) for {num_images} image(s); "
                f"the chat template or the text itself must not add or drop `{self.processor.image_token}`.",
            )
        truncated = False
        length = self.expanded_length(input_ids)
        if self.max_length is not None and length > self.max_length:
            input_ids, labels = self._shorten(input_ids, labels, length, record_id)
            length, truncated = self.expanded_length(input_ids), True
        if not any(label != -100 for label in labels):
            raise SampleError(
                "no_loss_tokens", f"Record {record_id!r}: no assistant token is left to train on (after truncation)."
            )
        return {"input_ids": input_ids, "labels": labels, "length": length, "num_images": num_images,
                "truncated": truncated}

    def _shorten(self, input_ids, labels, length, record_id):
        expanded_end = 0
        last_image_end = 0
        for i in input_ids:
            expanded_end += self.image_seq_length if i == self.image_token_id else 1
            if i == self.image_token_id:
                last_image_end = expanded_end
        if last_image_end > self.max_length:
            raise SampleError(
                "too_long_image",
                f"Record {record_id!r} is {length} tokens long with its images, more than max_length={self.max_length}, "
                f"and cutting it would cut through an image: it is dropped (raise max_length to keep it).",
            )
        if self.overlong == "drop":
            raise SampleError(
                "too_long", f"Record {record_id!r} is {length} tokens long, more than max_length={self.max_length}."
            )
        keep = self.max_length - (length - len(input_ids))  # every image lies before the cut
        return input_ids[:keep], labels[:keep]

    def _render(self, messages, add_generation_prompt=False):
        return self.processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

    def _chat(self, messages, record_id):
        full = self._render(messages)
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render(messages[:index], add_generation_prompt=True) if index else ""
            through = self._render(messages[: index + 1])
            if not (full.startswith(through) and through.startswith(before)):
                raise SampleError(
                    "template_not_incremental",
                    f"Record {record_id!r}: the chat template renders earlier turns differently once later turns are "
                    f"added, so assistant tokens cannot be located; use a template that renders conversations "
                    f"incrementally.",
                )
            spans.append((len(before), len(through)))
        encoded = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = list(encoded["input_ids"])
        labels = [-100] * len(input_ids)
        span_index = 0
        for position, (start, _end) in enumerate(encoded["offset_mapping"]):
            while span_index < len(spans) and start >= spans[span_index][1]:
                span_index += 1
            if span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1]:
                if input_ids[position] != self.image_token_id:
                    labels[position] = input_ids[position]
        return input_ids, labels

    def _plain(self, messages, num_images, record_id):
        answers = [m for m in messages if m["role"] == "assistant"]
        if len(answers) != 1:
            raise SampleError(
                "plain_needs_one_caption",
                f"Record {record_id!r}: the plain (stage-1) template takes one caption per record, got "
                f"{len(answers)} assistant turns; use template='chat' for multi-turn data.",
            )
        caption = message_text(answers[0]).replace(self.processor.image_token, "").strip()
        prefix = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        prefix += [self.image_token_id] * num_images
        caption_ids = self.tokenizer(caption + "\n", add_special_tokens=False)["input_ids"]
        return prefix + list(caption_ids), [-100] * len(prefix) + list(caption_ids)


def message_text(message):
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(item.get("text") or "" for item in content if item.get("type") == "text")


def tokenize_source(source, sample_tokenizer, strict=False, check_image_files=True, num_proc=None):
    """Tokenises every record of `source` with `datasets.map` (cached, parallel with `num_proc`). The result has one
    row per raw record: `input_ids`, `labels` (int32, one `<image>` id per image), `length` (expanded), `num_images`,
    `truncated` and `skip` (the reason a record is unusable, "" when it is fine). With `strict=True` the first bad
    record raises."""
    import datasets

    if num_proc and num_proc > 1:
        # The Rust tokenizer's thread pool does not survive the fork of datasets' worker processes.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def tokenize_batch(batch):
        out = {"input_ids": [], "labels": [], "length": [], "num_images": [], "truncated": [], "skip": []}
        size = len(next(iter(batch.values())))
        for i in range(size):
            record = {key: values[i] for key, values in batch.items()}
            try:
                messages, refs = source.record_messages(record)
                if check_image_files:
                    for ref in refs:
                        if not source.image_exists(ref):
                            raise ImageLoadError(
                                "missing_image",
                                f"Record {record.get('id')!r}: image {ref if isinstance(ref, str) else ref.get('path')!r} "
                                f"does not exist (image_folder={source.config.image_folder!r}).",
                            )
                result = sample_tokenizer(messages, len(refs), record.get("id"))
                result["skip"] = ""
            except SampleError as error:
                if strict:
                    raise SampleError(error.reason, f"[source {source.name!r}] {error}") from None
                result = {"input_ids": [], "labels": [], "length": 0, "num_images": 0, "truncated": False,
                          "skip": error.reason}
            for key in out:
                out[key].append(result[key])
        return out

    features = datasets.Features(
        {
            "input_ids": datasets.List(datasets.Value("int32")),
            "labels": datasets.List(datasets.Value("int32")),
            "length": datasets.Value("int32"),
            "num_images": datasets.Value("int32"),
            "truncated": datasets.Value("bool"),
            "skip": datasets.Value("string"),
        }
    )
    processor = sample_tokenizer.processor
    fingerprint_parts = [
        source.dataset._fingerprint, TOKENIZATION_VERSION, sample_tokenizer.template, sample_tokenizer.max_length,
        sample_tokenizer.overlong, processor.image_seq_length, processor.image_token, processor.chat_template,
        json.dumps(processor.tokenizer.get_vocab(), sort_keys=True), strict, check_image_files,
        source.config.image_folder,
    ]
    fingerprint = hashlib.sha256(repr(fingerprint_parts).encode()).hexdigest()[:16]
    return source.dataset.map(
        tokenize_batch,
        batched=True,
        batch_size=256,
        remove_columns=source.dataset.column_names,
        features=features,
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        new_fingerprint=fingerprint,
        desc=f"Tokenising {source.name}",
    )


# Bump when the tokenisation output changes, so cached results are not reused.
TOKENIZATION_VERSION = "vift-tokenize-1"


class TrainingData:
    """A tokenised mixture: the sources, their tokenised tables, and the selected samples as numpy arrays
    (`source`, `row`, `length`, `num_images`), shuffled with the mixture's seed."""

    def __init__(self, sources, tokenized, source_ids, rows, lengths, num_images, report):
        self.sources = sources
        self.tokenized = tokenized
        self.source_ids = source_ids
        self.rows = rows
        self.lengths = lengths
        self.num_images = num_images
        self.report = report

    def __len__(self):
        return len(self.rows)


def build_training_data(
    mixture,
    processor,
    max_length=None,
    template="chat",
    overlong="truncate",
    strict=False,
    check_image_files=True,
    max_images_per_sample=None,
    num_proc=None,
    seed=0,
    log=None,
):
    """Loads, tokenises and mixes the sources of `mixture` (a `MixtureConfig`, a mapping or a YAML path).

    Unusable records are counted in the returned data's `report` (or raise with `strict=True`). Each source
    contributes its usable records times `fraction`, or `num_samples * weight / sum(weights)` of them; a share above
    the source's size repeats it. The result is shuffled with the mixture's `seed` (or `seed`)."""
    import numpy as np
    import pyarrow.compute as pc

    if not isinstance(mixture, MixtureConfig):
        mixture = MixtureConfig.from_value(mixture)
    seed = mixture.seed if mixture.seed is not None else seed
    rng = np.random.default_rng(seed)
    report = SkipReport()
    sample_tokenizer = SampleTokenizer(processor, template=template, max_length=max_length, overlong=overlong)
    sources, tokenized, parts = [], [], []
    total_weight = sum(s.weight for s in mixture.sources) if mixture.num_samples else None
    for source_id, config in enumerate(mixture.sources):
        source = DataSource(config)
        table = tokenize_source(source, sample_tokenizer, strict=strict, check_image_files=check_image_files,
                                num_proc=num_proc)
        arrow = table.select_columns(["length", "num_images", "truncated", "skip"]).with_format("arrow")[:]
        skip = arrow.column("skip")
        for entry in pc.value_counts(skip).to_pylist():
            if entry["values"]:
                report.skip(config.name, entry["values"], entry["counts"])
        usable = pc.equal(skip, "").to_numpy(zero_copy_only=False)
        num_images = arrow.column("num_images").to_numpy()
        if max_images_per_sample is not None:
            too_many = usable & (num_images > max_images_per_sample)
            if too_many.any():
                if strict:
                    raise SampleError(
                        "too_many_images",
                        f"[source {config.name!r}] a record holds more than {max_images_per_sample} images, the cap "
                        f"per packed row.",
                    )
                report.skip(config.name, "too_many_images", int(too_many.sum()))
                usable &= ~too_many
        report.seen[config.name] += len(table)
        truncated = int(pc.sum(pc.and_(arrow.column("truncated"), pc.equal(skip, ""))).as_py() or 0)
        if truncated:
            report.truncated[config.name] += truncated
        valid_rows = np.flatnonzero(usable)
        if total_weight is not None:
            count = int(round(mixture.num_samples * config.weight / total_weight))
        else:
            count = int(round(len(valid_rows) * (1.0 if config.fraction is None else config.fraction)))
        chosen = _draw(valid_rows, count, rng)
        lengths = arrow.column("length").to_numpy()
        parts.append((np.full(len(chosen), source_id, dtype=np.int32), chosen, lengths[chosen], num_images[chosen]))
        sources.append(source)
        tokenized.append(table.select_columns(["input_ids", "labels"]))
        if log is not None:
            log(f"source {config.name!r}: {len(table)} records, {len(valid_rows)} usable, {len(chosen)} drawn")
    source_ids, rows, lengths, num_images = (np.concatenate([p[i] for p in parts]) for i in range(4))
    order = rng.permutation(len(rows))
    if len(order) == 0:
        raise ValueError(f"The mixture yields no usable sample.\n{report.format()}")
    return TrainingData(sources, tokenized, source_ids[order], rows[order].astype(np.int64), lengths[order],
                        num_images[order], report)


def _draw(rows, count, rng):
    """`count` of `rows` without replacement, repeating the whole set when `count` exceeds it."""
    import numpy as np

    if count <= 0 or len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    repeats, remainder = divmod(count, len(rows))
    pieces = [rows] * repeats + [rng.choice(rows, size=remainder, replace=False)]
    return np.concatenate(pieces).astype(np.int64)


__all__ = [
    "DataSource", "ImageLoadError", "MixtureConfig", "SampleError", "SampleTokenizer", "SkipReport", "SourceConfig",
    "TrainingData", "build_training_data", "check_sample_messages", "conversations_to_messages", "load_image",
    "record_image_paths", "tokenize_source",
]
