"""Small evaluation fixtures for trying the recipes (and testing them) on a CPU: the text files in
`tests/fixtures/eval` (one per benchmark, in the published formats) copied with random images generated for every
image they name, and a tiny random ViFT checkpoint. The scores they give mean nothing."""

import json
import os
import shutil

FIXTURE_FILES = {
    "mathvista": "mathvista_testmini.json",
    "mathverse": "mathverse_testmini.json",
    "mathvision": "mathvision_test.jsonl",
    "demon": "demon",
    "open_ended": "llava_bench/questions.jsonl",
}


def _image_names(path):
    """Image paths a fixture file names (files named missing_* are left out on purpose: they test missing images)."""
    if path.endswith(".jsonl"):
        records = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    else:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict) and "data" in data:
            records = [r.get("task_instance") or {} for r in data["data"]]
        else:
            records = list(data.values()) if isinstance(data, dict) else data
    names = []
    for record in records:
        for value in [record.get("image")] + list(record.get("images_path") or []):
            if isinstance(value, str) and value and not os.path.basename(value).startswith("missing_"):
                names.append(value)
    return names


def materialize_fixtures(source, target):
    """Copies the fixture tree `source` to `target` and writes a random 40x40 image for every image it names."""
    from modeling_vift.testing_utils import random_images

    shutil.copytree(source, target, dirs_exist_ok=True)
    seed = 0
    for root, _, files in os.walk(target):
        for name in sorted(files):
            if not name.endswith((".json", ".jsonl")):
                continue
            base = os.path.join(root, "images") if name == "questions.jsonl" else root
            for image in _image_names(os.path.join(root, name)):
                path = os.path.join(base, image)
                if not os.path.exists(path):
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    random_images(1, size=40, seed=seed)[0].save(path)
                    seed += 1
    return target


def save_tiny_model(target):
    """A tiny random ViFT model and its processor saved as a checkpoint folder (4 decoder layers)."""
    from modeling_vift.testing_utils import tiny_vift

    model, processor = tiny_vift()
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target


__all__ = ["FIXTURE_FILES", "materialize_fixtures", "save_tiny_model"]
