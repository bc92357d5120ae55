"""Converting the ViFT authors' training data into a Hub dataset, and publishing it (`python -m hub.push_dataset`).

Input: the authors' conversation JSON files (one JSON list per file, or JSON Lines) and the image folder their
`image` paths are relative to. Output: one dataset config per source, sharded Parquet files
`<config>/train-XXXXX-of-YYYYY.parquet` with the columns shared with the training code (modeling_vift.training.data):

- `id` (string), `source` (string: the config name),
- `messages`: TRL's conversational format, `[{"role", "content": [{"type": "text", "text"} | {"type": "image"}]}]`,
- `images`: a list of `datasets.Image()` (the original file bytes, embedded), one per image item, in order;

and a dataset card README.md whose YAML lists the configs, their sizes and the schema.

How it scales: records are streamed from the JSON with ijson (never loaded whole); a first pass checks every record's
structure and image paths (a record without `conversations` or an image path outside the image folder stops the
conversion before anything is written) and counts records; the second pass converts fixed-size shards, in worker
processes if asked, writing each shard in row groups to a temporary file renamed when complete, plus a small state
file. A rerun skips finished shards (resume). Records with a missing or undecodable image, or a conversation that
does not fit the format, are skipped, counted by reason and reported at the end (and in the card).

Not part of the remote-code bundle.
"""

import io
import json
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field

import ijson

from ..training.data import SampleError, conversations_to_messages, record_image_paths
from .upload import PlannedFile, PublishError, check_repo_id, format_plan, format_size, upload_to_hub


class DatasetConversionError(ValueError):
    """Input that cannot be converted; raised before any shard is written."""


# Config name -> the authors' file name (VIFT.md / the authors' README).
SOURCES = {
    "first_stage_captions": "first_stage_captions.json",
    "second_stage_captions": "second_stage_captions.json",
    "text_magpie": "text_data_magpie.json",
    "text_qwen_distill": "text_data_qwen_distill.json",
}
SOURCE_DESCRIPTIONS = {
    "first_stage_captions": "about 1M web image captions sampled from LAION, for the first (alignment) stage",
    "second_stage_captions": "about 1.7M high-quality captions, collected or written with Qwen2-VL-72B, for the "
                             "second stage",
    "text_magpie": "text-only instructions distilled from Qwen2.5-72B (Magpie-style), mixed into the second stage",
    "text_qwen_distill": "text-only instructions distilled from Qwen2.5-72B, mixed into the second stage",
}
STATE_DIR = ".vift_conversion"
IMAGE_ROWS_PER_GROUP = 100
TEXT_ROWS_PER_GROUP = 1000
MAX_SKIP_EXAMPLES = 5


def dataset_features():
    """The `datasets.Features` of every config (the schema shared with modeling_vift.training.data)."""
    from datasets import Features, Image, List, Value

    return Features(
        {
            "id": Value("string"),
            "source": Value("string"),
            "messages": List(
                {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
            ),
            "images": List(Image()),
        }
    )


# --------------------------------------------------------------------------------------------------- reading


def iter_json_records(path, buf_size=1 << 16):
    """Yields the records of a JSON list file (`[{...}, {...}]`) or a JSON Lines file one at a time: ijson's C parser
    reads `buf_size` bytes at a time, so memory holds one record whatever the file size."""
    with open(path, "rb") as f:
        head = f.read(buf_size).lstrip()
        while not head and f.peek(1):  # a file that starts with more than `buf_size` bytes of white space
            head = f.read(buf_size).lstrip()
        if not head:
            return
        if head[:1] not in (b"[", b"{"):
            raise DatasetConversionError(
                f"{path} is neither a JSON list of records nor JSON Lines (it starts with {head[:1].decode(errors='replace')!r}); "
                f"expected the authors' format: [{{\"id\": ..., \"image\": ..., \"conversations\": [...]}}, ...]."
            )
        f.seek(0)
        if head[:1] == b"[":
            records = ijson.items(f, "item", use_float=True, buf_size=buf_size)
        else:
            records = ijson.items(f, "", multiple_values=True, use_float=True, buf_size=buf_size)
        index = 0
        try:
            for record in records:
                yield record
                index += 1
        except ijson.JSONError as e:
            reason = str(e).splitlines()[0]
            raise DatasetConversionError(
                f"{path}: record #{index} is not valid JSON ({reason}); the file is damaged or truncated."
            ) from None


def _resolve_image(image_root, relative, record_id, source_path):
    full = os.path.normpath(os.path.join(image_root, relative))
    if not full.startswith(image_root + os.sep):
        raise DatasetConversionError(
            f"{source_path}: record {record_id!r} has image path {relative!r}, which points outside the image folder "
            f"{image_root!r}. Image paths must be relative to --image_folder and stay inside it; fix the record or "
            f"pass the folder the paths are relative to."
        )
    return full


def _check_record(record, index, image_root, source_path):
    """Pass 1: the structure every record needs. Errors here stop the conversion before anything is written."""
    if not isinstance(record, dict):
        raise DatasetConversionError(
            f"{source_path}: record #{index} is a {type(record).__name__}, not an object; expected "
            f'{{"id": ..., "image": ..., "conversations": [...]}}.'
        )
    if not isinstance(record.get("conversations"), list):
        raise DatasetConversionError(
            f"{source_path}: record #{index} (id {record.get('id')!r}) has no `conversations` list (keys: "
            f"{sorted(record)[:8]}). Expected the authors' format: "
            f'{{"id": ..., "image": "relative/path.jpg", "conversations": [{{"from": "human", "value": ...}}, '
            f'{{"from": "gpt", "value": ...}}]}}. Is this the right file?'
        )
    try:
        paths = record_image_paths(record)
    except SampleError as e:
        raise DatasetConversionError(f"{source_path}: record #{index}: {e}") from None
    for relative in paths:
        _resolve_image(image_root, relative, record.get("id", index), source_path)
    return len(paths)


# --------------------------------------------------------------------------------------------------- shards


@dataclass
class ShardTask:
    config: str
    index: int
    num_shards: int
    first_record: int
    records: list
    image_root: str
    output_dir: str

    @property
    def relative_path(self):
        return f"{self.config}/train-{self.index:05d}-of-{self.num_shards:05d}.parquet"


def _state_path(output_dir, config, index):
    return os.path.join(output_dir, STATE_DIR, config, f"shard-{index:05d}.json")


def _write_json_atomic(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _read_image(path):
    """The file's bytes, after checking that PIL can decode it. Returns (bytes, None) or (None, reason)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, "missing_image"
    except OSError:
        return None, "unreadable_image"
    try:
        with Image.open(io.BytesIO(data)) as image:
            # JPEGs decode at reduced scale (libjpeg still reads the whole entropy-coded stream, so truncated or
            # damaged files still fail); other formats decode fully.
            image.draft(image.mode, (64, 64))
            image.load()
    except Image.DecompressionBombError:
        return None, "oversized_image"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None, "corrupt_image"
    return data, None


def convert_shard(task):
    """Converts one shard: messages from the conversations, images read and checked, rows written in row groups to a
    temporary Parquet file that is renamed when complete. Returns the shard's state (counts, skips, sizes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = dataset_features().arrow_schema
    final = os.path.join(task.output_dir, task.relative_path)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    partial = final + ".incomplete"
    skipped, examples, rows, written, nbytes = {}, [], [], 0, 0
    writer = pq.ParquetWriter(partial, schema)
    group = TEXT_ROWS_PER_GROUP

    def flush():
        nonlocal rows, written, nbytes
        if rows:
            table = pa.Table.from_pylist(rows, schema=schema)
            writer.write_table(table)
            written += len(rows)
            nbytes += table.nbytes
            rows = []

    try:
        for offset, record in enumerate(task.records):
            record_id = str(record.get("id", f"{task.config}-{task.first_record + offset}"))
            try:
                messages = conversations_to_messages(record)
                images = []
                for relative in record_image_paths(record):
                    data, reason = _read_image(os.path.join(task.image_root, relative))
                    if reason:
                        raise SampleError(reason, f"record {record_id!r}: image {relative!r} is {reason.split('_')[0]}")
                    images.append({"bytes": data, "path": relative})
            except SampleError as e:
                skipped[e.reason] = skipped.get(e.reason, 0) + 1
                if len(examples) < MAX_SKIP_EXAMPLES:
                    examples.append(f"{e.reason}: {str(e)[:300]}")
                continue
            if images:
                group = IMAGE_ROWS_PER_GROUP
            rows.append({"id": record_id, "source": task.config, "messages": _normalise(messages), "images": images})
            if len(rows) >= group:
                flush()
        flush()
    finally:
        writer.close()
    os.replace(partial, final)
    state = {
        "path": task.relative_path,
        "records": len(task.records),
        "written": written,
        "skipped": skipped,
        "skip_examples": examples,
        "num_bytes": nbytes,
        "file_bytes": os.path.getsize(final),
    }
    _write_json_atomic(_state_path(task.output_dir, task.config, task.index), state)
    return state


def _normalise(messages):
    return [
        {"role": m["role"], "content": [{"type": c["type"], "text": c.get("text")} for c in m["content"]]}
        for m in messages
    ]


# --------------------------------------------------------------------------------------------------- conversion


@dataclass
class ConfigReport:
    config: str
    source: str
    records: int = 0
    written: int = 0
    skipped: dict = field(default_factory=dict)
    skip_examples: list = field(default_factory=list)
    num_bytes: int = 0
    file_bytes: int = 0
    shards: int = 0
    resumed_shards: int = 0
    seconds: float = 0.0

    @property
    def num_skipped(self):
        return sum(self.skipped.values())


def _fingerprint(source_path, image_root, records_per_shard):
    stat = os.stat(source_path)
    return {
        "source": os.path.abspath(source_path),
        "source_size": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        "image_folder": image_root,
        "records_per_shard": records_per_shard,
        "format_version": 1,
    }


def _scan(config, source_path, image_root, progress):
    """Pass 1 over one file: checks every record's structure and image paths; returns (records, records with images)."""
    from tqdm.auto import tqdm

    records = with_images = 0
    bar = tqdm(desc=f"Checking {config}", unit=" records", disable=not progress)
    for index, record in enumerate(iter_json_records(source_path)):
        with_images += _check_record(record, index, image_root, source_path) > 0
        records += 1
        if records % 1000 == 0:
            bar.update(1000)
    bar.update(records % 1000)
    bar.close()
    return records, with_images


def default_records_per_shard(has_images):
    """About 200-500 MB of Parquet per shard for the authors' images, a few hundred MB of text."""
    return 2000 if has_images else 50000


def _shard_tasks(config, source_path, image_root, output_dir, records_per_shard, num_shards, done):
    batch, shard, first = [], 0, 0
    for index, record in enumerate(iter_json_records(source_path)):
        if shard not in done:
            batch.append(record)
        if (index + 1) % records_per_shard == 0:
            if shard not in done:
                yield ShardTask(config, shard, num_shards, first, batch, image_root, output_dir)
            batch, shard, first = [], shard + 1, index + 1
    if shard < num_shards and shard not in done:
        yield ShardTask(config, shard, num_shards, first, batch, image_root, output_dir)


def prepare_config(config, source_path, image_folder, output_dir, records_per_shard=None, restart=False,
                   progress=True):
    """Pass 1 for one source (or the plan of an earlier run, when resuming): checks every record and counts them.
    Writes nothing; raises `DatasetConversionError` for bad input or an earlier run from a different input."""
    if not os.path.isfile(source_path):
        raise DatasetConversionError(f"The {config} source file {source_path!r} does not exist.")
    image_root = os.path.abspath(image_folder)
    if not os.path.isdir(image_root):
        raise DatasetConversionError(f"The image folder {image_folder!r} does not exist.")
    plan_path = os.path.join(output_dir, STATE_DIR, config, "plan.json")
    if os.path.exists(plan_path) and not restart:
        with open(plan_path, encoding="utf-8") as f:
            plan = json.load(f)
        wanted = _fingerprint(source_path, image_root, records_per_shard or plan["fingerprint"]["records_per_shard"])
        if plan["fingerprint"] != wanted:
            changed = sorted(k for k in wanted if plan["fingerprint"].get(k) != wanted[k])
            raise DatasetConversionError(
                f"{output_dir!r} holds a conversion of {config} from a different input (changed: {changed}). "
                f"Resuming needs the same source file, image folder and shard size; pass --restart to discard that "
                f"conversion, or choose another output folder."
            )
        return dict(plan, resumed=True)
    records, with_images = _scan(config, source_path, image_root, progress)
    per_shard = records_per_shard or default_records_per_shard(with_images > 0)
    if per_shard < 1:
        raise DatasetConversionError(f"records_per_shard must be >= 1, got {per_shard}.")
    return {
        "fingerprint": _fingerprint(source_path, image_root, per_shard),
        "records": records,
        "num_shards": max(1, -(-records // per_shard)),
        "with_images": with_images,
        "resumed": False,
    }


def convert_config(config, plan, output_dir, num_proc=1, progress=True):
    """Pass 2 for one source: converts the shards not finished yet (resume) into
    `output_dir/<config>/train-*.parquet`. Returns a `ConfigReport`."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    state_dir = os.path.join(output_dir, STATE_DIR, config)
    if not plan["resumed"]:
        for stale in (state_dir, os.path.join(output_dir, config)):
            if os.path.isdir(stale):
                shutil.rmtree(stale)
        _write_json_atomic(os.path.join(state_dir, "plan.json"), {k: v for k, v in plan.items() if k != "resumed"})
    fingerprint = plan["fingerprint"]
    source_path, image_root = fingerprint["source"], fingerprint["image_folder"]
    per_shard, num_shards = fingerprint["records_per_shard"], plan["num_shards"]

    report = ConfigReport(config=config, source=source_path, records=plan["records"], shards=num_shards)
    states, done = {}, set()
    for index in range(num_shards):
        state_file = _state_path(output_dir, config, index)
        if os.path.exists(state_file):
            with open(state_file, encoding="utf-8") as f:
                state = json.load(f)
            if os.path.exists(os.path.join(output_dir, state["path"])):
                states[index] = state
                done.add(index)
    report.resumed_shards = len(done)

    bar = tqdm(total=plan["records"], desc=f"Converting {config}", unit=" records", disable=not progress,
               initial=sum(s["records"] for s in states.values()))
    tasks = _shard_tasks(config, source_path, image_root, output_dir, per_shard, num_shards, done)
    if num_proc <= 1:
        for task in tasks:
            states[task.index] = convert_shard(task)
            bar.update(len(task.records))
    else:
        import multiprocessing

        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context(method)) as pool:
            pending = {}
            for task in tasks:
                # At most 2 * num_proc shards are in flight: the records held in memory stay bounded.
                pending[pool.submit(convert_shard, task)] = (task.index, len(task.records))
                while len(pending) >= 2 * num_proc:
                    _collect(pending, states, bar, wait(pending, return_when=FIRST_COMPLETED).done)
            while pending:
                _collect(pending, states, bar, wait(pending, return_when=FIRST_COMPLETED).done)
    bar.close()

    for state in states.values():
        report.written += state["written"]
        report.num_bytes += state["num_bytes"]
        report.file_bytes += state["file_bytes"]
        for reason, count in state["skipped"].items():
            report.skipped[reason] = report.skipped.get(reason, 0) + count
        report.skip_examples.extend(state["skip_examples"][: MAX_SKIP_EXAMPLES - len(report.skip_examples)])
    report.seconds = time.perf_counter() - started
    _write_json_atomic(os.path.join(state_dir, "report.json"), report.__dict__)
    return report


def _collect(pending, states, bar, finished):
    for future in finished:
        index, count = pending.pop(future)
        states[index] = future.result()
        bar.update(count)


def find_sources(data_dir=None, overrides=None):
    """`{config: json path}` from the authors' file names in `data_dir` and/or explicit `config=path` overrides."""
    sources = {}
    if data_dir:
        for config, name in SOURCES.items():
            path = os.path.join(data_dir, name)
            if os.path.exists(path):
                sources[config] = path
    for item in overrides or ():
        config, sep, path = item.partition("=")
        if not sep or config not in SOURCES:
            raise DatasetConversionError(
                f"--source {item!r}: expected CONFIG=PATH with CONFIG one of {sorted(SOURCES)}."
            )
        sources[config] = path
    if not sources:
        raise DatasetConversionError(
            f"No source files: give --data_dir holding {sorted(SOURCES.values())} or --source CONFIG=PATH."
        )
    return sources


def convert_dataset(sources, image_folder, output_dir, records_per_shard=None, num_proc=1, restart=False,
                    progress=True, log=print, repo_id=None, license="other"):
    """Converts every source (`{config: json path}`) into `output_dir` and writes its dataset card README.md (so the
    folder loads with `load_dataset(output_dir, config)`); all files are checked (pass 1) before any shard is
    written. Returns `{config: ConfigReport}` (every config converted into the folder so far) and logs the skips."""
    for config in sources:
        if config not in SOURCES:
            raise DatasetConversionError(f"Unknown config {config!r}: expected one of {sorted(SOURCES)}.")
    plans = {
        config: prepare_config(config, path, image_folder, output_dir, records_per_shard, restart, progress)
        for config, path in sources.items()
    }
    os.makedirs(output_dir, exist_ok=True)
    reports = {config: convert_config(config, plan, output_dir, num_proc, progress) for config, plan in plans.items()}
    log(format_report(reports))
    reports = {**load_reports(output_dir), **reports}
    card = render_dataset_card(reports, repo_id or output_dir, license)
    with open(os.path.join(output_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)
    return reports


def format_report(reports):
    lines = ["Conversion report:"]
    for report in reports.values():
        lines.append(
            f"  {report.config}: {report.written}/{report.records} records written in {report.shards} shard(s)"
            f" ({report.resumed_shards} resumed), {format_size(report.file_bytes)} of Parquet, "
            f"{report.num_skipped} skipped" + (f" {dict(sorted(report.skipped.items()))}" if report.skipped else "")
        )
        for example in report.skip_examples:
            lines.append(f"      e.g. {example}")
    return "\n".join(lines)


def load_reports(output_dir):
    reports = {}
    state_root = os.path.join(output_dir, STATE_DIR)
    for config in SOURCES:
        path = os.path.join(state_root, config, "report.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                reports[config] = ConfigReport(**json.load(f))
    return reports


# --------------------------------------------------------------------------------------------------- card + push


def _size_category(n):
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M")):
        if n < limit:
            return label
    return "10M<n<100M"


def render_dataset_card(reports, repo_id, license="other", model_repo=None):
    """README.md of the dataset: YAML with the configs (data files), sizes and schema, then what each config holds,
    the schema, how to load it and the conversion's skip counts.

    `datasets` writes the metadata (`DatasetInfosDict` and `MetadataConfigs` into huggingface_hub's `DatasetCardData`,
    as `push_to_hub` does); the body is ours: its tables hold this conversion's counts."""
    from datasets import DatasetInfo, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.splits import SplitDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    features = dataset_features()
    infos, configs = {}, {}
    for config, report in reports.items():
        splits = SplitDict()
        splits.add(SplitInfo(name="train", num_bytes=report.num_bytes, num_examples=report.written))
        infos[config] = DatasetInfo(features=features, splits=splits, download_size=report.file_bytes,
                                    dataset_size=report.num_bytes, config_name=config)
        configs[config] = {"data_files": [{"split": "train", "path": f"{config}/train-*"}]}
    total = sum(r.written for r in reports.values())
    card_data = DatasetCardData(
        license=license,
        task_categories=["image-text-to-text"],
        language=["en"],
        tags=["vift", "image-captioning", "instruction-tuning", "multimodal"],
        size_categories=[_size_category(total)],
        pretty_name="ViFT training data",
    )
    DatasetInfosDict(infos).to_dataset_card_data(card_data)
    MetadataConfigs(configs).to_dataset_card_data(card_data)
    first = next(iter(reports))
    rows = "\n".join(
        f"| `{c}` | {r.written:,} | {r.num_skipped:,} | {format_size(r.file_bytes)} | {SOURCE_DESCRIPTIONS[c]} |"
        for c, r in reports.items()
    )
    skips = "\n".join(
        f"- `{c}`: " + ", ".join(f"{reason} {count:,}" for reason, count in sorted(r.skipped.items()))
        for c, r in reports.items() if r.skipped
    ) or "- none"
    body = f"""
# ViFT training data

The training data of [ViFT](https://arxiv.org/abs/2502.11427) (visual instruction-free fine-tuning), converted from
the authors' conversation JSON files and image folder: image captions teach visual perception, text-only
instructions keep the language model's task-solving ability. One config per source file:

| config | rows | skipped | Parquet | content |
|---|---|---|---|---|
{rows}

## Schema (every config)

| column | type | |
|---|---|---|
| `id` | string | the record's id in the source file |
| `source` | string | the config name |
| `messages` | list of `{{role, content}}` | TRL's conversational format: `role` is `system`, `user` or `assistant`; `content` is a list of `{{"type": "text", "text": ...}}` and `{{"type": "image"}}` items (the image items' `text` is null) |
| `images` | list of `Image` | one image per `{{"type": "image"}}` item, in order (empty for text-only configs) |

## Usage

```python
from datasets import load_dataset

captions = load_dataset("{repo_id}", "{first}", split="train")
print(captions[0]["messages"], captions[0]["images"])
```

The columns are what TRL's `SFTTrainer` and ViFT's training recipes read{f' (model: [{model_repo}](https://huggingface.co/{model_repo}))' if model_repo else ''}.

## Conversion

Records whose image was missing or undecodable, or whose conversation did not fit the format, were skipped:

{skips}
"""
    return f"---\n{card_data.to_yaml()}\n---\n{body}"


def plan_dataset_upload(output_dir, reports, repo_id, license="other"):
    """`(files, card)`: every finished shard of the converted configs plus the card."""
    files = []
    for config, report in reports.items():
        if report.shards != len(_finished_shards(output_dir, config)):
            raise PublishError(f"The conversion of {config} in {output_dir!r} is not finished; run it again to resume.")
        for name in _finished_shards(output_dir, config):
            path = os.path.join(output_dir, config, name)
            files.append(PlannedFile(f"{config}/{name}", os.path.getsize(path), "converted", source=path))
    card = render_dataset_card(reports, repo_id, license)
    files.append(PlannedFile("README.md", len(card.encode()), "generated: dataset card", content=card.encode()))
    return files, card


def _finished_shards(output_dir, config):
    folder = os.path.join(output_dir, config)
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if n.startswith("train-") and n.endswith(".parquet"))


def check_loads(output_dir, configs):
    """Reads the first row of each config from the local folder with `datasets` (streaming, no cache written), as the
    Hub's loader will; raises `PublishError` if a config does not load or its images do not decode."""
    from datasets import load_dataset

    for config in configs:
        try:
            stream = load_dataset(output_dir, config, split="train", streaming=True)
            for row in stream.take(1):
                for image in row["images"]:
                    image.load()
        except Exception as e:  # noqa: BLE001 - any failure means the folder is not publishable
            raise PublishError(
                f"The converted folder does not load with datasets ({config}: {type(e).__name__}: {e}); not uploading."
            ) from None


def push_dataset(
    sources,
    image_folder,
    output_dir,
    repo_id,
    *,
    records_per_shard=None,
    num_proc=1,
    restart=False,
    license="other",
    private=False,
    revision=None,
    commit_message=None,
    token=None,
    dry_run=False,
    convert_only=False,
    progress=True,
    api=None,
    log=print,
):
    """Converts (or resumes converting) the sources into `output_dir`, writes the card, checks the folder loads with
    `datasets`, and uploads it to the dataset repository `repo_id` (not with `dry_run` / `convert_only`)."""
    check_repo_id(repo_id, "dataset")
    reports = convert_dataset(sources, image_folder, output_dir, records_per_shard, num_proc, restart, progress, log,
                              repo_id, license)
    files, card = plan_dataset_upload(output_dir, reports, repo_id, license)
    log(format_plan(files, repo_id, "dataset", private, revision))
    if dry_run or convert_only:
        if dry_run:
            log("--- README.md ---\n" + card)
        log(f"{'Dry run' if dry_run else 'Converted'}: the dataset is laid out in {output_dir}; nothing was uploaded.")
        return None
    check_loads(output_dir, list(reports))
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    message = commit_message or f"Upload ViFT training data ({', '.join(reports)})"
    outcome = upload_to_hub(api, output_dir, files, repo_id, "dataset", private, revision, message)
    log(f"Uploaded to https://huggingface.co/datasets/{repo_id}" + (f" (revision {revision})" if revision else ""))
    return outcome


__all__ = [
    "DatasetConversionError",
    "SOURCES",
    "convert_dataset",
    "convert_shard",
    "dataset_features",
    "find_sources",
    "iter_json_records",
    "push_dataset",
    "render_dataset_card",
]
