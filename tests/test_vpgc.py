"""VPG-C (issue 8): an exact no-op until trained, packed == unpacked with the module on, correct per-sample
instruction tokens, gradient checkpointing safe, works with fused generation, round-trips as remote code."""

import json
import os

import pytest
import torch

from modeling_vift import ViFTConfig, ViFTForConditionalGeneration
from modeling_vift.publishing.fresh_process import run_python_without_vift
from modeling_vift.remote_code.vpgc_vift import instruction_positions, sample_ids
from modeling_vift.testing_utils import random_images, tiny_vift


def _with_vpgc(model, layer=2, randomize=True, seed=0):
    """A copy of `model` with VPG-C at `layer`, all other weights equal; VPG-C weights random if `randomize`."""
    config = ViFTConfig.from_dict({**model.config.to_dict(), "vpgc_layer": layer})
    torch.manual_seed(seed)
    other = ViFTForConditionalGeneration(config).eval()
    missing, unexpected = other.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("model.vpgc.") for key in missing)
    if randomize:
        with torch.no_grad():
            for parameter in other.model.vpgc.parameters():
                parameter.normal_(0.0, 0.3)
    return other


def _batch(processor, image_counts, seed=0):
    texts = []
    for count in image_counts:
        texts.append(processor.apply_chat_template(
            [{"role": "user", "content": "<image>\n" * count + "which image has more shapes?"}], add_generation_prompt=True
        ))
    images = random_images(sum(image_counts), seed=seed)
    return processor(images=images or None, text=texts, return_tensors="pt", padding_side="left", return_text_only=True)


def test_untrained_vpgc_is_an_exact_no_op():
    model, processor = tiny_vift(seed=1)
    with_module = _with_vpgc(model, randomize=False)
    inputs = _batch(processor, [2, 1, 0])
    plain = model(**inputs).logits
    assert torch.equal(with_module(**inputs).logits, plain)


def test_vpgc_changes_every_image_of_a_multi_image_prompt():
    model, processor = tiny_vift(seed=2)
    with_module = _with_vpgc(model)
    inputs = _batch(processor, [2])
    captured = {}
    layer = with_module.model.language_model.layers[3]
    def record(module, args, kwargs):
        captured["h"] = (args[0] if args else kwargs["hidden_states"]).clone()

    handle = layer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with_module(**inputs)
        after = captured.pop("h")
        with_module.model.vpgc.reset_zero_projections()
        with_module(**inputs)
        before = captured.pop("h")
    finally:
        handle.remove()
    image_mask = inputs["input_ids"][0] == model.config.image_token_id
    tokens = model.config.image_seq_length
    image_positions = torch.nonzero(image_mask).flatten()
    for first, last in ((0, tokens), (tokens, 2 * tokens)):
        span = image_positions[first:last]
        assert (after[0, span] - before[0, span]).abs().amax() > 1e-4


def test_instruction_positions_in_padded_and_packed_rows():
    image = 9
    # padded row: [pad, pad, img, img, q, q, a, a]; labels mark the answer
    ids = torch.tensor([[0, 0, image, image, 5, 6, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    labels = torch.tensor([[-100] * 6 + [7, 8]])
    segments = sample_ids(None, mask, ids.shape)
    assert instruction_positions(ids == image, segments, labels, mask) == {(0, 0): 5}
    assert instruction_positions(ids == image, segments, None, mask) == {(0, 0): 7}  # prefill: last real token
    # packed row: two samples, each with an image, restarting positions
    ids = torch.tensor([[image, 4, 5, 6, image, 4, 7, 8, 9]])
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4]])
    labels = torch.tensor([[-100, -100, 5, 6, -100, -100, -100, 8, 9]])
    segments = sample_ids(position_ids, None, ids.shape)
    assert segments.tolist() == [[1, 1, 1, 1, 2, 2, 2, 2, 2]]
    assert instruction_positions(ids == image, segments, labels, None) == {(0, 1): 1, (0, 2): 6}


def test_packed_rows_equal_separate_samples_with_vpgc_on():
    model, processor = tiny_vift(seed=3)
    model = _with_vpgc(model, layer=1)
    samples = []
    for count, seed in ((1, 0), (2, 1), (0, 2)):
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": "<image>\n" * count + "describe"}, {"role": "assistant", "content": "two shapes"}]
        )
        enc = processor(images=random_images(count, seed=seed) or None, text=[prompt], return_tensors="pt")
        labels = enc["input_ids"].clone()
        labels[:, : labels.shape[1] - 4] = -100  # loss on the answer only
        samples.append((enc, labels))
    separate_logits, separate_losses, counts = [], [], []
    for enc, labels in samples:
        out = model(**enc, labels=labels)
        separate_logits.append(out.logits[0])
        separate_losses.append(out.loss * (labels[0, 1:] != -100).sum())
        counts.append((labels[0, 1:] != -100).sum())
    packed_ids = torch.cat([enc["input_ids"][0] for enc, _ in samples]).unsqueeze(0)
    packed_labels = torch.cat([labels[0] for _, labels in samples]).unsqueeze(0)
    position_ids = torch.cat([torch.arange(enc["input_ids"].shape[1]) for enc, _ in samples]).unsqueeze(0)
    pixel_values = torch.cat([enc["pixel_values"] for enc, _ in samples if "pixel_values" in enc])
    packed = model(input_ids=packed_ids, pixel_values=pixel_values, position_ids=position_ids, labels=packed_labels)
    start = 0
    for logits in separate_logits:
        torch.testing.assert_close(packed.logits[0, start:start + logits.shape[0]], logits, atol=1e-5, rtol=0)
        start += logits.shape[0]
    torch.testing.assert_close(packed.loss, sum(separate_losses) / sum(counts), atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_the_same_vpgc_gradients():
    model, processor = tiny_vift(seed=4)
    model = _with_vpgc(model, layer=2)
    inputs = _batch(processor, [1, 2])
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    batch = {k: v for k, v in inputs.items() if not k.startswith("text_")}

    def grads(checkpointing):
        model.zero_grad()
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()
        model(**batch, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.model.vpgc.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    model.gradient_checkpointing_disable()
    assert any(g.abs().sum() > 0 for g in plain.values())
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_vpgc_works_with_fused_generation():
    model, processor = tiny_vift(seed=5)
    untrained = _with_vpgc(model, randomize=False)
    trained = _with_vpgc(model)
    inputs = _batch(processor, [1, 2, 0])
    settings = dict(fusion=True, fusion_alpha=0.7, fusion_beta=0.4, fusion_layers=(1, 4), max_new_tokens=5,
                    do_sample=False, output_logits=True, return_dict_in_generate=True)
    reference = model.generate(**inputs, **settings)
    same = untrained.generate(**inputs, **settings)
    assert same.sequences.tolist() == reference.sequences.tolist()
    torch.testing.assert_close(same.logits[0], reference.logits[0], atol=1e-6, rtol=0)
    changed = trained.generate(**inputs, **settings)
    assert (changed.logits[0][:2] - reference.logits[0][:2]).abs().amax() > 1e-4  # rows with images
    torch.testing.assert_close(changed.logits[0][2], reference.logits[0][2], atol=1e-5, rtol=0)  # no image


def test_vpgc_parameter_share_and_config_validation():
    model, _ = tiny_vift(seed=6)
    with_module = _with_vpgc(model)
    added = sum(p.numel() for p in with_module.model.vpgc.parameters())
    assert added == sum(p.numel() for p in with_module.parameters()) - sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match=r"vpgc_layer=4 is out of range for a language model with 4 layers"):
        ViFTConfig.from_dict({**model.config.to_dict(), "vpgc_layer": 4})
    with pytest.raises(ValueError, match="divisible"):
        ViFTForConditionalGeneration(ViFTConfig.from_dict({**model.config.to_dict(), "vpgc_layer": 1, "vpgc_hidden_size": 10, "vpgc_num_heads": 4}))


@pytest.mark.parametrize("layer", [4, 7, -1, 1.5, True, "two"])
def test_vpgc_layer_outside_the_language_model_is_refused_by_config_model_and_recipe(tmp_path, layer):
    """Issue 17 item 7: a `vpgc_layer` that names no decoder layer (the tiny LM has 4: indices 0-3) is refused with the
    valid range wherever it enters: the config, a config edited after its check, and the VPG-C recipe's option."""
    from trl import ModelConfig

    from modeling_vift.training.trainer import ViFTScriptArguments, load_stage_model_and_processor

    model, processor = tiny_vift(seed=8)
    expected = r"vpgc_layer.*(out of range for a language model with 4 layers|whole decoder layer index).*\[0, 3\]"
    with pytest.raises(ValueError, match=expected):
        ViFTConfig.from_dict({**model.config.to_dict(), "vpgc_layer": layer})
    edited = ViFTConfig.from_dict(model.config.to_dict())
    edited.vpgc_layer = layer  # set after the config's own check
    with pytest.raises(ValueError, match=expected):
        ViFTForConditionalGeneration(edited)
    model.save_pretrained(tmp_path / "vift")
    processor.save_pretrained(tmp_path / "vift")
    with pytest.raises(ValueError, match=expected):
        load_stage_model_and_processor(ViFTScriptArguments(vpgc_layer=layer),
                                       ModelConfig(model_name_or_path=str(tmp_path / "vift")), stage="vpgc")


def test_vpgc_layer_accepts_every_decoder_layer_given_as_a_whole_number():
    model, _ = tiny_vift(seed=8)
    for layer, expected in ((0, 0), (3, 3), (2.0, 2), ("1", 1)):
        config = ViFTConfig.from_dict({**model.config.to_dict(), "vpgc_layer": layer})
        assert config.vpgc_layer == expected and isinstance(config.vpgc_layer, int)
        assert ViFTForConditionalGeneration(config).model.vpgc is not None


def test_remote_code_round_trip_with_vpgc_on(tmp_path):
    model, processor = tiny_vift(seed=7)
    model = _with_vpgc(model, layer=1)
    folder = tmp_path / "vift-vpgc"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert (folder / "vpgc_vift.py").exists()
    assert json.loads((folder / "config.json").read_text())["vpgc_layer"] == 1
    inputs = _batch(processor, [2])
    expected = model(**inputs).logits
    torch.save({k: v for k, v in inputs.items()}, tmp_path / "inputs.pt")
    script = f"""
import torch
from transformers import AutoModel
model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
assert model.model.vpgc is not None
inputs = torch.load({str(tmp_path / 'inputs.pt')!r})
torch.save(model(**inputs).logits, {str(tmp_path / 'logits.pt')!r})
"""
    result = run_python_without_vift(script, str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, atol=1e-6, rtol=0)
    assert os.path.getsize(folder / "vpgc_vift.py") > 0


@pytest.mark.parametrize("fusion", [None, "right", "token"])
def test_vpgc_generation_with_and_without_cache_is_the_same(fusion):
    """Without a cache every step recomputes the prompt and re-runs VPG-C; its guidance stays at the prompt's last
    token (not the newest generated one), so the greedy tokens and logits equal the cached run's."""
    model, processor = tiny_vift(seed=7)
    trained = _with_vpgc(model)
    inputs = _batch(processor, [2, 1, 0])
    settings = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    if fusion:
        settings.update(fusion=True, fusion_alignment=fusion, fusion_alpha=0.8, fusion_beta=0.5, fusion_layers=(1, 4))
    cached = trained.generate(**inputs, use_cache=True, **settings)
    uncached = trained.generate(**inputs, use_cache=False, **settings)
    assert uncached.sequences.tolist() == cached.sequences.tolist()
    for step, (a, b) in enumerate(zip(uncached.logits, cached.logits)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=f"step {step}")
