"""Writes tiny, randomly initialised assets for trying the ViFT recipes on a CPU in a minute.

```bash
python -m recipes.make_tiny_assets --output_dir vift-tiny
python -m recipes.stage1_align --config recipes/tiny_stage1.yaml
python -m recipes.stage2_finetune --config recipes/tiny_stage2.yaml
```

It writes into `--output_dir`:
- `towers/tiny-siglip`, `towers/tiny-qwen2`: a pretrained-style vision tower and chat LM (stage 1 starts here);
- `vift-init`: a ViFT checkpoint built from them (for `trl sft` and stage 2 without stage 1);
- `data/`: images, the authors' LLaVA/Bunny JSON files (captions and text-only instructions), a dataset in TRL's
  conversational format (`messages` + `images`, parquet), and mixture YAMLs for both stages.
Nothing is downloaded; the numbers mean nothing.
"""

import json
import os
import random
from dataclasses import dataclass


CAPTIONS = [
    "a red circle and a blue square on a white background",
    "two green triangles above a yellow star",
    "the image shows a large shape and one small shape",
    "a blue square next to a red circle",
]
INSTRUCTIONS = [
    ("how many shapes are there in the picture? answer with one word", "two"),
    ("what colour is the large shape?", "the large shape is red"),
    ("count from one to five", "one two three four five"),
    ("which of the two has more shapes?", "the first one has more shapes"),
]


def write_images(directory, count, seed=0, size=32):
    from modeling_vift.testing_utils import random_images

    os.makedirs(directory, exist_ok=True)
    names = []
    for i, image in enumerate(random_images(count, size=size, seed=seed)):
        name = f"img_{i:04d}.png"
        image.save(os.path.join(directory, name))
        names.append(name)
    return names


def caption_records(image_names, prefix="cap", seed=0):
    rng = random.Random(seed)
    return [
        {
            "id": f"{prefix}-{i}",
            "image": name,
            "conversations": [
                {"from": "human", "value": "<image>\n" + rng.choice(["", "describe the image."])},
                {"from": "gpt", "value": " ".join(rng.choice(CAPTIONS) for _ in range(rng.randint(1, 3)))},
            ],
        }
        for i, name in enumerate(image_names)
    ]


def text_records(count, seed=0):
    rng = random.Random(seed)
    records = []
    for i in range(count):
        turns = []
        for _ in range(rng.randint(1, 2)):
            question, answer = rng.choice(INSTRUCTIONS)
            turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer * rng.randint(1, 3)}]
        records.append({"id": f"text-{i}", "conversations": turns})
    return records


def write_tiny_data(directory, num_captions=24, num_text=16, seed=0):
    """Images, LLaVA/Bunny JSON files, a TRL conversational parquet dataset and two mixture YAMLs."""
    import yaml
    from datasets import Dataset
    from PIL import Image

    from modeling_vift.training.data import conversations_to_messages

    image_dir = os.path.join(directory, "images")
    names = write_images(image_dir, num_captions, seed=seed)
    captions = caption_records(names, seed=seed)
    texts = text_records(num_text, seed=seed)
    paths = {
        "stage1_captions": os.path.join(directory, "stage1_captions.json"),
        "stage2_captions": os.path.join(directory, "stage2_captions.json"),
        "text_instructions": os.path.join(directory, "text_instructions.json"),
    }
    for key, records in (("stage1_captions", captions), ("stage2_captions", captions[::-1]), ("text_instructions", texts)):
        with open(paths[key], "w") as f:
            json.dump(records, f)

    # The same records in TRL's conversational format (the schema of the published ViFT datasets).
    rows = {"id": [], "source": [], "messages": [], "images": []}
    for source, records in (("captions", captions), ("text", texts)):
        for record in records:
            rows["id"].append(record["id"])
            rows["source"].append(source)
            rows["messages"].append(conversations_to_messages(record))
            image = record.get("image")
            rows["images"].append([Image.open(os.path.join(image_dir, image)).convert("RGB")] if image else [])
    trl_dir = os.path.join(directory, "trl_mixed")
    os.makedirs(trl_dir, exist_ok=True)
    Dataset.from_dict(rows).shuffle(seed=seed).to_parquet(os.path.join(trl_dir, "train.parquet"))

    mixtures = {
        "stage1_mixture.yaml": {
            "seed": seed,
            "sources": [{"name": "captions", "path": "stage1_captions.json", "image_folder": "images"}],
        },
        "stage2_mixture.yaml": {
            "seed": seed,
            "sources": [
                {"name": "captions", "path": "stage2_captions.json", "image_folder": "images", "fraction": 1.0},
                {"name": "text", "path": "text_instructions.json", "fraction": 1.0},
                {"name": "trl_mixed", "path": "trl_mixed", "fraction": 0.5},
            ],
        },
    }
    for name, mixture in mixtures.items():
        with open(os.path.join(directory, name), "w") as f:
            yaml.safe_dump(mixture, f, sort_keys=False)
    return {**paths, "image_folder": image_dir, "trl_mixed": trl_dir}


def write_tiny_checkpoint(directory, vision_dir, text_dir):
    """A ViFT model built from the tiny towers, saved with its processor and remote code."""
    import modeling_vift  # noqa: F401  (registers the auto classes so the folder carries the remote code)
    from modeling_vift import ViFTForConditionalGeneration, ViFTProcessor

    model = ViFTForConditionalGeneration.from_components(vision_dir, text_dir)
    processor = ViFTProcessor.from_components(vision_dir, text_dir)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def make_tiny_assets(output_dir, seed=0):
    from modeling_vift.testing_utils import save_tiny_towers

    vision_dir, text_dir = save_tiny_towers(os.path.join(output_dir, "towers"), seed=seed)
    checkpoint = write_tiny_checkpoint(os.path.join(output_dir, "vift-init"), vision_dir, text_dir)
    data = write_tiny_data(os.path.join(output_dir, "data"), seed=seed)
    return {"vision": vision_dir, "text": text_dir, "checkpoint": checkpoint, **data}


@dataclass
class TinyAssetsArguments:
    output_dir: str = "vift-tiny"
    seed: int = 0


def main():
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(TinyAssetsArguments).parse_args_into_dataclasses()
    paths = make_tiny_assets(args.output_dir, seed=args.seed)
    for key, value in paths.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
