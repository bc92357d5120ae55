"""transformers conformance: the behaviours transformers' common model and generation tests check on Llava, checked
here on ViFT with tests of our own (issue 14). Each test is named for the behaviour; all run on CPU in seconds."""

import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModel, AutoModelForCausalLM, CompileConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_vift import ViFTConfig, ViFTForConditionalGeneration
from modeling_vift.remote_code.modeling_vift import supported_positions
from modeling_vift.testing_utils import random_images, tiny_text_config, tiny_vift, tiny_vision_config


GREEDY = dict(max_new_tokens=8, do_sample=False)


def prompt(processor, images=1, seed=0, **kwargs):
    text = " ".join(["<image>"] * images) + "\ndescribe the image in detail"
    return processor(images=random_images(images, seed=seed), text=text, return_tensors="pt", **kwargs)


# 1. Assisted decoding and prompt-lookup decoding --------------------------------------------------------------------

def test_assisted_and_prompt_lookup_decoding_equal_greedy():
    model, processor = tiny_vift()
    inputs = prompt(processor)
    greedy = model.generate(**inputs, **GREEDY)
    # ViFT as the main model and as its own assistant: the assistant's first forward runs with
    # is_first_iteration=False and must still get the images.
    assisted = model.generate(**inputs, assistant_model=model, **GREEDY)
    lookup = model.generate(**inputs, prompt_lookup_num_tokens=3, **GREEDY)
    assert greedy.shape[1] == inputs["input_ids"].shape[1] + GREEDY["max_new_tokens"]
    torch.testing.assert_close(assisted, greedy, rtol=0, atol=0)
    torch.testing.assert_close(lookup, greedy, rtol=0, atol=0)


def test_images_are_kept_for_forwards_that_see_the_uncached_prompt():
    model, processor = tiny_vift()
    inputs = prompt(processor)
    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    # An assistant's first forward: not the first iteration, but nothing cached yet.
    kept = model.prepare_inputs_for_generation(ids, pixel_values=pixels, is_first_iteration=False, use_cache=True)
    assert kept["pixel_values"] is pixels
    # A decoding step (one new token after a cached prompt) reads the images from the cache.
    step = model.prepare_inputs_for_generation(
        ids, next_sequence_length=1, pixel_values=pixels, is_first_iteration=False, use_cache=True
    )
    assert step["input_ids"].shape[1] == 1 and "pixel_values" not in step


# 2. get_image_features contract --------------------------------------------------------------------------------------

@pytest.mark.parametrize("vision,text", [("siglip", "qwen2"), ("clip", "llama")])
def test_get_image_features_returns_base_model_output_with_pooling(vision, text):
    model, processor = tiny_vift(vision, text)
    model.set_attn_implementation("eager")  # attention weights need the eager kernels
    inputs = prompt(processor, images=2)
    with torch.no_grad():
        forward = model(**inputs)
        for owner in (model, model.model):
            out = owner.get_image_features(inputs["pixel_values"])
            assert isinstance(out, BaseModelOutputWithPooling)
            torch.testing.assert_close(out.pooler_output, forward.image_hidden_states)
            assert out.hidden_states is None and out.attentions is None
            layers = model.config.vision_config.num_hidden_layers
            full = owner.get_image_features(inputs["pixel_values"], output_hidden_states=True, output_attentions=True)
            assert len(full.hidden_states) == layers + 1 and len(full.attentions) == layers
            assert full.attentions[0].shape[:2] == (2, model.config.vision_config.num_attention_heads)
            as_tuple = owner.get_image_features(inputs["pixel_values"], return_dict=False)
            assert isinstance(as_tuple, tuple)
            torch.testing.assert_close(as_tuple[0], out.last_hidden_state)
            torch.testing.assert_close(as_tuple[1], out.pooler_output)


# 3. return_dict=False ------------------------------------------------------------------------------------------------

def test_return_dict_false_returns_a_tuple():
    model, processor = tiny_vift()
    inputs = prompt(processor)
    labels = inputs["input_ids"].clone()
    with torch.no_grad():
        as_dict = model(**inputs, labels=labels)
        as_tuple = model(**inputs, labels=labels, return_dict=False)
        base_tuple = model.model(**{k: v for k, v in inputs.items() if k != "text_input_ids"}, return_dict=False)
    assert isinstance(as_tuple, tuple) and isinstance(base_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    assert base_tuple[0].shape == (*inputs["input_ids"].shape, model.config.text_config.hidden_size)
    # The config's return_dict is the default, as for transformers' models.
    model.config.return_dict = False
    with torch.no_grad():
        assert isinstance(model(**inputs), tuple)


# 4. Tensor and pipeline parallel plans -------------------------------------------------------------------------------

def test_tensor_and_pipeline_parallel_plans_name_real_modules():
    import re

    model, _ = tiny_vift()
    plan = model._tp_plan
    assert plan["lm_head"] == "colwise_gather_output"
    assert model._pp_plan["lm_head"] == (["hidden_states"], ["logits"])
    assert model.supports_tp_plan and model.supports_pp_plan
    # The language model's own plan is carried under its prefix, and every entry names real parameters.
    lm_entries = [key for key in plan if key.startswith("model.language_model.layers.")]
    assert lm_entries
    names = [name for name, _ in model.named_parameters()]
    for key in plan:
        pattern = re.compile(re.escape(key).replace(r"\*", r"\d+") + r"(\.|$)")
        assert any(pattern.match(name) for name in names), f"TP plan entry {key!r} matches no parameter"


# 5. RoPE scaling bounds the length by what the LM supports -----------------------------------------------------------

@pytest.mark.parametrize("form", ["rope_parameters", "rope_scaling"])
def test_rope_scaling_extends_the_supported_length(form):
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 10000.0}
    text = tiny_text_config(max_position_embeddings=64, **{form: yarn})
    assert supported_positions(text) == 256
    dynamic = tiny_text_config(max_position_embeddings=64, **{form: {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}})
    assert supported_positions(dynamic) is None
    assert supported_positions(tiny_text_config(max_position_embeddings=64)) == 64

    config = ViFTConfig(vision_config=tiny_vision_config().to_dict(), text_config=text.to_dict(), image_token_id=299)
    model = ViFTForConditionalGeneration(config).eval()
    with torch.no_grad():
        assert model(input_ids=torch.ones(1, 200, dtype=torch.long)).logits.shape[1] == 200  # past 64, under 256
        with pytest.raises(ValueError, match=r"300 tokens long but the language model supports at most 256 positions"):
            model(input_ids=torch.ones(1, 300, dtype=torch.long))
        out = model.generate(input_ids=torch.ones(1, 100, dtype=torch.long), max_new_tokens=3, min_new_tokens=3, do_sample=False)
        assert out.shape[1] == 103


# 6. Fusion without a cache ------------------------------------------------------------------------------------------

def test_fused_generation_without_cache_equals_with_cache():
    model, processor = tiny_vift()
    texts = ["<image>\ndescribe the image in detail", "how many shapes? <image> answer with one word"]
    inputs = processor(images=random_images(2), text=texts, return_tensors="pt", padding=True, padding_side="left")
    settings = dict(fusion=True, fusion_alpha=1.5, fusion_beta=0.5, fusion_layers=[0, 4], output_scores=True,
                    return_dict_in_generate=True, **GREEDY)
    cached = model.generate(**inputs, use_cache=True, **settings)
    uncached = model.generate(**inputs, use_cache=False, **settings)
    plain = model.generate(**{**inputs, "fusion": False}, **{k: v for k, v in settings.items() if k != "fusion"})
    torch.testing.assert_close(uncached.sequences, cached.sequences, rtol=0, atol=0)
    for a, b in zip(uncached.scores, cached.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # The fusion is on: its first-step scores differ from plain decoding's.
    assert not torch.allclose(cached.scores[0], plain.scores[0], atol=1e-4)


# 7. Host reads and full-graph compile -------------------------------------------------------------------------------

class HostReads(TorchDispatchMode):
    """Counts reads of a tensor's value back to the host (`.item()`, `int()`, `bool()` dispatch to this op)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def host_reads(fn):
    with torch.no_grad(), HostReads() as reads:
        fn()
    return reads.count


def test_decoding_steps_read_nothing_back_beyond_the_language_model():
    model, processor = tiny_vift()
    inputs = prompt(processor)
    with torch.no_grad():
        prefill = model(**inputs, use_cache=True)
    cache, mask = prefill[1], torch.cat([inputs["attention_mask"], torch.ones(1, 1, dtype=torch.long)], dim=-1)
    token = prefill.logits[:, -1:].argmax(-1)
    lm = AutoModelForCausalLM.from_config(model.config.text_config).eval()
    lm.model.load_state_dict(model.model.language_model.state_dict())
    lm.lm_head.load_state_dict(model.lm_head.state_dict())
    vift_reads = host_reads(lambda: model(input_ids=token, attention_mask=mask, past_key_values=cache))
    cache.crop(-1)
    lm_reads = host_reads(lambda: lm(input_ids=token, attention_mask=mask, past_key_values=cache))
    assert vift_reads == lm_reads


def test_prompt_checks_read_back_a_constant_number_of_values():
    """VPG-C's instruction positions, the placeholder count and the prompt checks cost the same number of host reads
    for one image as for three (no read per image token)."""
    model, processor = tiny_vift(vpgc_layer=1)
    one, three = prompt(processor, images=1), prompt(processor, images=3)
    labels_one, labels_three = one["input_ids"].clone(), three["input_ids"].clone()
    reads_one = host_reads(lambda: model(**one, labels=labels_one))
    reads_three = host_reads(lambda: model(**three, labels=labels_three))
    assert reads_one == reads_three


@pytest.mark.timeout(600)
def test_static_cache_generation_compiles_as_one_full_graph():
    """`_can_compile_fullgraph` is True: greedy generation with a static cache compiles the decoding step with
    fullgraph=True (dynamo would raise on any graph break) and gives the same tokens as eager decoding. The `eager`
    backend keeps this test free of a C compiler; `inductor` works the same where one is present."""
    assert ViFTForConditionalGeneration._can_compile_fullgraph
    torch._dynamo.reset()
    model, processor = tiny_vift(vpgc_layer=1)
    inputs = prompt(processor)
    expected = model.generate(**inputs, **GREEDY)
    compile_config = CompileConfig(fullgraph=True, backend="eager", mode=None)
    compile_config._compile_all_devices = True  # generate compiles on accelerators only unless told otherwise
    torch._dynamo.utils.counters.clear()
    compiled = model.generate(**inputs, cache_implementation="static", compile_config=compile_config, **GREEDY)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert not torch._dynamo.utils.counters["graph_break"]
    torch.testing.assert_close(compiled, expected, rtol=0, atol=0)


def test_static_cache_and_4d_masks_match_the_dynamic_cache():
    model, processor = tiny_vift()
    texts = ["<image>\ndescribe the image in detail", "how many? <image>"]
    inputs = processor(images=random_images(2), text=texts, return_tensors="pt", padding=True, padding_side="left")
    dynamic = model.generate(**inputs, **GREEDY)
    static = model.generate(**inputs, cache_implementation="static", **GREEDY)
    torch.testing.assert_close(static, dynamic, rtol=0, atol=0)


# 8. Weight init of the towers ----------------------------------------------------------------------------------------

ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


@pytest.mark.parametrize("vision", ["siglip", "clip"])
def test_towers_initialise_natively_when_a_checkpoint_misses_keys(vision, tmp_path):
    model, _ = tiny_vift(vision)
    model.save_pretrained(tmp_path)
    weights = load_file(os.path.join(tmp_path, "model.safetensors"))
    missing = [k for k in weights if "vision_tower" in k and "self_attn" in k and k.endswith("weight")]
    assert missing and all(any(p in k for p in ATTENTION) for k in missing)
    save_file({k: v for k, v in weights.items() if k not in missing}, os.path.join(tmp_path, "model.safetensors"),
              metadata={"format": "pt"})
    loaded = ViFTForConditionalGeneration.from_pretrained(tmp_path)
    # The tower's own init, on its own (not part of a custom-code model), is the reference.
    torch.manual_seed(0)
    native = AutoModel.from_config(model.config.vision_config)
    native_params = dict(native.named_parameters())
    loaded_params = dict(loaded.named_parameters())
    for key in missing:
        name = key.split("vision_tower.", 1)[1]
        got, want = loaded_params[key].detach(), native_params[name].detach()
        assert 0.7 < float(got.std() / want.std()) < 1.4, f"{key}: std {got.std():.4f}, native {want.std():.4f}"
        if vision == "siglip":  # SigLIP's attention is xavier-uniform: every weight within its bound
            bound = (6 / sum(got.shape)) ** 0.5
            assert float(got.abs().max()) <= bound
    # Weights that were in the checkpoint are kept as they were.
    kept = [k for k in weights if k not in missing and k in loaded_params]
    for key in kept:
        torch.testing.assert_close(loaded_params[key].detach(), weights[key], rtol=0, atol=0)


def test_towers_initialise_natively_from_config():
    model, _ = tiny_vift("siglip")
    for name, param in model.vision_tower.named_parameters():
        if "self_attn" in name and name.endswith("weight"):
            assert float(param.detach().abs().max()) <= (6 / sum(param.shape)) ** 0.5, name


# Eager vs SDPA -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_eager_and_sdpa_attention_agree(dtype, tolerance, padding_side):
    model, processor = tiny_vift()
    texts = ["<image>\ndescribe the image in detail", "how many? <image>"]
    inputs = processor(images=random_images(2), text=texts, return_tensors="pt", padding=True, padding_side=padding_side)
    assert (inputs["attention_mask"] == 0).any()  # the rows really are padded
    model = model.to(dtype)
    logits = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            logits[implementation] = model(**inputs).logits.float()
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(logits["sdpa"][real], logits["eager"][real], rtol=tolerance, atol=tolerance)


# Image tokens without pixel values: refused, deliberately ------------------------------------------------------------

def test_image_tokens_without_pixel_values_are_refused_with_the_remedy():
    model, processor = tiny_vift()
    inputs = prompt(processor)
    n = int((inputs["input_ids"] == model.config.image_token_id).sum())
    with pytest.raises(ValueError, match=rf"hold {n} image tokens but no pixel_values were given: pass the images"):
        model(input_ids=inputs["input_ids"])
