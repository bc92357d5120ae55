"""A converted checkpoint answers as the original does with the original's own pipeline (issue 15).

For each source family a tiny checkpoint is written with the real key names and config fields, converted with the CLI
(`hub.convert_llava.main`), and compared with the source run through its own pipeline: transformers'
`LlavaForConditionalGeneration` + `LlavaProcessor` for llava-hf; for Bunny, the re-implementation below of its
prompt builder, `tokenizer_image_token`, image preparation, loader and forward, written from the authors' documented
behaviour. Input ids and pixel values must be equal and the logits within 1e-5. Run with `-s` to see the table of
the largest logit differences.
"""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from hub.convert_llava import main as convert_main
from modeling_vift import ViFTForConditionalGeneration, ViFTProcessor
from modeling_vift.conversion.bunny_prompts import CONVERSATION_MODES, bunny_chat_template
from modeling_vift.remote_code.processing_vift import build_chat_template
from modeling_vift.testing_utils import (
    tiny_image_processor,
    tiny_text_config,
    tiny_tokenizer,
    tiny_vision_config,
)


BUNNY_IMAGE_INDEX = -200  # Bunny's IMAGE_TOKEN_INDEX placeholder in input ids
MAX_DIFFERENCES = {}


@pytest.fixture(scope="module", autouse=True)
def _print_table():
    yield
    if MAX_DIFFERENCES:
        print("\n| source format | max |logit difference| |\n|---|---|")
        for name, value in MAX_DIFFERENCES.items():
            print(f"| {name} | {value:.3g} |")


# ----------------------------------------------------------------------------------------------------------------
# Tokenizers of the three families
# ----------------------------------------------------------------------------------------------------------------


def bos_tokenizer(kind):
    """A tokenizer that prepends BOS, as Llama's do: `llama2` (SentencePiece-style Metaspace, `<s>`, as llava-1.5)
    or `llama3` (byte-level BPE, `<|begin_of_text|>`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from modeling_vift.testing_utils import _CORPUS

    if kind == "llama2":
        bos, eos, extra = "<s>", "</s>", ["<unk>"]
        pre, dec = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"), decoders.Metaspace()
        alphabet = []
    else:
        bos, eos, extra = "<|begin_of_text|>", "<|end_of_text|>", ["<|eot_id|>"]
        pre, dec = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend = Tokenizer(models.BPE(unk_token="<unk>" if kind == "llama2" else None))
    backend.pre_tokenizer, backend.decoder = pre, dec
    special = [bos, eos, *extra]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special, initial_alphabet=alphabet, show_progress=False)
    backend.train_from_iterator(list(_CORPUS) + ["USER: ASSISTANT: \n"], trainer=trainer)
    bos_id = backend.token_to_id(bos)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos,
                                   unk_token="<unk>" if kind == "llama2" else None)


def random_rgba_images(count, width, height, seed):
    """Images with varying transparency: the RGB conversion of each pipeline matters."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA") for _ in range(count)]


def run_cli(source, output, *args):
    assert convert_main(["--source", str(source), "--output", str(output), *map(str, args)]) == 0


# ----------------------------------------------------------------------------------------------------------------
# llava-hf
# ----------------------------------------------------------------------------------------------------------------


LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() + ': ' }}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def save_llava_hf(directory, text, tokenizer, tower, strategy, write_image_seq_length=True):
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    config = LlavaConfig(
        vision_config=tiny_vision_config(tower).to_dict(),
        text_config=tiny_text_config(text, vocab_size=len(tokenizer)).to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy=strategy,
        image_seq_length=16,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(directory)
    LlavaProcessor(
        image_processor=tiny_image_processor(tower, 32), tokenizer=tokenizer, patch_size=8,
        vision_feature_select_strategy=strategy, num_additional_image_tokens=int(tower == "clip"),
        chat_template=LLAVA_TEMPLATE,
    ).save_pretrained(directory)
    if not write_image_seq_length:  # as many llava-hf configs: AutoConfig then fills in 576
        path = os.path.join(directory, "config.json")
        raw = json.load(open(path))
        raw.pop("image_seq_length")
        json.dump(raw, open(path, "w"))
    return directory


@pytest.mark.parametrize(
    "name, text, tokenizer_kind, tower, strategy",
    [
        ("llava-hf, Llama LM (BOS), CLIP tower", "llama", "llama2", "clip", "default"),
        ("llava-hf, Qwen2 LM (no BOS), SigLIP tower, no image_seq_length", "qwen2", "qwen2", "siglip", "full"),
    ],
)
def test_llava_hf_conversion_matches_llava_processor_and_model(tmp_path, capsys, name, text, tokenizer_kind, tower,
                                                              strategy):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    tokenizer = tiny_tokenizer(with_image_token=False) if tokenizer_kind == "qwen2" else bos_tokenizer(tokenizer_kind)
    source = save_llava_hf(str(tmp_path / "llava"), text, tokenizer, tower, strategy,
                           write_image_seq_length=tokenizer_kind != "qwen2")
    out = tmp_path / "vift"
    run_cli(source, out, "--compare")
    assert "max |logits difference| to the source" in capsys.readouterr().out  # --compare ran with its own processors

    llava_processor, vift_processor = AutoProcessor.from_pretrained(source), ViFTProcessor.from_pretrained(out)
    prompt = "USER: <image>\nhow many shapes are there? ASSISTANT:"
    images = random_rgba_images(1, 40, 32, seed=5)
    expected = llava_processor(text=prompt, images=images, return_tensors="pt")
    got = vift_processor(text=prompt, images=images, return_tensors="pt")
    assert got["input_ids"].tolist() == expected["input_ids"].tolist()
    bos = llava_processor.tokenizer.bos_token_id
    assert (got["input_ids"][0, 0].item() == bos) == (tokenizer_kind != "qwen2")  # Llama: BOS; Qwen2: none
    assert torch.equal(got["pixel_values"], expected["pixel_values"])
    with torch.no_grad():
        reference = LlavaForConditionalGeneration.from_pretrained(source, dtype=torch.float32).eval()(**expected).logits
        converted = ViFTForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()(**got).logits
    difference = float((converted - reference).abs().max())
    MAX_DIFFERENCES[name] = difference
    print(f"{name}: max |logit difference| {difference:.3g}")
    assert difference <= 1e-5


# ----------------------------------------------------------------------------------------------------------------
# Bunny: the authors' pipeline, re-implemented from its documented behaviour
# ----------------------------------------------------------------------------------------------------------------


def bunny_prompt(mode, question):
    """Bunny's Conversation.get_prompt for one user turn (`<image>` + newline + question) and an open assistant turn."""
    user_text = "<image>\n" + question
    system_bunny = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                    "helpful, detailed, and polite answers to the user's questions.")
    if mode in ("bunny", "phi3", "minicpm", "llama"):  # separator style TWO: system, sep " ", roles "USER"/"ASSISTANT"
        return system_bunny + " " + "USER: " + user_text + " " + "ASSISTANT:"
    if mode == "qwen2":
        system = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        return system + "<|im_end|>\n" + "<|im_start|>user\n" + user_text + "<|im_end|>\n" + "<|im_start|>assistant\n"
    if mode == "plain":
        return user_text + "\n"
    raise AssertionError(mode)


def bunny_tokenize(prompt, tokenizer):
    """tokenizer_image_token: each text piece around `<image>` tokenized with the tokenizer's defaults; a BOS that the
    tokenizer puts first is kept once (and dropped from the later pieces); the image index between pieces."""
    pieces = [tokenizer(piece)["input_ids"] for piece in prompt.split("<image>")]
    keep_bos = tokenizer.bos_token_id is not None and pieces[0][:1] == [tokenizer.bos_token_id]
    ids = [tokenizer.bos_token_id] if keep_bos else []
    for i, piece in enumerate(pieces):
        if i:
            ids.append(BUNNY_IMAGE_INDEX)
        ids.extend(piece[1:] if keep_bos else piece)
    return ids


def bunny_pixels(image, image_processor, aspect_ratio):
    """The evaluation's `Image.open(...).convert('RGB')`, then process_images (pad to square with the mean colour)."""
    image = image.convert("RGB")
    if aspect_ratio == "pad" and image.width != image.height:
        side = max(image.size)
        canvas = Image.new("RGB", (side, side), tuple(int(m * 255) for m in image_processor.image_mean))
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        image = canvas
    return image_processor(image, return_tensors="pt")["pixel_values"]


def bunny_load(source, model_base=None):
    """Bunny's loader: the LM (from the checkpoint, or the base LM plus mm_projector.bin), the tower built from
    mm_vision_tower and replaced by the stored one only when `unfreeze_vision_tower`, embeddings resized to
    len(tokenizer)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.image_processing_auto import AutoImageProcessor  # 5.17 without torchvision

    config = json.load(open(os.path.join(source, "config.json")))
    text_type = {"bunny-qwen2": "qwen2", "bunny-llama": "llama"}[config["model_type"]]
    lm_config = AutoConfig.for_model(text_type, **{k: v for k, v in config.items() if not k.startswith("mm_")
                                                   and k not in ("model_type", "architectures")})
    if model_base is None:
        state = load_file(os.path.join(source, "model.safetensors"))
        tokenizer = AutoTokenizer.from_pretrained(source)
    else:
        state = load_file(os.path.join(model_base, "model.safetensors"))
        state.update(torch.load(os.path.join(source, "mm_projector.bin"), weights_only=True))
        tokenizer = AutoTokenizer.from_pretrained(model_base)
    lm = AutoModelForCausalLM.from_config(lm_config).eval()
    lm.load_state_dict({k: v for k, v in state.items() if not k.startswith(("model.mm_projector", "model.vision_tower"))})
    lm.resize_token_embeddings(len(tokenizer))
    tower = AutoModel.from_pretrained(config["mm_vision_tower"]).eval()
    if config.get("unfreeze_vision_tower"):
        prefix = "model.vision_tower.vision_tower."
        # saved by transformers 4, whose vision models nest their weights under `vision_model.`
        stored = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        tower.load_state_dict({k.removeprefix("vision_model."): v for k, v in stored.items()})
    depth = int(config["mm_projector_type"][3])
    layers = [nn.Linear(config["mm_hidden_size"], lm_config.hidden_size)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(lm_config.hidden_size, lm_config.hidden_size)]
    projector = nn.Sequential(*layers).eval()
    projector.load_state_dict({k[len("model.mm_projector."):]: v for k, v in state.items()
                               if k.startswith("model.mm_projector.")})
    image_processor = AutoImageProcessor.from_pretrained(config["mm_vision_tower"])
    return lm, tower, projector, tokenizer, image_processor, config


@torch.no_grad()
def bunny_forward(loaded, input_ids, pixel_values):
    """Hidden layer -2 of the tower (CLIP's CLS dropped), the projector, spliced where the image index stands."""
    lm, tower, projector = loaded[:3]
    features = tower(pixel_values, output_hidden_states=True).hidden_states[-2]
    if tower.config.model_type.startswith("clip"):
        features = features[:, 1:]
    features = projector(features)[0]
    at = input_ids.index(BUNNY_IMAGE_INDEX)
    embed = lm.get_input_embeddings()
    embeds = torch.cat([embed(torch.tensor(input_ids[:at], dtype=torch.long)), features, embed(torch.tensor(input_ids[at + 1:], dtype=torch.long))])
    return lm(inputs_embeds=embeds[None]).logits


def save_bunny(directory, model_type, tokenizer, tower="siglip", vocab_slack=8, unfreeze=True, store_tower=True,
               projector_only=False):
    """A Bunny-format checkpoint (config: the LM's config plus Bunny's fields; state dict: `model.*`, `lm_head.*`,
    `model.mm_projector.{0,2}.*`, `model.vision_tower.vision_tower.vision_model.*` as transformers 4 saved SigLIP), or
    for `projector_only` a stage-1 output (config.json + mm_projector.bin) and the base LM folder. Returns
    (source, base LM folder or None)."""
    from transformers import AutoModel, AutoModelForCausalLM

    text = {"bunny-qwen2": "qwen2", "bunny-llama": "llama"}[model_type]
    torch.manual_seed(2)
    tower_dir = os.path.join(directory, "tower")
    vision_config = tiny_vision_config(tower)
    original_tower = AutoModel.from_config(vision_config)
    original_tower.save_pretrained(tower_dir)
    tiny_image_processor(tower, vision_config.image_size).save_pretrained(tower_dir)
    text_config = tiny_text_config(text, vocab_size=len(tokenizer) + vocab_slack)
    lm = AutoModelForCausalLM.from_config(text_config)
    projector = nn.Sequential(nn.Linear(vision_config.hidden_size, 32), nn.GELU(), nn.Linear(32, 32))
    mm = {f"model.mm_projector.{k}": v for k, v in projector.state_dict().items()}
    source = os.path.join(directory, "bunny")
    os.makedirs(source)
    config = text_config.to_dict()
    config.update(model_type=model_type, architectures=[{"bunny-qwen2": "BunnyQwen2ForCausalLM",
                                                         "bunny-llama": "BunnyLlamaForCausalLM"}[model_type]],
                  mm_vision_tower=tower_dir, mm_projector_type="mlp2x_gelu", mm_hidden_size=vision_config.hidden_size,
                  image_aspect_ratio="square" if projector_only else "pad", unfreeze_vision_tower=unfreeze,
                  tune_mm_mlp_adapter=projector_only, use_mm_proj=True, tokenizer_model_max_length=2048)
    json.dump(config, open(os.path.join(source, "config.json"), "w"))
    if projector_only:
        base = os.path.join(directory, "base-lm")
        lm.save_pretrained(base)
        tokenizer.save_pretrained(base)
        torch.save(mm, os.path.join(source, "mm_projector.bin"))
        return source, base
    state = {**lm.state_dict(), **mm}
    if store_tower:  # a trained tower differs from mm_vision_tower's
        with torch.no_grad():
            trained = {k: v + 0.01 * torch.randn_like(v) for k, v in original_tower.state_dict().items()}
        state.update({f"model.vision_tower.vision_tower.vision_model.{k}": v for k, v in trained.items()})
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(source, "model.safetensors"),
              metadata={"format": "pt"})
    tokenizer.save_pretrained(source)
    return source, None


def check_bunny_equivalence(name, source, out, base=None, mode=None, image_size=(44, 30)):
    loaded = bunny_load(source, base)
    tokenizer, image_processor, config = loaded[3:]
    mode = mode or {"bunny-qwen2": "qwen2", "bunny-llama": "llama"}[config["model_type"]]
    question = "how many shapes are there in the picture? answer with one word"
    image = random_rgba_images(1, *image_size, seed=7)[0]
    reference_ids = bunny_tokenize(bunny_prompt(mode, question), tokenizer)
    reference_pixels = bunny_pixels(image, image_processor, config["image_aspect_ratio"])
    reference = bunny_forward(loaded, reference_ids, reference_pixels)

    processor = ViFTProcessor.from_pretrained(out)
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
    got = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_tensors="pt")
    model = ViFTForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    at = reference_ids.index(BUNNY_IMAGE_INDEX)
    expanded = reference_ids[:at] + [model.config.image_token_id] * model.config.image_seq_length + reference_ids[at + 1:]
    assert got["input_ids"][0].tolist() == expanded
    assert torch.equal(got["pixel_values"], reference_pixels)
    with torch.no_grad():
        converted = model(input_ids=got["input_ids"], pixel_values=got["pixel_values"]).logits
    vocab = len(tokenizer)
    assert converted.shape[-1] == reference.shape[-1] + 1 == vocab + 1  # the loader's len(tokenizer), plus <image>
    difference = float((converted[..., :vocab] - reference).abs().max())
    MAX_DIFFERENCES[name] = difference
    print(f"{name}: max |logit difference| {difference:.3g}")
    assert difference <= 1e-5
    return got


def test_bunny_qwen2_conversion_matches_the_authors_pipeline(tmp_path):
    source, _ = save_bunny(str(tmp_path), "bunny-qwen2", tiny_tokenizer(with_image_token=False))
    out = tmp_path / "vift"
    run_cli(source, out)
    got = check_bunny_equivalence("Bunny bunny-qwen2 (trained SigLIP tower, conv qwen2)", source, out)
    assert got["input_ids"][0, 0].item() == tiny_tokenizer().convert_tokens_to_ids("<|im_start|>")  # no BOS
    saved = json.load(open(out / "processor_config.json"))
    assert saved["add_special_tokens"] is True and saved["rgb_conversion"] == "pil" and saved["pad_to_square"] is True
    generation = json.load(open(out / "generation_config.json"))
    assert generation["suppress_tokens"] == [json.load(open(out / "config.json"))["image_token_id"]]


def test_bunny_llama_conversion_matches_the_authors_pipeline_and_ignores_a_frozen_stored_tower(tmp_path, capsys):
    """bunny-llama: Llama-3 tokenizer (BOS), the `llama` conversation mode, a CLIP tower (CLS dropped); the tower
    stored in the checkpoint is not used because unfreeze_vision_tower is false, as in Bunny's loader."""
    source, _ = save_bunny(str(tmp_path), "bunny-llama", bos_tokenizer("llama3"), tower="clip", unfreeze=False)
    out = tmp_path / "vift"
    run_cli(source, out)
    assert "unfreeze_vision_tower is false" in capsys.readouterr().out
    got = check_bunny_equivalence("Bunny bunny-llama (CLIP tower from mm_vision_tower, conv llama)", source, out)
    assert got["input_ids"][0, 0].item() == bos_tokenizer("llama3").bos_token_id


def test_stage1_projector_only_checkpoint_converts_with_the_base_language_model(tmp_path):
    source, base = save_bunny(str(tmp_path), "bunny-qwen2", tiny_tokenizer(with_image_token=False),
                              projector_only=True, unfreeze=False)
    out = tmp_path / "vift"
    run_cli(source, out, "--language_model", base)
    check_bunny_equivalence("Bunny stage-1 (mm_projector.bin + base Qwen2 LM, conv plain)", source, out, base=base,
                            mode="plain")


@pytest.mark.parametrize("mode", sorted(CONVERSATION_MODES))
def test_bunny_chat_templates_render_the_conversation_modes(mode):
    tokenizer = tiny_tokenizer()
    processor = ViFTProcessor(image_processor=tiny_image_processor(), tokenizer=tokenizer, image_seq_length=16,
                              chat_template=build_chat_template(bunny_chat_template(mode)))
    question = "what colour is the large shape?"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == bunny_prompt(mode, question)


def test_conv_mode_option_chooses_the_bunny_prompt(tmp_path):
    source, _ = save_bunny(str(tmp_path), "bunny-qwen2", tiny_tokenizer(with_image_token=False))
    run_cli(source, tmp_path / "vift", "--conv_mode", "bunny")
    processor = ViFTProcessor.from_pretrained(tmp_path / "vift")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == bunny_prompt("bunny", "hi")


def test_rgb_conversion_is_explicit_and_defaults_to_compositing_on_white():
    processor = ViFTProcessor(image_processor=tiny_image_processor(), tokenizer=tiny_tokenizer(), image_seq_length=16)
    assert processor.rgb_conversion == "composite_white" and processor.add_special_tokens is False
    transparent = Image.new("RGBA", (32, 32), (10, 20, 30, 0))
    assert processor.prepare_images(transparent)[0].getpixel((0, 0)) == (255, 255, 255)
    processor.rgb_conversion = "pil"
    assert processor.prepare_images(transparent)[0].getpixel((0, 0)) == (10, 20, 30)
    with pytest.raises(ValueError, match="rgb_conversion='drop'"):
        ViFTProcessor(image_processor=tiny_image_processor(), tokenizer=tiny_tokenizer(), image_seq_length=16,
                      rgb_conversion="drop")
