"""Building ViFT from pretrained towers (saved tiny towers stand in for Hub ids)."""

import os
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    GenerationConfig,
    SiglipConfig,
    SiglipModel,
)

from modeling_vift import ViFTForConditionalGeneration, ViFTProcessor
from modeling_vift.testing_utils import (
    CHATML_TEMPLATE,
    random_images,
    save_tiny_towers,
    tiny_image_processor,
    tiny_text_config,
    tiny_tokenizer,
    tiny_vision_config,
)


COMBOS = [("siglip", "qwen2"), ("clip", "llama")]
README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image"}]}]


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    return {combo: save_tiny_towers(str(root / "-".join(combo)), *combo) for combo in COMBOS}


def save_text_tower(folder, tokenizer, **config_overrides):
    config_overrides.setdefault("vocab_size", len(tokenizer))
    AutoModelForCausalLM.from_config(tiny_text_config(**config_overrides)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("vision,text", COMBOS, ids=["siglip-qwen2", "clip-llama"])
def test_from_components_builds_matching_model_and_processor(towers, vision, text):
    vision_dir, text_dir = towers[(vision, text)]
    original_vocab = len(AutoTokenizer.from_pretrained(text_dir))
    model = ViFTForConditionalGeneration.from_components(vision_dir, text_dir).eval()
    processor = ViFTProcessor.from_components(vision_dir, text_dir)

    # The image token is new to the tokenizer: one more token, embeddings resized to match, same id on both sides.
    assert len(processor.tokenizer) == original_vocab + 1
    assert processor.image_token_id == model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert model.get_input_embeddings().num_embeddings == len(processor.tokenizer)
    assert model.lm_head.out_features == model.config.text_config.vocab_size == len(processor.tokenizer)
    assert processor.image_seq_length == model.config.image_seq_length

    # Pretrained weights are kept: the vision tower entirely, the LM's embeddings for its original vocabulary.
    vision_weights = load_file(os.path.join(vision_dir, "model.safetensors"))
    for name, param in model.vision_tower.state_dict().items():
        torch.testing.assert_close(param, vision_weights[name], rtol=0, atol=0, msg=name)
    text_weights = load_file(os.path.join(text_dir, "model.safetensors"))
    torch.testing.assert_close(model.get_input_embeddings().weight[:original_vocab], text_weights["model.embed_tokens.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.lm_head.weight[:original_vocab], text_weights["lm_head.weight"], rtol=0, atol=0)
    for name, param in model.language_model.state_dict().items():
        if name != "embed_tokens.weight":
            torch.testing.assert_close(param, text_weights["model." + name], rtol=0, atol=0, msg=name)

    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    inputs = processor(images=random_images(1), text=prompt, return_tensors="pt")
    out = model(**inputs, labels=inputs["input_ids"])
    assert torch.isfinite(out.loss)
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_from_components_skips_the_resize_when_the_embeddings_have_room(tmp_path, towers):
    vision_dir, _ = towers[("siglip", "qwen2")]
    tokenizer = tiny_tokenizer(with_image_token=False, chat_template=CHATML_TEMPLATE)
    # Like Qwen2.5, whose embedding matrix is larger than its tokenizer.
    text_dir = save_text_tower(tmp_path / "padded-vocab", tokenizer, vocab_size=len(tokenizer) + 8)
    model = ViFTForConditionalGeneration.from_components(vision_dir, text_dir)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) + 8
    assert model.config.image_token_id == len(tokenizer)  # the new token's id lies inside the spare rows
    assert ViFTProcessor.from_components(vision_dir, text_dir).image_token_id == model.config.image_token_id


def test_from_components_reuses_an_image_token_the_tokenizer_already_has(tmp_path, towers):
    vision_dir, _ = towers[("siglip", "qwen2")]
    tokenizer = tiny_tokenizer(with_image_token=True, chat_template=CHATML_TEMPLATE)
    text_dir = save_text_tower(tmp_path / "has-image-token", tokenizer)
    model = ViFTForConditionalGeneration.from_components(vision_dir, text_dir)
    processor = ViFTProcessor.from_components(vision_dir, text_dir)
    assert len(processor.tokenizer) == len(tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.config.image_token_id == processor.image_token_id == tokenizer.convert_tokens_to_ids("<image>")


@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_from_components_accepts_full_dual_encoder_checkpoints(tmp_path, towers, kind):
    # google/siglip-* and openai/clip-* hold the text encoder too; only the vision side is used.
    _, text_dir = towers[("siglip", "qwen2")]
    config_class, model_class = (SiglipConfig, SiglipModel) if kind == "siglip" else (CLIPConfig, CLIPModel)
    text_side = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    full = model_class(config_class(vision_config=tiny_vision_config(kind).to_dict(), text_config=text_side))
    folder = tmp_path / f"full-{kind}"
    full.save_pretrained(folder)
    tiny_image_processor(kind).save_pretrained(folder)

    model = ViFTForConditionalGeneration.from_components(str(folder), text_dir)
    processor = ViFTProcessor.from_components(str(folder), text_dir)
    assert model.config.vision_config.model_type == f"{kind}_vision_model"
    full_vision = full.vision_model.state_dict()
    for name, param in model.vision_tower.state_dict().items():
        torch.testing.assert_close(param, full_vision[name.removeprefix("vision_model.")], rtol=0, atol=0, msg=name)
    inputs = processor(images=random_images(1), text="<image> describe", return_tensors="pt")
    assert torch.isfinite(model(**inputs).logits).all()


def test_from_components_keeps_a_tied_language_model_tied(tmp_path, towers):
    vision_dir, _ = towers[("siglip", "qwen2")]
    tokenizer = tiny_tokenizer(with_image_token=False, chat_template=CHATML_TEMPLATE)
    text_dir = save_text_tower(tmp_path / "tied", tokenizer, tie_word_embeddings=True)
    model = ViFTForConditionalGeneration.from_components(vision_dir, text_dir)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert model.lm_head.weight.shape[0] == len(tokenizer) + 1


def test_from_components_carries_the_generation_config_and_overrides(tmp_path, towers):
    vision_dir, _ = towers[("siglip", "qwen2")]
    tokenizer = tiny_tokenizer(with_image_token=False, chat_template=CHATML_TEMPLATE)
    text_dir = save_text_tower(tmp_path / "with-generation-config", tokenizer)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    GenerationConfig(eos_token_id=[end_of_turn], pad_token_id=tokenizer.pad_token_id).save_pretrained(text_dir)
    model = ViFTForConditionalGeneration.from_components(
        vision_dir, text_dir, fusion_layers=[0, 4], fusion_alpha=0.3, projector_depth=3, dtype=torch.bfloat16
    )
    assert model.generation_config.eos_token_id == [end_of_turn]
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert (model.config.fusion_layers, model.config.fusion_alpha, model.config.projector_depth) == ([0, 4], 0.3, 3)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def readme_quickstart_blocks():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text.split("<!-- section:quickstart -->")[1].split("<!-- /section:quickstart -->")[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_quickstart_code_runs_as_written(tmp_path, towers, monkeypatch):
    blocks = readme_quickstart_blocks()
    assert len(blocks) >= 2, "the README's quickstart section should hold its code in python blocks"
    vision_dir, text_dir = towers[("siglip", "qwen2")]
    random_images(1)[0].save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:  # the real Hub ids are the only thing replaced
        code = block.replace("google/siglip-so400m-patch14-384", vision_dir).replace("Qwen/Qwen2.5-7B-Instruct", text_dir)
        exec(compile(code, "README.md quickstart", "exec"), namespace)
