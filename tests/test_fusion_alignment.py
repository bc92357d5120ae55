"""Token-aligned fusion (issue 20): `fusion_alignment="token"` equals an independent sequential reference on
interleaved multi-image prompts (batched, with and without a cache, beam search and sampling), the right alignment
stays the default, `explain_fusion` shows both alignments, and the setting is chosen per call or by the configs."""

import pytest
import torch

from modeling_vift.remote_code.fusion_vift import fusion_columns, resolve_fusion_settings, token_alignment
from modeling_vift.testing_utils import random_images, tiny_vift
from tests.fusion_reference import reference_fused_generate
from tests.fusion_token_reference import reference_token_fused_generate


GEN = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
QUESTIONS = ["which image has more shapes?", "what changed between them?", "describe the scene."]


def _interleaved(processor, image_counts, system=True):
    """Chat prompts whose images sit between pieces of text (DEMON-style), as ChatPrompt strings."""
    texts = []
    for row, count in enumerate(image_counts):
        content = []
        for i in range(count):
            content += [{"type": "text", "text": f"Image {i + 1}:\n"}, {"type": "image"}]
        content.append({"type": "text", "text": QUESTIONS[row % len(QUESTIONS)]})
        messages = ([{"role": "system", "content": "you are helpful."}] if system else []) + [
            {"role": "user", "content": content}]
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True))
    return texts, random_images(sum(image_counts), seed=len(image_counts))


def _images_of(images, image_counts, row):
    start = sum(image_counts[:row])
    return images[start:start + image_counts[row]]


@pytest.mark.parametrize("vision,text", [("siglip", "qwen2"), ("clip", "llama")])
@pytest.mark.parametrize("use_cache", [True, False])
def test_token_aligned_fast_path_equals_sequential_reference(vision, text, use_cache):
    model, processor = tiny_vift(vision, text, seed=4)
    image_counts = [2, 0, 1]
    texts, images = _interleaved(processor, image_counts)
    batch = processor(images=images, text=texts, return_tensors="pt", padding_side="left", return_text_only=True)
    alpha, beta, layers = 1.3, 0.6, (1, 4)
    fast = model.generate(**batch, fusion=True, fusion_alignment="token", fusion_alpha=alpha, fusion_beta=beta,
                          fusion_layers=layers, use_cache=use_cache, **GEN)
    width = batch["input_ids"].shape[1]
    for row, prompt in enumerate(texts):
        row_images = _images_of(images, image_counts, row)
        single = processor(images=row_images or None, text=[prompt], return_tensors="pt", return_text_only=True)
        if row_images:
            ref = reference_token_fused_generate(model, single["input_ids"], single["pixel_values"],
                                                 single["text_input_ids"], alpha, beta, layers, **GEN)
        else:
            ref = model.generate(input_ids=single["input_ids"], **GEN)
        assert fast.sequences[row, width:].tolist() == ref.sequences[0, single["input_ids"].shape[1]:].tolist()
        torch.testing.assert_close(fast.logits[0][row], ref.logits[0][0], atol=1e-5, rtol=0)


def test_token_alignment_with_derived_text_prompt_pairs_every_text_token_with_itself():
    model, processor = tiny_vift(seed=5)
    texts, images = _interleaved(processor, [2])
    single = processor(images=images, text=texts, return_tensors="pt")
    derived_q = single["input_ids"][single["input_ids"] != model.config.image_token_id].unsqueeze(0)
    ref = reference_token_fused_generate(model, single["input_ids"], single["pixel_values"], derived_q, 0.8, 0.5,
                                         (0, 4), **GEN)
    fast = model.generate(**single, fusion=True, fusion_alignment="token", fusion_alpha=0.8, fusion_beta=0.5,
                          fusion_layers=(0, 4), **GEN)
    assert fast.sequences.tolist() == ref.sequences.tolist()
    torch.testing.assert_close(fast.logits[0], ref.logits[0], atol=1e-5, rtol=0)
    columns = fusion_columns(single["input_ids"], single["attention_mask"], derived_q, torch.ones_like(derived_q),
                             model.config.image_token_id, "token")
    text_columns = torch.nonzero(single["input_ids"][0] != model.config.image_token_id).flatten()
    assert columns[0].tolist() == text_columns.tolist()


def test_token_aligned_beam_search_and_sampling_match_reference():
    model, processor = tiny_vift(seed=6)
    texts, images = _interleaved(processor, [2])
    inputs = processor(images=images, text=texts, return_tensors="pt", return_text_only=True)
    settings = dict(fusion_alpha=1.1, fusion_beta=0.3, fusion_layers=(2, 4))
    ref_args = (inputs["input_ids"], inputs["pixel_values"], inputs["text_input_ids"], 1.1, 0.3, (2, 4))
    beam = dict(max_new_tokens=5, num_beams=3, num_return_sequences=2, do_sample=False)
    fast = model.generate(**inputs, fusion=True, fusion_alignment="token", **settings, **beam)
    assert fast.tolist() == reference_token_fused_generate(model, *ref_args, **beam).tolist()
    sample = dict(max_new_tokens=5, do_sample=True, top_k=0, num_return_sequences=3)
    torch.manual_seed(11)
    fast = model.generate(**inputs, fusion=True, fusion_alignment="token", **settings, **sample)
    torch.manual_seed(11)
    assert fast.tolist() == reference_token_fused_generate(model, *ref_args, **sample).tolist()


def test_right_alignment_stays_the_default_and_equals_the_authors_algorithm():
    model, processor = tiny_vift(seed=7)
    texts, images = _interleaved(processor, [2])
    inputs = processor(images=images, text=texts, return_tensors="pt", return_text_only=True)
    settings = dict(fusion_alpha=0.9, fusion_beta=0.4, fusion_layers=(0, 4))
    default = model.generate(**inputs, fusion=True, **settings, **GEN)
    right = model.generate(**inputs, fusion=True, fusion_alignment="right", **settings, **GEN)
    token = model.generate(**inputs, fusion=True, fusion_alignment="token", **settings, **GEN)
    ref = reference_fused_generate(model, inputs["input_ids"], inputs["pixel_values"], inputs["text_input_ids"],
                                   0.9, 0.4, (0, 4), **GEN)
    assert model.config.fusion_alignment == "right"
    torch.testing.assert_close(default.logits[0], ref.logits[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(right.logits[0], ref.logits[0], atol=1e-5, rtol=0)
    assert (token.logits[0] - right.logits[0]).abs().max() > 1e-4  # interleaved: the two alignments differ


def test_alignment_comes_from_call_then_generation_config_then_config():
    model, processor = tiny_vift(seed=8)
    texts, images = _interleaved(processor, [2])
    inputs = processor(images=images, text=texts, return_tensors="pt", return_text_only=True)
    settings = dict(fusion=True, fusion_alpha=0.9, fusion_beta=0.4, fusion_layers=(0, 4), **GEN)
    token = model.generate(**inputs, fusion_alignment="token", **settings).logits[0]
    right = model.generate(**inputs, fusion_alignment="right", **settings).logits[0]
    model.config.fusion_alignment = "token"
    torch.testing.assert_close(model.generate(**inputs, **settings).logits[0], token)
    model.generation_config.fusion_alignment = "right"
    torch.testing.assert_close(model.generate(**inputs, **settings).logits[0], right)
    torch.testing.assert_close(model.generate(**inputs, fusion_alignment="token", **settings).logits[0], token)
    with pytest.raises(ValueError, match="fusion_alignment must be one of"):
        model.generate(**inputs, fusion_alignment="left", **settings)
    from modeling_vift import ViFTConfig

    with pytest.raises(ValueError, match="fusion_alignment must be one of"):
        ViFTConfig(fusion_alignment="middle")


def test_all_four_fusion_settings_resolve_by_one_rule_and_one_validation():
    """alpha, beta, layers and the alignment each come from the call, else the generation config, else the model
    config (independently of one another), and a bad value is refused whichever source it came from."""
    model, _ = tiny_vift(seed=8)  # config: alpha 0.5, beta 0.5, layers the upper half [2, 4), alignment "right"
    assert resolve_fusion_settings(model) == (0.5, 0.5, (2, 4), "right")
    model.generation_config.fusion_beta = 0.25
    model.generation_config.fusion_alignment = "token"
    model.config.fusion_layers = [1, 3]
    assert resolve_fusion_settings(model) == (0.5, 0.25, (1, 3), "token")
    assert resolve_fusion_settings(model, 2.0, None, (0, 4), "right") == (2.0, 0.25, (0, 4), "right")
    for name, bad, message in (("fusion_alpha", float("nan"), "fusion_alpha must be a finite number"),
                               ("fusion_layers", [3, 9], r"fusion_layers=\[3, 9\) is invalid"),
                               ("fusion_alignment", "left", "fusion_alignment must be one of")):
        setattr(model.generation_config, name, bad)
        with pytest.raises(ValueError, match=message):
            resolve_fusion_settings(model)
        with pytest.raises(ValueError, match=message):
            resolve_fusion_settings(model, **{name: bad})
        setattr(model.generation_config, name, None)


def test_explain_fusion_shows_both_alignments():
    model, processor = tiny_vift(seed=9)
    texts, images = _interleaved(processor, [2])
    inputs = processor(images=images, text=texts, return_tensors="pt", return_text_only=True)
    both = model.explain_fusion(inputs["input_ids"], inputs["attention_mask"], inputs["text_input_ids"],
                                inputs["text_attention_mask"], tokenizer=processor.tokenizer, fusion_alignment=None)
    right, token = both["right"][0], both["token"][0]
    assert len(right) == inputs["text_input_ids"].shape[1]
    assert any(entry["token"] == "<image>" for entry in right)  # right alignment puts text on image tokens
    assert token and all(entry["token"] == entry["text_token"] for entry in token)
    positions = [entry["position"] for entry in token]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)  # monotone, one to one
    assert model.explain_fusion(inputs["input_ids"], inputs["attention_mask"], inputs["text_input_ids"],
                                inputs["text_attention_mask"], tokenizer=processor.tokenizer) == both["right"] and right


def test_token_alignment_keeps_text_newlines_on_their_own_copy():
    """q = the prompt without the newline its image placeholder added: q's newline pairs with the real one (before
    the image), the placeholder's newline is left alone, and tokens missing from q are skipped, not shifted."""
    image, nl = 99, 10
    mm = [1, 2, nl, image, image, nl, 3, 4]
    q = [1, 2, nl, 3, 4]
    assert token_alignment(q, mm, image) == [(0, 0), (1, 1), (2, 2), (3, 6), (4, 7)]
    assert token_alignment([1, 7, 3], [1, image, 5, 3], image) == [(0, 0), (2, 3)]
