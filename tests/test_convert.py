"""Converting existing checkpoints (issue 5): tiny llava-hf and Bunny-format sources built in code convert into ViFT
folders whose logits equal the source model's, and bad sources fail before anything is written."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from modeling_vift import ViFTForConditionalGeneration, ViFTProcessor
from modeling_vift.conversion import ConversionError, compare_with_llava, convert_checkpoint
from modeling_vift.testing_utils import (
    random_images,
    save_tiny_towers,
    tiny_text_config,
    tiny_tokenizer,
)
from tests.test_conversion_fidelity import LLAVA_TEMPLATE, save_llava_hf


# ----------------------------------------------------------------------------------------------------------------
# Source checkpoints built in code
# ----------------------------------------------------------------------------------------------------------------


def save_tiny_llava(directory, tower="clip", strategy="default"):
    """A tiny llava-hf LlavaForConditionalGeneration (CLIP or SigLIP tower, Llama LM) with its processor."""
    save_llava_hf(directory, "llama", tiny_tokenizer(), tower, strategy)
    return directory


def save_tiny_bunny(directory, with_tower=True, vocab_slack=0, projector_type="mlp2x_gelu"):
    """A Bunny-format checkpoint: one state dict with the Qwen2 LM (`model.*`, `lm_head.*`), the `model.mm_projector`
    Sequential and (if `with_tower`) the tower under `model.vision_tower.vision_tower.`, and a Qwen2 config plus
    Bunny's `mm_*` fields. Returns (checkpoint dir, the source modules for the reference forward)."""
    from transformers import Qwen2ForCausalLM, SiglipVisionModel

    vision_dir, _ = save_tiny_towers(os.path.join(directory, "towers"))
    tokenizer = tiny_tokenizer(with_image_token=False)
    text_config = tiny_text_config("qwen2", vocab_size=len(tokenizer) + vocab_slack)
    torch.manual_seed(1)
    lm = Qwen2ForCausalLM(text_config).eval()
    tower = SiglipVisionModel.from_pretrained(vision_dir).eval()
    if with_tower:  # a trained tower differs from the original one
        with torch.no_grad():
            for p in tower.parameters():
                p.add_(0.01 * torch.randn_like(p))
    projector = nn.Sequential(nn.Linear(24, 32), nn.GELU(), nn.Linear(32, 32)).eval()
    state = dict(lm.state_dict())
    state.update({f"model.mm_projector.{k}": v for k, v in projector.state_dict().items()})
    if with_tower:
        # Bunny was trained with transformers 4, whose SigLIP vision model nests its weights under `vision_model.`.
        state.update({f"model.vision_tower.vision_tower.vision_model.{k}": v for k, v in tower.state_dict().items()})
    source = os.path.join(directory, "bunny")
    os.makedirs(source)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(source, "model.safetensors"),
              metadata={"format": "pt"})
    config = text_config.to_dict()
    config.update(
        model_type="bunny-qwen2", architectures=["BunnyQwen2ForCausalLM"], mm_vision_tower=vision_dir,
        mm_projector_type=projector_type, mm_hidden_size=24, image_aspect_ratio="pad",
        unfreeze_vision_tower=with_tower, use_mm_proj=True, tokenizer_model_max_length=2048,
    )
    with open(os.path.join(source, "config.json"), "w") as f:
        json.dump(config, f)
    tokenizer.save_pretrained(source)
    return source, (lm, tower, projector, tokenizer)


@torch.no_grad()
def bunny_reference_logits(modules, pre_ids, post_ids, pixel_values):
    """Bunny's forward, written from its facts: hidden layer -2 of the tower, the projector, the features spliced
    between the text embeddings where the image placeholder was, then the LM on `inputs_embeds`."""
    lm, tower, projector, _ = modules
    features = projector(tower(pixel_values, output_hidden_states=True).hidden_states[-2])
    embed = lm.get_input_embeddings()
    embeds = torch.cat([embed(torch.tensor(pre_ids)), features[0], embed(torch.tensor(post_ids))])[None]
    return lm(inputs_embeds=embeds).logits


@torch.no_grad()
def vift_logits(folder, pre_ids, post_ids, pixel_values):
    model = ViFTForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    n = model.config.image_seq_length
    ids = torch.tensor([pre_ids + [model.config.image_token_id] * n + post_ids])
    return model(input_ids=ids, pixel_values=pixel_values).logits


def _bunny_inputs(tokenizer, processor):
    pre = tokenizer("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
    post = tokenizer("\ndescribe the image.<|im_end|>\n", add_special_tokens=False)["input_ids"]
    pixel_values = processor.image_processor(random_images(1, seed=3), return_tensors="pt")["pixel_values"]
    return pre, post, pixel_values


# ----------------------------------------------------------------------------------------------------------------
# Equivalence
# ----------------------------------------------------------------------------------------------------------------


def test_llava_hf_checkpoint_converts_with_identical_logits(tmp_path):
    source = save_tiny_llava(str(tmp_path / "llava"))
    out = str(tmp_path / "vift")
    convert_checkpoint(source, out)
    assert compare_with_llava(source, out) <= 1e-5
    assert compare_with_llava(source, out, num_images=2, seed=1) <= 1e-5
    names = set(os.listdir(out))
    assert {"configuration_vift.py", "modeling_vift.py", "processing_vift.py", "chat_template.jinja"} <= names
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["auto_map"]["AutoModel"] == "modeling_vift.ViFTForConditionalGeneration"
    assert config["vision_feature_select_strategy"] == "default" and config["image_seq_length"] == 16
    processor = ViFTProcessor.from_pretrained(out)
    assert processor.chat_template == LLAVA_TEMPLATE  # the source's own template is kept
    generation = json.load(open(os.path.join(out, "generation_config.json")))
    assert generation["fusion_layers"] == config["fusion_layers"]
    assert generation["fusion_alpha"] == config["fusion_alpha"]


def test_llava_hf_checkpoint_with_a_siglip_tower_keeping_every_patch_converts_with_identical_logits(tmp_path):
    source = save_tiny_llava(str(tmp_path / "llava"), tower="siglip", strategy="full")
    convert_checkpoint(source, str(tmp_path / "vift"))
    assert compare_with_llava(source, str(tmp_path / "vift")) <= 1e-5


def test_llava_hf_checkpoint_dropping_a_patch_of_a_tower_without_cls_is_rejected(tmp_path):
    """LLaVA's "default" strategy drops position 0 even when the tower has no CLS token; ViFT cannot reproduce it."""
    source = save_tiny_llava(str(tmp_path / "llava"), tower="siglip", strategy="default")
    with pytest.raises(ConversionError, match="has none"):
        convert_checkpoint(source, str(tmp_path / "vift"))
    assert not (tmp_path / "vift").exists()


def test_legacy_llava_hf_key_layout_and_shards_convert_with_identical_logits(tmp_path):
    """llava-hf checkpoints saved by transformers 4 store `language_model.model.*`, `language_model.lm_head.*`,
    `vision_tower.vision_model.*` and `multi_modal_projector.*`, often in several shards; the output is sharded when
    asked."""
    source = save_tiny_llava(str(tmp_path / "llava"))
    state = load_file(os.path.join(source, "model.safetensors"))
    legacy = {}
    for name, tensor in state.items():
        for new, old in (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                         ("model.vision_tower.", "vision_tower.vision_model."),
                         ("model.multi_modal_projector.", "multi_modal_projector.")):
            if name.startswith(new):
                name = old + name[len(new):]
                break
        legacy[name] = tensor
    os.remove(os.path.join(source, "model.safetensors"))
    names = sorted(legacy)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, part in halves.items():
        save_file({n: legacy[n] for n in part}, os.path.join(source, file), metadata={"format": "pt"})
    with open(os.path.join(source, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": {n: file for file, part in halves.items() for n in part}}, f)

    out = str(tmp_path / "vift")
    convert_checkpoint(source, out, max_shard_size="100KB", dtype=torch.float32)
    assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
    assert len([n for n in os.listdir(out) if n.endswith(".safetensors")]) > 1
    assert compare_with_llava(source, out) <= 1e-5


def test_bunny_checkpoint_converts_with_identical_logits(tmp_path):
    """The tokenizer lacks `<image>` (a plain Qwen tokenizer) and the embeddings have no spare row, so conversion adds
    the token and a row; the logits over the source vocabulary are unchanged."""
    source, modules = save_tiny_bunny(str(tmp_path))
    out = str(tmp_path / "vift")
    convert_checkpoint(source, out)
    processor = ViFTProcessor.from_pretrained(out)
    assert processor.pad_to_square  # image_aspect_ratio: pad
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == len(modules[3])
    pre, post, pixel_values = _bunny_inputs(modules[3], processor)
    reference = bunny_reference_logits(modules, pre, post, pixel_values)
    converted = vift_logits(out, pre, post, pixel_values)
    assert converted.shape[-1] == reference.shape[-1] + 1
    torch.testing.assert_close(converted[..., : reference.shape[-1]], reference, atol=1e-5, rtol=0)


def test_bunny_checkpoint_with_frozen_tower_takes_the_tower_from_mm_vision_tower(tmp_path):
    source, modules = save_tiny_bunny(str(tmp_path), with_tower=False, vocab_slack=8)
    out = str(tmp_path / "vift")
    convert_checkpoint(source, out)
    processor = ViFTProcessor.from_pretrained(out)
    pre, post, pixel_values = _bunny_inputs(modules[3], processor)
    converted = vift_logits(out, pre, post, pixel_values)
    # Bunny's loader resizes the embeddings to len(tokenizer): the 8 spare rows go, the image token gets one.
    assert converted.shape[-1] == len(modules[3]) + 1
    reference = bunny_reference_logits(modules, pre, post, pixel_values)[..., : len(modules[3])]
    torch.testing.assert_close(converted[..., : len(modules[3])], reference, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Bad sources: clear errors, nothing written
# ----------------------------------------------------------------------------------------------------------------


def test_checkpoint_with_a_missing_shard_is_rejected_before_writing(tmp_path):
    source = save_tiny_llava(str(tmp_path / "llava"))
    os.rename(os.path.join(source, "model.safetensors"), os.path.join(source, "model-00001-of-00002.safetensors"))
    with open(os.path.join(source, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}, f)
    out = tmp_path / "vift"
    with pytest.raises(ConversionError, match=r"incomplete.*model-00002-of-00002\.safetensors"):
        convert_checkpoint(source, str(out))
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".vift-convert")]


def test_checkpoint_missing_tensors_is_rejected_with_their_names(tmp_path):
    source, _ = save_tiny_bunny(str(tmp_path))
    path = os.path.join(source, "model.safetensors")
    state = load_file(path)
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"model\.language_model\.layers\.1\.mlp\.up_proj\.weight"):
        convert_checkpoint(source, str(tmp_path / "vift"))
    assert not (tmp_path / "vift").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mm_projector_type": "ldp"}, "mm_projector_type='ldp' is not supported"),
        ({"model_type": "bunny-phi"}, "model_type 'bunny-phi' is not supported"),
        ({"mm_hidden_size": 99}, "projector takes 99-wide features"),
        ({"model_type": "gpt2", "mm_vision_tower": None, "mm_projector_type": None}, "Cannot tell the layout"),
    ],
)
def test_unsupported_bunny_configs_are_rejected_before_writing(tmp_path, change, message):
    source, _ = save_tiny_bunny(str(tmp_path))
    path = os.path.join(source, "config.json")
    config = json.load(open(path))
    config.update(change)
    config = {k: v for k, v in config.items() if v is not None}
    json.dump(config, open(path, "w"))
    with pytest.raises(ConversionError, match=message):
        convert_checkpoint(source, str(tmp_path / "vift"))
    assert not (tmp_path / "vift").exists()


def test_convert_script_reports_errors_without_a_traceback(tmp_path, capsys):
    from hub.convert_llava import main

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "llava"}))
    assert main(["--source", str(empty), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No weights found") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_compare_on_a_bunny_source_is_refused_before_converting(tmp_path, capsys):
    from hub.convert_llava import main

    source, _ = save_tiny_bunny(str(tmp_path / "bunny"))
    assert main(["--source", source, "--output", str(tmp_path / "vift"), "--compare"]) == 2
    assert "--compare needs the source's transformers model class" in capsys.readouterr().err
    assert not (tmp_path / "vift").exists()  # refused before anything was written
