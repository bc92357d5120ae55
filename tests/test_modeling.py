"""ViFTForConditionalGeneration: forward, loss, generate, batching, packing, attention back-ends, training modes."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface, AutoConfig, AutoModelForImageTextToText
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from modeling_vift import ViFTConfig, ViFTForConditionalGeneration
from modeling_vift.remote_code.modeling_vift import CACHE_NAME, cache_of, packed_shift_labels
from modeling_vift.testing_utils import random_images, tiny_text_config, tiny_vift, tiny_vision_config


COMBOS = [("siglip", "qwen2"), ("clip", "llama")]
COMBO_IDS = ["siglip-qwen2", "clip-llama"]

# Three samples with 0, 1 and 2 images (interleaved with text in the third).
TEXTS = [
    "how many shapes are there? answer with one word",
    "<image>\ndescribe the image in detail",
    "image 1: <image> image 2: <image> which of the two images has more shapes?",
]


def samples(processor, seed=0):
    images = random_images(3, seed=seed)
    per_sample = [[], images[:1], images[1:]]
    singles = [processor(images=imgs or None, text=text, return_tensors="pt") for text, imgs in zip(TEXTS, per_sample)]
    return per_sample, singles


def left_padded_position_ids(attention_mask):
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def greedy_without_cache(model, inputs, steps):
    """Reference decoding: a full forward over the whole sequence at every step (no cache, images every step)."""
    ids = inputs["input_ids"]
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=ids, pixel_values=inputs.get("pixel_values"), use_cache=False).logits
        ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=-1)
    return ids


@pytest.mark.parametrize("vision,text", COMBOS, ids=COMBO_IDS)
def test_forward_loss_and_generate(vision, text):
    model, processor = tiny_vift(vision, text)
    _, singles = samples(processor)
    inputs = singles[2]
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)
    out = model(**inputs, labels=labels)
    assert out.logits.shape == (*inputs["input_ids"].shape, model.config.text_config.vocab_size)
    assert out.image_hidden_states.shape == (2, model.config.image_seq_length, model.config.text_config.hidden_size)
    expected = F.cross_entropy(out.logits[0, :-1], labels[0, 1:], ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
    assert next(model.vision_tower.parameters()).grad is not None

    generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 6)
    assert torch.equal(generated, greedy_without_cache(model, inputs, 6))


def test_pixel_values_reach_the_vision_tower_only_on_prefill():
    model, processor = tiny_vift()
    _, singles = samples(processor)
    calls = []
    handle = model.vision_tower.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        model.generate(**singles[2], max_new_tokens=5, do_sample=False)
    finally:
        handle.remove()
    assert calls == [2]


@pytest.mark.parametrize("vision,text", COMBOS, ids=COMBO_IDS)
def test_mixed_image_counts_batch_matches_each_sample_alone(vision, text):
    model, processor = tiny_vift(vision, text)
    per_sample, singles = samples(processor)
    batch = processor(images=per_sample, text=TEXTS, return_tensors="pt", padding_side="left")
    assert batch["pixel_values"].shape[0] == 3
    assert batch["attention_mask"][0, 0] == 0  # left padding in the shortest row
    position_ids = left_padded_position_ids(batch["attention_mask"])
    # Padding is never a target, and neither is a row's first token (alone, nothing precedes it).
    labels = batch["input_ids"].masked_fill((batch["attention_mask"] == 0) | (position_ids == 0), -100)
    with torch.no_grad():
        out = model(**batch, position_ids=position_ids, labels=labels)

    losses, counts = [], []
    for row, single in enumerate(singles):
        length = single["input_ids"].shape[1]
        with torch.no_grad():
            alone = model(**single, labels=single["input_ids"])
        torch.testing.assert_close(out.logits[row, -length:], alone.logits[0], rtol=0, atol=1e-5)
        losses.append(alone.loss)
        counts.append(int((single["input_ids"][0, 1:] != model.config.image_token_id).sum()))  # placeholders: no target
    expected_loss = sum(l * n for l, n in zip(losses, counts)) / sum(counts)
    torch.testing.assert_close(out.loss, expected_loss, rtol=1e-6, atol=1e-6)

    generated = model.generate(**batch, max_new_tokens=6, do_sample=False)
    width = batch["input_ids"].shape[1]
    for row, single in enumerate(singles):
        alone = model.generate(**single, max_new_tokens=6, do_sample=False)
        assert generated[row, width:].tolist() == alone[0, single["input_ids"].shape[1]:].tolist()


def pack(singles):
    """Padding-free packing: one row, position_ids restarting at 0 per sample, images of all samples in order."""
    input_ids = torch.cat([s["input_ids"][0] for s in singles])[None]
    position_ids = torch.cat([torch.arange(s["input_ids"].shape[1]) for s in singles])[None]
    pixel_values = torch.cat([s["pixel_values"] for s in singles if "pixel_values" in s])
    return input_ids, position_ids, pixel_values


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("vision,text", COMBOS, ids=COMBO_IDS)
def test_packed_rows_match_separate_samples(vision, text, attn):
    model, processor = tiny_vift(vision, text)
    model.set_attn_implementation(attn)
    _, singles = samples(processor)
    input_ids, position_ids, pixel_values = pack(singles)

    seen = []
    hook = model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs.get(CACHE_NAME), kwargs.get("use_cache"))),
        with_kwargs=True,
    )
    try:
        with torch.no_grad():
            # use_cache=True is what eval-mode callers often pass: the packed path must still build no cache.
            packed = model(input_ids=input_ids, position_ids=position_ids, pixel_values=pixel_values,
                           labels=input_ids, use_cache=True)
    finally:
        hook.remove()
    assert seen == [(None, False)]
    assert cache_of(packed) is None

    offset, weighted, count = 0, 0.0, 0
    for single in singles:
        length = single["input_ids"].shape[1]
        with torch.no_grad():
            alone = model(**single, labels=single["input_ids"])
        torch.testing.assert_close(packed.logits[0, offset:offset + length], alone.logits[0], rtol=0, atol=1e-5)
        targets = int((single["input_ids"][0, 1:] != model.config.image_token_id).sum())  # placeholders: no target
        weighted += alone.loss * targets
        count += targets
        offset += length
    torch.testing.assert_close(packed.loss, weighted / count, rtol=1e-6, atol=1e-6)


def test_packed_shift_labels_never_cross_a_sample_boundary():
    labels = torch.tensor([[10, 11, 12, 20, 21, 30]])
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0]])
    assert packed_shift_labels(labels, position_ids).tolist() == [[11, 12, -100, 21, -100, -100]]


def test_training_forward_builds_no_cache():
    model, processor = tiny_vift()
    per_sample, _ = samples(processor)
    batch = processor(images=per_sample, text=TEXTS, return_tensors="pt", padding_side="right")
    model.train()
    out = model(**batch, labels=batch["input_ids"])
    assert cache_of(out) is None
    model.eval()
    with torch.no_grad():
        assert cache_of(model(**batch)) is not None  # inference keeps the cache for generation


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    model, processor = tiny_vift("clip", "llama")
    folder = tmp_path_factory.mktemp("tiny-vift")
    model.save_pretrained(folder)
    _, singles = samples(processor)
    return folder, model, singles[2]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attn_implementation_reaches_both_towers(saved_tiny, attn):
    folder, original, inputs = saved_tiny
    model = ViFTForConditionalGeneration.from_pretrained(folder, attn_implementation=attn)
    assert model.config._attn_implementation == attn
    assert model.config.vision_config._attn_implementation == attn
    assert model.config.text_config._attn_implementation == attn
    assert model.vision_tower.config._attn_implementation == attn
    assert model.language_model.config._attn_implementation == attn
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, original(**inputs).logits, rtol=0, atol=1e-5)


def test_registered_attention_function_runs_in_both_towers(saved_tiny):
    folder, original, inputs = saved_tiny
    callers = []

    def counting_attention(module, *args, **kwargs):
        callers.append(type(module).__name__)
        return sdpa_attention_forward(module, *args, **kwargs)

    AttentionInterface.register("vift_test_counting", counting_attention)
    AttentionMaskInterface.register("vift_test_counting", sdpa_mask)
    model = ViFTForConditionalGeneration.from_pretrained(folder, attn_implementation="vift_test_counting")
    with torch.no_grad():
        logits = model(**inputs).logits
    vision_layers = model.config.vision_config.num_hidden_layers
    text_layers = model.config.text_config.num_hidden_layers
    assert sorted(callers) == sorted(["CLIPAttention"] * vision_layers + ["LlamaAttention"] * text_layers)
    torch.testing.assert_close(logits, original(**inputs).logits, rtol=0, atol=1e-5)


def test_flash_attention_2_request_is_supported_and_passed_to_both_sub_configs(saved_tiny):
    # flash-attn needs a CUDA GPU: check every step short of running the kernel.
    folder, original, _ = saved_tiny
    for cls in (ViFTForConditionalGeneration, type(original.vision_tower), type(original.language_model)):
        assert cls._supports_flash_attn, f"{cls.__name__} does not declare flash-attention support"
    config = ViFTConfig.from_pretrained(folder)
    config._attn_implementation = "flash_attention_2"
    assert config.vision_config._attn_implementation == "flash_attention_2"
    assert config.text_config._attn_implementation == "flash_attention_2"
    # Without the flash_attn package the request fails at load time with transformers' own clear message.
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="FlashAttention2"):
            ViFTForConditionalGeneration.from_pretrained(folder, attn_implementation="flash_attention_2")


def test_gradient_checkpointing_trains_a_step_with_the_same_gradients():
    model, processor = tiny_vift()
    per_sample, _ = samples(processor)
    batch = processor(images=per_sample, text=TEXTS, return_tensors="pt", padding_side="right")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model.train()
    for module in model.modules():  # dropout off, so both runs compute the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0

    model(**batch, labels=labels).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.language_model.gradient_checkpointing
    assert model.vision_tower.encoder.gradient_checkpointing
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = model(**batch, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        if name in reference:
            torch.testing.assert_close(param.grad, reference[name], rtol=1e-4, atol=1e-6, msg=name)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("model.language_model.") for n in changed)
    assert any(n.startswith("model.vision_tower.") for n in changed)
    assert any(n.startswith("model.multi_modal_projector.") for n in changed)


def test_bf16_forward_and_generate_on_cpu():
    model, processor = tiny_vift()
    _, singles = samples(processor)
    inputs = singles[2]
    with torch.no_grad():
        reference = model(**inputs).logits
    model.to(torch.bfloat16)
    with torch.no_grad():
        out = model(**inputs)  # pixel_values stay float32: the model casts them to the tower's dtype
    assert out.logits.dtype == torch.bfloat16
    assert torch.isfinite(out.logits.float()).all()
    # bf16 keeps ~3 significant digits; tiny random logits lie within a few units.
    assert (out.logits.float() - reference).abs().max() < 0.1
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4


def test_device_map_auto_loads_on_cpu(saved_tiny):
    folder, original, inputs = saved_tiny
    model = AutoModelForImageTextToText.from_pretrained(folder, device_map="auto")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, original(**inputs).logits, rtol=0, atol=0)


def test_config_fields_round_trip(tmp_path):
    config = ViFTConfig(
        vision_config=tiny_vision_config("clip").to_dict(),
        text_config=tiny_text_config("llama", num_hidden_layers=6).to_dict(),
        image_token_id=7,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        projector_depth=3,
        projector_hidden_act="silu",
        fusion_alpha=0.25,
        fusion_beta=0.75,
        fusion_layers=(1, 5),
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is ViFTConfig
    for field in ("image_token_id", "vision_feature_layer", "vision_feature_select_strategy", "projector_depth",
                  "projector_hidden_act", "fusion_alpha", "fusion_beta", "fusion_layers", "image_seq_length"):
        assert getattr(loaded, field) == getattr(config, field), field
    assert loaded.fusion_layers == [1, 5]
    assert loaded.image_seq_length == 17  # 4x4 patches + CLIP's class token, kept by "full"
    assert loaded.vision_config.model_type == "clip_vision_model"
    assert loaded.text_config.model_type == "llama"


def test_config_defaults():
    config = ViFTConfig(text_config=tiny_text_config("qwen2", num_hidden_layers=6).to_dict(),
                        vision_config=tiny_vision_config("clip").to_dict())
    assert config.fusion_layers == [3, 6]  # the upper half of the language model
    assert config.vision_feature_layer == -2
    assert config.projector_hidden_act == "gelu"
    assert config.projector_depth == 2
    assert config.image_seq_length == 16  # "default" drops CLIP's class token
    default = ViFTConfig()
    assert default.vision_config.model_type == "siglip_vision_model"
    assert default.text_config.model_type == "qwen2"


def test_projector_depth_sets_the_number_of_linear_layers():
    model, processor = tiny_vift(projector_depth=3)
    linears = [m for m in model.multi_modal_projector.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3
    _, singles = samples(processor)
    with torch.no_grad():
        assert torch.isfinite(model(**singles[1]).logits).all()


def test_tied_word_embeddings_stay_tied_after_save_and_load(tmp_path):
    config = ViFTConfig(
        vision_config=tiny_vision_config("siglip").to_dict(),
        text_config=tiny_text_config("qwen2", tie_word_embeddings=True).to_dict(),
        image_token_id=3,
    )
    assert config.tie_word_embeddings  # follows the language model's setting
    tied = ViFTForConditionalGeneration(config)
    assert tied.lm_head.weight is tied.get_input_embeddings().weight
    tied.save_pretrained(tmp_path)
    loaded = ViFTForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    torch.testing.assert_close(loaded.lm_head.weight, tied.lm_head.weight, rtol=0, atol=0)


def test_empty_pixel_values_mean_no_images():
    model, processor = tiny_vift()
    _, singles = samples(processor)
    inputs = singles[0]
    with torch.no_grad():
        without = model(**inputs).logits
        empty = model(**inputs, pixel_values=torch.zeros(0, 3, 32, 32)).logits
    torch.testing.assert_close(empty, without, rtol=0, atol=0)


def test_image_placeholders_are_never_loss_targets():
    """TRL's generic collator labels every token; the model ignores image-placeholder targets itself."""
    model, processor = tiny_vift()
    inputs = processor(images=random_images(1), text=["<image>\ntwo red circles"], return_tensors="pt")
    all_labels = model(**inputs, labels=inputs["input_ids"]).loss
    masked = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)
    torch.testing.assert_close(all_labels, model(**inputs, labels=masked).loss)


def test_apply_chat_template_honours_processor_kwargs_as_trl_passes_them():
    model, processor = tiny_vift()
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "how many?"}]},
                 {"role": "assistant", "content": [{"type": "text", "text": "two"}]}],
                [{"role": "user", "content": [{"type": "text", "text": "a much longer question without any image"}]},
                 {"role": "assistant", "content": [{"type": "text", "text": "yes"}]}]]
    out = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt", images=random_images(1),
        processor_kwargs={"padding": True, "padding_side": "right", "add_special_tokens": False},
    )
    assert out["attention_mask"][0, -1] == 0 or out["attention_mask"][1, -1] == 0  # right padding applied
    assert out["pixel_values"].shape[0] == 1
    with pytest.raises(ValueError, match="assistant token masks"):
        processor.apply_chat_template(messages, tokenize=True, images=random_images(1), return_assistant_tokens_mask=True)


def test_embedding_accessors_reach_the_language_models_embeddings_and_the_lm_head():
    # PreTrainedModel's accessors find them through `language_model` (ViFT defines none of its own).
    model, _ = tiny_vift()
    embed_tokens = model.model.language_model.embed_tokens
    assert model.get_input_embeddings() is embed_tokens and model.model.get_input_embeddings() is embed_tokens
    assert model.get_output_embeddings() is model.lm_head
    replacement = torch.nn.Embedding(embed_tokens.num_embeddings, embed_tokens.embedding_dim)
    model.set_input_embeddings(replacement)
    assert model.model.language_model.embed_tokens is replacement
    head = torch.nn.Linear(embed_tokens.embedding_dim, embed_tokens.num_embeddings, bias=False)
    model.set_output_embeddings(head)
    assert model.lm_head is head
    model.resize_token_embeddings(embed_tokens.num_embeddings + 4)
    assert model.get_input_embeddings().num_embeddings == model.lm_head.out_features == embed_tokens.num_embeddings + 4
