"""Tiny ViFT components built in code (no download): used by the tests, benchmarks and the set-up demo.

Everything here goes through the same code paths as real checkpoints: real SigLIP / CLIP vision configs and
Qwen2 / Llama text configs at toy sizes, a real `tokenizers` tokenizer, real image processors.
"""

import json
import os
import shutil

import torch

from .remote_code.configuration_vift import ViFTConfig
from .remote_code.modeling_vift import ViFTForConditionalGeneration
from .remote_code.processing_vift import CHATML_TEMPLATE, ViFTProcessor


IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN]

_CORPUS = [
    "a red circle and a blue square on a white background",
    "how many shapes are there in the picture? answer with one word",
    "the image shows two green triangles above a yellow star",
    "describe the image in detail. what colour is the large shape?",
    "you are a helpful assistant. user assistant system",
    "yes no one two three four five six seven eight nine ten",
    "which of the two images has more shapes? what changed from image 1 to image 2?",
    "0 1 2 3 4 5 6 7 8 9 + - = ? . , ! : ;",
]


def tiny_tokenizer(corpus=None, vocab_size=300, with_image_token=True, chat_template=None):
    """A byte-level BPE tokenizer trained in a few milliseconds on a small corpus, with ChatML special tokens.

    `with_image_token=False` gives a tokenizer like a real LM's, which lacks `<image>` until
    `from_components` adds it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = SPECIAL_TOKENS if with_image_token else SPECIAL_TOKENS[:-1]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(corpus or _CORPUS), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[IMAGE_TOKEN] if with_image_token else None,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def tiny_text_config(kind="qwen2", vocab_size=300, **overrides):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    common.update(overrides)
    if kind == "qwen2":
        return Qwen2Config(**common)
    if kind == "llama":
        return LlamaConfig(**common)
    raise ValueError(f"unknown tiny text model kind {kind!r}: use 'qwen2' or 'llama'")


def tiny_vision_config(kind="siglip", **overrides):
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    common = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    common.update(overrides)
    if kind == "siglip":
        return SiglipVisionConfig(**common)
    if kind == "clip":
        return CLIPVisionConfig(**common)
    raise ValueError(f"unknown tiny vision tower kind {kind!r}: use 'siglip' or 'clip'")


def tiny_image_processor(kind="siglip", image_size=32):
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    if kind == "siglip":
        return SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def tiny_vift(vision="siglip", text="qwen2", seed=0, tokenizer=None, **config_overrides):
    """A randomly initialised tiny ViFT model and its processor."""
    tokenizer = tokenizer or tiny_tokenizer()
    vision_config = tiny_vision_config(vision)
    text_config = tiny_text_config(text, vocab_size=len(tokenizer))
    config = ViFTConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        **config_overrides,
    )
    torch.manual_seed(seed)
    model = ViFTForConditionalGeneration(config).eval()
    processor = ViFTProcessor(
        image_processor=tiny_image_processor(vision, vision_config.image_size),
        tokenizer=tokenizer,
        image_seq_length=config.image_seq_length,
    )
    return model, processor


def save_tiny_towers(directory, vision="siglip", text="qwen2", seed=0):
    """Saves a tiny pretrained-style vision tower (with its image processor) and causal LM (with its tokenizer,
    which lacks the image token, as real LMs do) into `directory`; returns their two paths."""
    from transformers import AutoModel, AutoModelForCausalLM

    torch.manual_seed(seed)
    vision_dir = os.path.join(directory, f"tiny-{vision}")
    text_dir = os.path.join(directory, f"tiny-{text}")
    vision_config = tiny_vision_config(vision)
    AutoModel.from_config(vision_config).save_pretrained(vision_dir)
    tiny_image_processor(vision, vision_config.image_size).save_pretrained(vision_dir)

    tokenizer = tiny_tokenizer(with_image_token=False, chat_template=CHATML_TEMPLATE)
    AutoModelForCausalLM.from_config(tiny_text_config(text, vocab_size=len(tokenizer))).save_pretrained(text_dir)
    tokenizer.save_pretrained(text_dir)
    return vision_dir, text_dir


def random_images(count, size=32, seed=0, mode="RGB"):
    """`count` random PIL images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        array = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        images.append(Image.fromarray(array, "RGB").convert(mode))
    return images


# ------------------------------------------------------------------------------------------ evaluation fixtures
# The text files in `tests/fixtures/eval` (one per benchmark, in the published formats) copied with random images
# generated for every image they name, and a tiny random ViFT checkpoint. The scores they give mean nothing.

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
    model, processor = tiny_vift()
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target
