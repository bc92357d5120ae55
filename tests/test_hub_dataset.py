"""Publishing the ViFT datasets (issue 5): the authors' JSON + image folder become one Parquet config per source with a
TRL `messages` column and embedded images; skips are counted, interrupted conversions resume, bad input stops before
anything is written, and the published folder loads by repo id (from a Hub endpoint, then offline from the cache)."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from modeling_vift.publishing import dataset as hub_datasets
from modeling_vift.publishing.dataset import (
    DatasetConversionError,
    convert_dataset,
    find_sources,
    iter_json_records,
    push_dataset,
)
from modeling_vift.testing_utils import random_images
from modeling_vift.training.data import DataSource, SourceConfig, conversations_to_messages
from tests.fake_hub import FakeHub


NUM_CAPTIONS = 7


def caption_record(i, image):
    return {"id": i, "image": image, "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image briefly."},
        {"from": "gpt", "value": f"caption number {i}"},
    ]}


@pytest.fixture
def authors_data(tmp_path):
    """The authors' layout in miniature: an image folder, a caption JSON list (with one missing and one corrupt image)
    and text-only instructions as JSON Lines."""
    images = tmp_path / "images"
    (images / "coco").mkdir(parents=True)
    for i, image in enumerate(random_images(NUM_CAPTIONS, seed=5)):
        image.save(images / "coco" / f"{i}.png")
    random_images(1, size=64, seed=9)[0].save(images / "coco" / "whole.jpg")
    whole = (images / "coco" / "whole.jpg").read_bytes()
    (images / "coco" / "corrupt.jpg").write_bytes(whole[: len(whole) // 2])  # a truncated download
    captions = [caption_record(i, f"coco/{i}.png") for i in range(NUM_CAPTIONS)]
    captions.insert(3, caption_record("gone", "coco/missing.png"))
    captions.append(caption_record("bad", "coco/corrupt.jpg"))
    (tmp_path / "second_stage_captions.json").write_text(json.dumps(captions, indent=1))
    text = [{"id": f"t{i}", "conversations": [{"from": "human", "value": f"question {i}?"},
                                               {"from": "gpt", "value": f"answer {i}."}]} for i in range(5)]
    (tmp_path / "text_data_magpie.json").write_text("\n".join(json.dumps(r) for r in text) + "\n")
    return {"root": tmp_path, "images": str(images), "captions": captions,
            "sources": find_sources(str(tmp_path))}


def convert(data, out, **kwargs):
    kwargs.setdefault("records_per_shard", 3)
    lines = []
    reports = convert_dataset(data["sources"], data["images"], str(out), progress=False, log=lines.append, **kwargs)
    return reports, "\n".join(lines)


def read_config(out, config):
    files = sorted((out / config).glob("train-*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def test_conversion_writes_one_config_per_source_with_messages_and_embedded_images(authors_data, tmp_path):
    out = tmp_path / "out"
    reports, log = convert(authors_data, out)
    assert set(reports) == {"second_stage_captions", "text_magpie"}
    captions = reports["second_stage_captions"]
    assert (captions.records, captions.written, captions.shards) == (NUM_CAPTIONS + 2, NUM_CAPTIONS, 3)
    assert captions.skipped == {"missing_image": 1, "corrupt_image": 1}
    assert "missing_image': 1" in log and "coco/missing.png" in log and "coco/corrupt.jpg" in log

    rows = read_config(out, "second_stage_captions")
    assert [r["id"] for r in rows] == [str(i) for i in range(NUM_CAPTIONS)]  # order kept, skips dropped
    source = authors_data["captions"][0]
    assert rows[0]["messages"] == [
        {"role": m["role"], "content": [{"type": c["type"], "text": c.get("text")} for c in m["content"]]}
        for m in conversations_to_messages(source)
    ]
    assert rows[0]["source"] == "second_stage_captions" and rows[0]["images"][0]["path"] == "coco/0.png"
    original = Image.open(os.path.join(authors_data["images"], "coco", "0.png"))
    assert rows[0]["images"][0]["bytes"] == open(os.path.join(authors_data["images"], "coco", "0.png"), "rb").read()
    text_rows = read_config(out, "text_magpie")
    assert len(text_rows) == 5 and all(r["images"] == [] for r in text_rows)

    # The training code reads the converted folder as it will read the Hub dataset: same schema.
    data = DataSource(SourceConfig(name="captions", path=str(out), subset="second_stage_captions"))
    messages, refs = data.record_messages(data.dataset[0])
    assert messages[0]["content"][0]["type"] == "image" and len(refs) == 1
    assert np.array_equal(np.asarray(data.load_images(0)[0]), np.asarray(original.convert("RGB")))


def test_dataset_card_lists_configs_sizes_schema_and_skips(authors_data, tmp_path):
    out = tmp_path / "out"
    api = _Api()
    push_dataset(authors_data["sources"], authors_data["images"], str(out), "org/vift-data", records_per_shard=3,
                 progress=False, api=api, log=lambda *a: None, commit_message="data v1", private=True)
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    configs = {c["config_name"]: c["data_files"] for c in meta["configs"]}
    assert configs["second_stage_captions"] == [{"split": "train", "path": "second_stage_captions/train-*"}]
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    assert infos["second_stage_captions"]["splits"][0]["num_examples"] == NUM_CAPTIONS
    assert infos["text_magpie"]["splits"][0]["num_examples"] == 5
    assert {f["name"] for f in infos["text_magpie"]["features"]} == {"id", "source", "messages", "images"}
    assert "corrupt_image 1, missing_image 1" in card

    # One upload: create the dataset repo, then one commit with every shard and the card (state files stay local).
    assert [c[0] for c in api.calls] == ["create_repo", "create_commit"]
    assert api.calls[0][2] == {"repo_type": "dataset", "private": True, "exist_ok": True}
    paths = sorted(op.path_in_repo for op in api.calls[1][2]["operations"])
    assert paths == ["README.md"] + [f"second_stage_captions/train-0000{i}-of-00003.parquet" for i in range(3)] + [
        f"text_magpie/train-0000{i}-of-00002.parquet" for i in range(2)]
    assert api.calls[1][2]["commit_message"] == "data v1" and api.calls[1][2]["repo_type"] == "dataset"


def test_published_dataset_loads_by_repo_id_from_the_hub_then_offline_from_its_cache(authors_data, tmp_path):
    out = tmp_path / "out"
    push_dataset(authors_data["sources"], authors_data["images"], str(out), "org/vift-data", records_per_shard=3,
                 progress=False, convert_only=True, log=lambda *a: None)
    script = (
        "from datasets import load_dataset\n"
        "ds = load_dataset('org/vift-data', 'second_stage_captions', split='train')\n"
        "row = ds[0]\n"
        "print(len(ds), row['messages'][0]['content'][0]['type'], row['images'][0].size)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1", HF_UPDATE_DOWNLOAD_COUNTS="0")
    with FakeHub() as hub:
        commit = hub.add("dataset", "org/vift-data", str(out))
        online = subprocess.run([sys.executable, "-c", script], env={**env, "HF_ENDPOINT": hub.endpoint},
                                cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert online.returncode == 0, online.stderr[-3000:]
    assert online.stdout.split() == [str(NUM_CAPTIONS), "image", "(32,", "32)"]
    assert not any(".vift_conversion" in r for r in hub.requests)
    cache = tmp_path / "hf" / "hub" / "datasets--org--vift-data"
    assert (cache / "refs" / "main").read_text() == commit
    assert (cache / "snapshots" / commit / "second_stage_captions" / "train-00000-of-00003.parquet").exists()

    offline = subprocess.run([sys.executable, "-c", script], env={**env, "HF_HUB_OFFLINE": "1"},
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert offline.stdout.split() == online.stdout.split()


def test_interrupted_conversion_resumes_without_redoing_finished_shards(authors_data, tmp_path, monkeypatch):
    reference, _ = convert(authors_data, tmp_path / "reference")
    out = tmp_path / "out"
    real = hub_datasets.convert_shard
    calls = []

    def interrupted(task):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append((task.config, task.index))
        return real(task)

    monkeypatch.setattr(hub_datasets, "convert_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(authors_data, out)
    finished = {p: os.stat(p).st_mtime_ns for p in (out / "second_stage_captions").glob("train-*.parquet")}
    assert len(finished) == 2

    calls.clear()
    monkeypatch.setattr(hub_datasets, "convert_shard",
                        lambda task: calls.append((task.config, task.index)) or real(task))
    reports, _ = convert(authors_data, out)
    assert calls == [("second_stage_captions", 2), ("text_magpie", 0), ("text_magpie", 1)]
    assert all(os.stat(p).st_mtime_ns == t for p, t in finished.items())  # finished shards untouched
    assert reports["second_stage_captions"].resumed_shards == 2
    for config in reference:
        assert read_config(out, config) == read_config(tmp_path / "reference", config)
        assert reports[config].skipped == reference[config].skipped


def test_resuming_from_a_changed_input_is_refused(authors_data, tmp_path):
    out = tmp_path / "out"
    convert(authors_data, out)
    path = authors_data["sources"]["text_magpie"]
    with open(path, "a") as f:
        f.write(json.dumps({"id": "new", "conversations": [{"from": "human", "value": "q"},
                                                           {"from": "gpt", "value": "a"}]}) + "\n")
    with pytest.raises(DatasetConversionError, match="different input.*--restart"):
        convert(authors_data, out)
    reports, _ = convert(authors_data, out, restart=True)
    assert reports["text_magpie"].written == 6


def test_parallel_conversion_writes_the_same_shards(authors_data, tmp_path):
    convert(authors_data, tmp_path / "one")
    convert(authors_data, tmp_path / "two", num_proc=2)
    for config in authors_data["sources"]:
        assert read_config(tmp_path / "two", config) == read_config(tmp_path / "one", config)


# ----------------------------------------------------------------------------------------------------------------
# Bad input: clear errors before anything is written
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_record, message",
    [
        ({"id": "x", "image": "coco/0.png", "messages": []}, r"record #2 \(id 'x'\) has no `conversations`"),
        (caption_record("up", "../outside.png"), r"image path '../outside.png'.*outside the image folder"),
        (caption_record("abs", "/etc/passwd"), r"image path '/etc/passwd'.*outside the image folder"),
        (["not", "a", "record"], "record #2 is a list, not an object"),
    ],
)
def test_bad_records_stop_the_conversion_before_anything_is_written(authors_data, tmp_path, bad_record, message):
    path = authors_data["sources"]["text_magpie"]  # a later source: the earlier one must not be written either
    lines = open(path).read().splitlines()
    lines.insert(2, json.dumps(bad_record))
    open(path, "w").write("\n".join(lines))
    out = tmp_path / "out"
    with pytest.raises(DatasetConversionError, match=message):
        convert(authors_data, out)
    assert not out.exists()


def test_bad_repo_id_is_rejected_before_converting(authors_data, tmp_path):
    from modeling_vift.publishing import PublishError

    with pytest.raises(PublishError, match="namespace/name"):
        push_dataset(authors_data["sources"], authors_data["images"], str(tmp_path / "out"), "vift-data",
                     progress=False, api=_Api(), log=lambda *a: None)
    assert not (tmp_path / "out").exists()


def test_json_reader_streams_lists_and_json_lines_in_small_chunks(tmp_path):
    records = [{"id": i, "text": "x" * (i * 7), "score": i / 4, "nested": {"a": [1, 2, {"b": "]}"}]}} for i in range(20)]
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(records, indent=2))
    as_lines = tmp_path / "lines.jsonl"
    as_lines.write_text("\n".join(json.dumps(r) for r in records))
    assert list(iter_json_records(str(as_list), buf_size=5)) == records
    assert list(iter_json_records(str(as_lines), buf_size=5)) == records
    truncated = tmp_path / "truncated.json"
    truncated.write_text(json.dumps(records)[:-40])
    with pytest.raises(DatasetConversionError, match="damaged or truncated"):
        list(iter_json_records(str(truncated), buf_size=16))
    damaged = tmp_path / "damaged.jsonl"  # a bad record early in a long file: reported without reading on
    damaged.write_text('{"id": 0}\n{"id": 1,, "x": 2}\n' + "\n".join(json.dumps(r) for r in records * 50))
    reader = iter_json_records(str(damaged), buf_size=8)
    assert next(reader) == {"id": 0}
    with pytest.raises(DatasetConversionError, match=r"record #1 is not valid JSON \(parse error"):
        next(reader)
    neither = tmp_path / "neither.json"
    neither.write_text('  "a string"')
    with pytest.raises(DatasetConversionError, match="neither a JSON list of records nor JSON Lines"):
        list(iter_json_records(str(neither)))


def test_push_dataset_script_dry_run_converts_and_uploads_nothing(authors_data, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    from hub.push_dataset import main

    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: pytest.fail("dry run must not create an HfApi"))
    out = tmp_path / "out"
    assert main(["--data_dir", str(authors_data["root"]), "--image_folder", authors_data["images"], "--output_dir",
                 str(out), "--repo_id", "org/vift-data", "--records_per_shard", "3", "--no_progress", "--dry_run",
                 "--token", "hf_secretTokenNeverShown"]) == 0
    printed = capsys.readouterr().out
    assert "second_stage_captions/train-00002-of-00003.parquet" in printed and "configs:" in printed
    assert "nothing was uploaded" in printed and "hf_secretTokenNeverShown" not in printed
    assert main(["--source", "bogus=x.json", "--image_folder", authors_data["images"], "--output_dir", str(out),
                 "--repo_id", "org/vift-data"]) == 2
    assert "expected CONFIG=PATH" in capsys.readouterr().err


class _Api:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name.startswith("_") or name == "upload_large_folder":
            raise AttributeError(name)
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))
