"""Bad input gets a clear ValueError that names the numbers involved; odd image modes are converted, not refused."""

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_vift import ViFTConfig, ViFTForConditionalGeneration, ViFTProcessor
from modeling_vift.remote_code.processing_vift import to_rgb
from modeling_vift.testing_utils import (
    random_images,
    tiny_image_processor,
    tiny_text_config,
    tiny_tokenizer,
    tiny_vift,
    tiny_vision_config,
)


@pytest.fixture(scope="module")
def tiny():
    return tiny_vift()


def test_processor_refuses_more_placeholders_than_images(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match=r"2 <image> placeholder\(s\) \(per sample: \[2\]\) but 1 image\(s\)"):
        processor(images=random_images(1), text="<image> and <image>")
    with pytest.raises(ValueError, match=r"0 <image> placeholder\(s\) \(per sample: \[0, 0\]\) but 2 image\(s\)"):
        processor(images=random_images(2), text=["no placeholder", "none here"])


def test_model_refuses_image_tokens_that_do_not_match_the_images(tiny):
    model, processor = tiny
    inputs = processor(images=random_images(1), text="<image> hi", return_tensors="pt")
    two = torch.cat([inputs["pixel_values"]] * 2)
    n = model.config.image_seq_length
    with pytest.raises(ValueError, match=rf"hold {n} image tokens but 2 image\(s\) of {n} tokens each .*{2 * n} tokens expected"):
        model(input_ids=inputs["input_ids"], pixel_values=two)
    with pytest.raises(ValueError, match=rf"hold {n} image tokens but no pixel_values"):
        model(input_ids=inputs["input_ids"])


def test_processor_refuses_a_tokenizer_without_the_image_token():
    tokenizer = tiny_tokenizer(with_image_token=False)
    with pytest.raises(ValueError, match=r"does not know the image token '<image>' as a single token \(it encodes to \d+ ids"):
        ViFTProcessor(image_processor=tiny_image_processor(), tokenizer=tokenizer, image_seq_length=16)


def test_model_refuses_token_ids_beyond_its_embeddings():
    # The tokenizer gained <image> (id 300) but the model's embeddings were never resized (300 rows).
    tokenizer = tiny_tokenizer(with_image_token=False)
    config = ViFTConfig(vision_config=tiny_vision_config().to_dict(),
                        text_config=tiny_text_config(vocab_size=len(tokenizer)).to_dict(), image_token_id=len(tokenizer))
    model = ViFTForConditionalGeneration(config)
    input_ids = torch.tensor([[1, 2] + [len(tokenizer)] * config.image_seq_length])
    with pytest.raises(ValueError, match=r"ids in \[1, 300\] but the language model has 300 token embeddings .*image token id 300"):
        model(input_ids=input_ids, pixel_values=torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "CMYK", "P", "I;16", "I", "F", "1"])
def test_images_in_other_modes_are_converted_to_rgb(tiny, mode):
    _, processor = tiny
    rgb = random_images(1, seed=2)[0]
    image = rgb.convert("L").convert("I;16") if mode == "I;16" else rgb.convert(mode)
    out = processor(images=[image], text="<image>", return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 32, 32)
    expected = processor(images=[to_rgb(image)], text="<image>", return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(out["pixel_values"], expected, rtol=0, atol=0)
    assert to_rgb(image).mode == "RGB"


def test_image_mode_conversion_keeps_brightness():
    white16 = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert white16.mode.startswith("I;16") and to_rgb(white16).getpixel((0, 0)) == (255, 255, 255)
    grey32 = Image.fromarray(np.full((4, 4), 128, dtype=np.int32), "I")
    assert to_rgb(grey32).getpixel((0, 0)) == (128, 128, 128)
    unit_float = Image.fromarray(np.full((4, 4), 1.0, dtype=np.float32), "F")
    assert to_rgb(unit_float).getpixel((0, 0)) == (255, 255, 255)
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)  # composited on white
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)


def test_processor_refuses_non_image_objects(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match="takes PIL images .* got str"):
        processor(images=["photo.jpg"], text="<image>")


def test_vision_feature_layer_out_of_range():
    with pytest.raises(ValueError, match=r"vision_feature_layer=5 is out of range: the vision tower has 2 layers, .*\[-3, 2\]"):
        ViFTConfig(vision_config=tiny_vision_config().to_dict(), text_config=tiny_text_config().to_dict(), vision_feature_layer=5)
    model, processor = tiny_vift()
    inputs = processor(images=random_images(1), text="<image>", return_tensors="pt")
    with pytest.raises(ValueError, match=r"vision_feature_layer=-4 is out of range: the vision tower has 2 layers, .*\[-3, 2\]"):
        model(**inputs, vision_feature_layer=-4)


def test_prompt_longer_than_the_model_maximum(tiny):
    model, _ = tiny
    limit = model.config.text_config.max_position_embeddings
    with pytest.raises(ValueError, match=rf"{limit + 8} tokens long but the language model supports at most {limit} positions"):
        model(input_ids=torch.ones(1, limit + 8, dtype=torch.long))
    # Generation that would run past the limit is refused before any work, naming the lengths.
    with pytest.raises(ValueError, match=rf"The prompt has {limit - 2} tokens and generation may reach {limit + 3} "
                                         rf"tokens, but the language model supports at most {limit} positions"):
        model.generate(input_ids=torch.ones(1, limit - 2, dtype=torch.long), max_new_tokens=5, do_sample=False,
                       min_new_tokens=5)


def test_truncation_that_cuts_through_image_tokens(tiny):
    _, processor = tiny
    # transformers' ProcessorMixin owns this check (its message names both counts and the remedy).
    with pytest.raises(ValueError, match=r"Mismatch in `image` token count .* ids=\[\d+\] and text=\[32\].* increase `max_length`"):
        processor(images=random_images(2), text="<image> <image> tail", truncation=True, max_length=20)


def test_malformed_chat_messages(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match=r"Message 0, content item 1 .*'video'"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "video"}]}])
    with pytest.raises(ValueError, match="Message 1 must be a dict with 'role' and 'content'"):
        processor.apply_chat_template([{"role": "user", "content": "a"}, {"content": "b"}])


def test_invalid_config_values():
    vision, text = tiny_vision_config().to_dict(), tiny_text_config().to_dict()
    with pytest.raises(ValueError, match=r"fusion_layers=\[2, 9\) is invalid for a language model with 4 layers"):
        ViFTConfig(vision_config=vision, text_config=text, fusion_layers=[2, 9])
    with pytest.raises(ValueError, match="projector_depth must be >= 1, got 0"):
        ViFTConfig(vision_config=vision, text_config=text, projector_depth=0)
    with pytest.raises(ValueError, match="fusion_alpha must be a finite number, got nan"):
        ViFTConfig(vision_config=vision, text_config=text, fusion_alpha=float("nan"))
    with pytest.raises(ValueError, match="vision_feature_select_strategy must be 'default' or 'full', got 'cls'"):
        ViFTConfig(vision_config=vision, text_config=text, vision_feature_select_strategy="cls")


def test_pixel_values_of_the_wrong_rank(tiny):
    model, processor = tiny
    inputs = processor(images=random_images(1), text="<image>", return_tensors="pt")
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(num_images, channels, height, width\), got \(1, 1, 3, 32, 32\)"):
        model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"][None])


def test_model_without_image_token_id_refuses_images():
    config = ViFTConfig(vision_config=tiny_vision_config().to_dict(), text_config=tiny_text_config().to_dict())
    model = ViFTForConditionalGeneration(config)
    with pytest.raises(ValueError, match="config.image_token_id is None"):
        model(input_ids=torch.ones(1, 16, dtype=torch.long), pixel_values=torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("shape", [(1, 3, 48, 48), (1, 1, 32, 32)])
def test_pixel_values_of_the_wrong_size(tiny, shape):
    model, _ = tiny
    with pytest.raises(ValueError, match=rf"images of shape \({shape[1]}, {shape[2]}, {shape[3]}\) but the vision tower takes \(3, 32, 32\)"):
        model.get_image_features(torch.zeros(shape))


def test_a_mistyped_local_model_path_is_named_not_sent_to_the_hub(tmp_path):
    from modeling_vift.evaluation.pipeline import load_model_and_processor
    from modeling_vift.publishing.upload import check_model_location

    for name in (str(tmp_path / "stage2" / "checkpoint-10"), "outputs/stage2/checkpoint-10", "./vift-7b"):
        with pytest.raises(FileNotFoundError, match="does not exist on this machine"):
            load_model_and_processor(name)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="is a file"):
        check_model_location(str(tmp_path / "config.json"))
    check_model_location(str(tmp_path))  # an existing folder
    check_model_location("Qwen/Qwen2.5-7B-Instruct")  # a Hub id is left to from_pretrained
