"""Fused-representation generate (issue 3): the batched fast path equals a plain sequential implementation of the
authors' algorithm, leaves the model untouched, and rejects bad settings clearly."""

import random
import threading

import pytest
import torch

from modeling_vift.remote_code.fusion_vift import decoder_layers
from modeling_vift.testing_utils import random_images, tiny_vift
from tests.fusion_reference import reference_fused_generate


PROMPTS = [
    "how many shapes are there? answer with one word",
    "describe the image.",
    "what colour is the large shape in the picture? answer with one word please",
]


def _sample_prompts(processor, image_counts, seed):
    images = random_images(sum(image_counts), seed=seed)
    texts, per_row_images, cursor = [], [], 0
    for row, count in enumerate(image_counts):
        prefix = "<image>\n" * count
        texts.append(processor.apply_chat_template(
            [{"role": "user", "content": prefix + PROMPTS[row % len(PROMPTS)]}], add_generation_prompt=True
        ))
        per_row_images.append(images[cursor:cursor + count])
        cursor += count
    return texts, per_row_images


def _row_inputs(processor, text, images):
    return processor(images=images or None, text=[text], return_tensors="pt", return_text_only=True)


GEN = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)


def _assert_fast_path_matches_reference(model, processor, image_counts, alpha, beta, layers, seed):
    texts, row_images = _sample_prompts(processor, image_counts, seed)
    flat_images = [image for images in row_images for image in images]
    batch = processor(
        images=flat_images or None, text=texts, return_tensors="pt", padding_side="left", return_text_only=True
    )
    fast = model.generate(**batch, fusion=True, fusion_alpha=alpha, fusion_beta=beta, fusion_layers=layers, **GEN)
    prompt_width = batch["input_ids"].shape[1]
    for row, (text, images) in enumerate(zip(texts, row_images)):
        single = _row_inputs(processor, text, images)
        if images:
            ref = reference_fused_generate(
                model, single["input_ids"], single["pixel_values"], single["text_input_ids"], alpha, beta, layers, **GEN
            )
        else:
            ref = model.generate(input_ids=single["input_ids"], **GEN)
        ref_tokens = ref.sequences[0, single["input_ids"].shape[1]:]
        fast_tokens = fast.sequences[row, prompt_width:]
        assert fast_tokens.tolist() == ref_tokens.tolist(), f"row {row} ({len(images)} images)"
        torch.testing.assert_close(fast.logits[0][row], ref.logits[0][0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("vision,text", [("siglip", "qwen2"), ("clip", "llama")])
@pytest.mark.parametrize("case", range(4))
def test_fast_path_equals_sequential_reference(vision, text, case):
    rng = random.Random(f"{vision}-{text}-{case}")
    model, processor = tiny_vift(vision, text, seed=case)
    num_layers = model.config.text_config.num_hidden_layers
    layer_choices = [(0, num_layers), (num_layers // 2, num_layers), (1, 2), (num_layers - 1, num_layers)]
    layers = layer_choices[case]
    alpha, beta = rng.uniform(-1.0, 2.0), rng.uniform(-1.0, 2.0)
    image_counts = rng.sample([0, 1, 2], 3)  # prompts of different lengths with 0, 1 and 2 images, shuffled
    _assert_fast_path_matches_reference(model, processor, image_counts, alpha, beta, layers, seed=case)


def test_fast_path_equals_reference_with_derived_text_prompt():
    """Without text_input_ids, q is input_ids minus its image tokens (the newline after <image> stays)."""
    model, processor = tiny_vift(seed=3)
    text, images = _sample_prompts(processor, [1], seed=3)
    single = processor(images=images[0], text=text, return_tensors="pt")
    derived_q = single["input_ids"][single["input_ids"] != model.config.image_token_id].unsqueeze(0)
    ref = reference_fused_generate(model, single["input_ids"], single["pixel_values"], derived_q, 0.7, 0.4, (1, 4), **GEN)
    fast = model.generate(**single, fusion=True, fusion_alpha=0.7, fusion_beta=0.4, fusion_layers=(1, 4), **GEN)
    assert fast.sequences.tolist() == ref.sequences.tolist()
    torch.testing.assert_close(fast.logits[0], ref.logits[0], atol=1e-5, rtol=0)


def test_fusion_changes_the_prefill_and_zero_weights_do_not():
    model, processor = tiny_vift(seed=1)
    texts, images = _sample_prompts(processor, [1], seed=1)
    inputs = processor(images=images[0], text=texts, return_tensors="pt", return_text_only=True)
    plain = model.generate(**inputs, **GEN)
    zero = model.generate(**inputs, fusion=True, fusion_alpha=0.0, fusion_beta=0.0, **GEN)
    fused = model.generate(**inputs, fusion=True, fusion_alpha=1.5, fusion_beta=0.5, fusion_layers=(0, 4), **GEN)
    torch.testing.assert_close(zero.logits[0], plain.logits[0], atol=1e-6, rtol=0)
    assert (fused.logits[0] - plain.logits[0]).abs().max() > 1e-3


def test_fusion_false_and_imageless_batches_are_ordinary_generation():
    model, processor = tiny_vift(seed=2)
    texts, _ = _sample_prompts(processor, [0, 0], seed=2)
    inputs = processor(text=texts, return_tensors="pt", padding_side="left", return_text_only=True)
    plain = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **GEN)
    for fusion in (False, True):
        out = model.generate(**inputs, fusion=fusion, **GEN)
        assert out.sequences.tolist() == plain.sequences.tolist()


def test_beam_search_and_sampling_match_reference():
    model, processor = tiny_vift(seed=4)
    texts, images = _sample_prompts(processor, [2], seed=4)
    inputs = processor(images=images[0], text=texts, return_tensors="pt", return_text_only=True)
    settings = dict(fusion_alpha=0.8, fusion_beta=0.3, fusion_layers=(1, 3))
    args = (model, inputs["input_ids"], inputs["pixel_values"], inputs["text_input_ids"], 0.8, 0.3, (1, 3))

    beam = dict(max_new_tokens=5, num_beams=3, num_return_sequences=2, do_sample=False)
    assert model.generate(**inputs, fusion=True, **settings, **beam).tolist() == reference_fused_generate(*args, **beam).tolist()

    sample = dict(max_new_tokens=5, do_sample=True, top_k=20, temperature=1.3)
    torch.manual_seed(11)
    fast = model.generate(**inputs, fusion=True, **settings, **sample)
    torch.manual_seed(11)
    assert fast.tolist() == reference_fused_generate(*args, **sample).tolist()


def test_streamer_and_stop_strings_work_with_fusion():
    from transformers import TextIteratorStreamer

    model, processor = tiny_vift(seed=5)
    texts, images = _sample_prompts(processor, [1], seed=5)
    inputs = processor(images=images[0], text=texts, return_tensors="pt", return_text_only=True)
    # A streamer waits for tokens forever unless told otherwise: the timeout and `end()` on error make a dying
    # generation thread fail this test instead of hanging it.
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, timeout=120)
    result = {}

    def generate():
        try:
            result["out"] = model.generate(**inputs, fusion=True, max_new_tokens=8, streamer=streamer)
        except BaseException as error:  # re-raised in the test's thread below
            result["error"] = error
            streamer.end()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    streamed = "".join(streamer)
    thread.join(timeout=120)
    if "error" in result:
        raise result["error"]
    assert not thread.is_alive(), "the generating thread did not finish"
    new_tokens = result["out"][0, inputs["input_ids"].shape[1]:]
    assert streamed == processor.tokenizer.decode(new_tokens, skip_special_tokens=True)

    full = model.generate(**inputs, fusion=True, max_new_tokens=8, do_sample=False)
    text = processor.tokenizer.decode(full[0, inputs["input_ids"].shape[1]:])
    stop = text[len(text) // 2:len(text) // 2 + 1] if len(text) > 2 else None
    if stop and stop.strip():
        stopped = model.generate(
            **inputs, fusion=True, max_new_tokens=8, do_sample=False, stop_strings=[stop], tokenizer=processor.tokenizer
        )
        assert stopped.shape[1] <= full.shape[1]
        assert stop in processor.tokenizer.decode(stopped[0, inputs["input_ids"].shape[1]:])


def _hook_counts(model):
    return [len(layer._forward_pre_hooks) + len(layer._forward_hooks) for layer in decoder_layers(model.model.language_model)]


def test_model_is_restored_after_return_and_after_exception():
    model, processor = tiny_vift(seed=6)
    texts, images = _sample_prompts(processor, [1], seed=6)
    inputs = processor(images=images[0], text=texts, return_tensors="pt", return_text_only=True)
    before_hooks = _hook_counts(model)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    baseline = model.generate(**inputs, **GEN)

    model.generate(**inputs, fusion=True, fusion_layers=(0, 4), **GEN)
    assert _hook_counts(model) == before_hooks

    class Boom(RuntimeError):
        pass

    def exploding_criterion(input_ids, scores, **kwargs):
        raise Boom("raised during decoding")

    from transformers import StoppingCriteriaList

    with pytest.raises(Boom):
        model.generate(
            **inputs, fusion=True, fusion_layers=(0, 4), max_new_tokens=4, stopping_criteria=StoppingCriteriaList([exploding_criterion])
        )
    assert _hook_counts(model) == before_hooks
    after = model.generate(**inputs, **GEN)
    assert after.sequences.tolist() == baseline.sequences.tolist()
    torch.testing.assert_close(after.logits[0], baseline.logits[0], atol=0, rtol=0)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before_state[name]), name


def test_two_models_never_see_each_others_vectors():
    model_a, processor = tiny_vift(seed=7)
    model_b, _ = tiny_vift(seed=8)
    texts, images = _sample_prompts(processor, [1], seed=7)
    inputs = processor(images=images[0], text=texts, return_tensors="pt", return_text_only=True)
    baseline_b = model_b.generate(**inputs, **GEN)

    seen_inside = {}

    class CallB:
        """A stopping criterion on model A that runs model B while A's steering hooks are live."""

        def __call__(self, input_ids, scores, **kwargs):
            if "out" not in seen_inside:
                seen_inside["out"] = model_b.generate(**inputs, **GEN)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    from transformers import StoppingCriteriaList

    model_a.generate(**inputs, fusion=True, fusion_layers=(0, 4), max_new_tokens=3, stopping_criteria=StoppingCriteriaList([CallB()]))
    assert seen_inside["out"].sequences.tolist() == baseline_b.sequences.tolist()
    torch.testing.assert_close(seen_inside["out"].logits[0], baseline_b.logits[0], atol=0, rtol=0)
    fused_b = model_b.generate(**inputs, fusion=True, fusion_layers=(0, 4), **GEN)
    ref_b = reference_fused_generate(
        model_b, inputs["input_ids"], inputs["pixel_values"], inputs["text_input_ids"],
        model_b.config.fusion_alpha, model_b.config.fusion_beta, (0, 4), **GEN,
    )
    assert fused_b.sequences.tolist() == ref_b.sequences.tolist()


def test_vision_tower_runs_once_and_text_capture_stops_early():
    model, processor = tiny_vift(seed=9)
    texts, images = _sample_prompts(processor, [2, 1], seed=9)
    flat = [image for row in images for image in row]
    inputs = processor(images=flat, text=texts, return_tensors="pt", padding_side="left", return_text_only=True)
    calls = {"vision": 0, "lm_head": 0, "layers": [0] * model.config.text_config.num_hidden_layers}
    hooks = [model.model.vision_tower.register_forward_hook(lambda *a: calls.__setitem__("vision", calls["vision"] + 1))]
    hooks.append(model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("lm_head", calls["lm_head"] + 1)))
    for index, layer in enumerate(decoder_layers(model.model.language_model)):
        hooks.append(layer.register_forward_hook(lambda *a, i=index: calls["layers"].__setitem__(i, calls["layers"][i] + 1)))
    try:
        model.generate(**inputs, fusion=True, fusion_layers=(1, 3), max_new_tokens=4, do_sample=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls["vision"] == 1
    assert calls["lm_head"] == 4  # prefill + 3 decoding steps; the capture passes never reach the head
    # layers 0..1 run in both capture passes (they stop at the input of layer 2 = e-1) and in the 4 generation steps
    assert calls["layers"] == [6, 6, 4, 4]


def test_explain_shows_alignment_of_text_only_tokens():
    model, processor = tiny_vift(seed=10)
    system = {"role": "system", "content": "be brief."}
    text = processor.apply_chat_template(
        [system, {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "how many shapes?"}]}],
        add_generation_prompt=True,
    )
    inputs = processor(images=random_images(1), text=[text], return_tensors="pt", return_text_only=True)
    rows = model.explain_fusion(
        inputs["input_ids"], inputs["attention_mask"], inputs["text_input_ids"], inputs["text_attention_mask"],
        tokenizer=processor.tokenizer,
    )
    entries = rows[0]
    n = int(inputs["text_attention_mask"].sum())
    width = inputs["input_ids"].shape[1]
    assert [e["position"] for e in entries] == list(range(width - n, width))
    assert [e["text_position"] for e in entries] == list(range(n))
    assert entries[-1]["token"] == entries[-1]["text_token"]  # right-aligned: the prompts end alike
    # the system prompt of q lands on the image tokens of (v,q), as in the authors' code
    question_start = n - len(processor.tokenizer("how many shapes?<|im_end|>\n<|im_start|>assistant\n")["input_ids"])
    on_image = [e for e in entries if e["token"] == processor.image_token]
    image_aligned = [e["text_position"] for e in on_image]
    assert len(on_image) == model.config.image_seq_length
    assert image_aligned == list(range(image_aligned[0], image_aligned[0] + len(on_image)))
    assert image_aligned[-1] < question_start  # only system-prompt / header tokens of q sit on image positions
    # after the image block and its newline, the two prompts are the same tokens, aligned one to one
    question_entries = entries[-(n - question_start):]
    assert all(e["token"] == e["text_token"] for e in question_entries)


def test_bf16_fused_generation_runs():
    model, processor = tiny_vift(seed=12)
    model = model.to(torch.bfloat16)
    texts, images = _sample_prompts(processor, [1, 0], seed=12)
    inputs = processor(images=images[0], text=texts, return_tensors="pt", padding_side="left", return_text_only=True)
    out = model.generate(**inputs, fusion=True, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 4)


def test_generation_config_supplies_fusion_defaults():
    model, processor = tiny_vift(seed=13)
    texts, images = _sample_prompts(processor, [1], seed=13)
    inputs = processor(images=images[0], text=texts, return_tensors="pt", return_text_only=True)
    explicit = model.generate(**inputs, fusion=True, fusion_alpha=1.2, fusion_beta=0.1, fusion_layers=(0, 2), **GEN)
    model.generation_config.fusion = True
    model.generation_config.fusion_alpha = 1.2
    model.generation_config.fusion_beta = 0.1
    model.generation_config.fusion_layers = [0, 2]
    implicit = model.generate(**inputs, **GEN)
    assert implicit.sequences.tolist() == explicit.sequences.tolist()


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(fusion_layers=(0, 9)), "fusion_layers=\\[0, 9\\)"),
        (dict(fusion_layers=(2, 2)), "fusion_layers=\\[2, 2\\)"),
        (dict(fusion_layers=(-1, 2)), "fusion_layers=\\[-1, 2\\)"),
        (dict(fusion_layers=(1,)), "pair"),
        (dict(fusion_alpha=float("nan")), "fusion_alpha must be a finite number, got nan"),
        (dict(fusion_beta=float("inf")), "fusion_beta must be a finite number, got inf"),
    ],
)
def test_bad_fusion_settings_raise_clear_errors(settings, message):
    model, processor = tiny_vift(seed=14)
    texts, images = _sample_prompts(processor, [1], seed=14)
    inputs = processor(images=images[0], text=texts, return_tensors="pt", return_text_only=True)
    with pytest.raises(ValueError, match=message):
        model.generate(**inputs, fusion=True, max_new_tokens=2, **settings)


def test_text_prompt_longer_than_multimodal_prompt_is_rejected():
    model, processor = tiny_vift(seed=15)
    inputs = processor(images=random_images(1), text=["<image>\nhi"], return_tensors="pt")
    long_q = processor(text=["a much longer text only prompt than the multimodal one, by far " * 2], return_tensors="pt")
    with pytest.raises(ValueError, match=r"text-only prompt of row 0 has \d+ tokens but its multimodal prompt only \d+"):
        model.generate(**inputs, fusion=True, text_input_ids=long_q["input_ids"], max_new_tokens=2)


def test_fusion_with_inputs_embeds_only_is_rejected():
    model, processor = tiny_vift(seed=16)
    inputs = processor(images=random_images(1), text=["<image>\nhi"], return_tensors="pt")
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    with pytest.raises(ValueError, match="needs input_ids"):
        model.generate(inputs_embeds=embeds, pixel_values=inputs["pixel_values"], fusion=True, max_new_tokens=2)


def test_right_padded_prompts_are_rejected_for_fusion():
    model, processor = tiny_vift(seed=17)
    texts, images = _sample_prompts(processor, [1, 1], seed=17)
    flat = [image for row in images for image in row]
    inputs = processor(images=flat, text=[texts[0], texts[1] + " more words here"], return_tensors="pt", padding_side="right")
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(**inputs, fusion=True, max_new_tokens=2)


def test_fused_generation_with_device_map_auto_matches(tmp_path):
    from modeling_vift import ViFTForConditionalGeneration

    model, processor = tiny_vift(seed=18)
    model.save_pretrained(tmp_path)
    # On this CPU-only machine "auto" places everything on the CPU; the GPU split is exercised on GPU machines.
    mapped = ViFTForConditionalGeneration.from_pretrained(tmp_path, device_map="auto").eval()
    texts, images = _sample_prompts(processor, [1, 2], seed=18)
    flat = [image for row in images for image in row]
    inputs = processor(images=flat, text=texts, return_tensors="pt", padding_side="left", return_text_only=True)
    settings = dict(fusion=True, fusion_alpha=0.9, fusion_beta=0.6, fusion_layers=(1, 4), **GEN)
    expected = model.generate(**inputs, **settings)
    got = mapped.generate(**inputs, **settings)
    assert got.sequences.tolist() == expected.sequences.tolist()
    torch.testing.assert_close(got.logits[0], expected.logits[0], atol=1e-5, rtol=0)
