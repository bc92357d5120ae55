"""ViFTProcessor: placeholder expansion, interleaved images, padding, pad-to-square, chat templates."""

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from modeling_vift import ViFTProcessor
from modeling_vift.testing_utils import CHATML_TEMPLATE, random_images, tiny_image_processor, tiny_tokenizer, tiny_vift


@pytest.fixture(scope="module")
def tiny():
    return tiny_vift()


def image_token_runs(ids, image_token_id):
    """(start, length) of each run of consecutive image tokens."""
    runs, start = [], None
    for i, token in enumerate(ids + [None]):
        if token == image_token_id and start is None:
            start = i
        elif token != image_token_id and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def test_each_placeholder_expands_to_image_seq_length_tokens(tiny):
    _, processor = tiny
    out = processor(images=random_images(2), text="one <image> two <image> end")
    runs = image_token_runs(out["input_ids"][0], processor.image_token_id)
    assert [length for _, length in runs] == [processor.image_seq_length] * 2
    assert out["pixel_values"].shape == (2, 3, 32, 32)
    text_ids = processor.tokenizer("one ", add_special_tokens=False)["input_ids"]
    assert out["input_ids"][0][: len(text_ids)] == text_ids


def test_interleaved_images_land_in_their_own_placeholder_runs(tiny):
    model, processor = tiny
    images = random_images(3, seed=4)
    inputs = processor(images=images, text="first <image> second <image> third <image> which differs?", return_tensors="pt")
    captured = {}
    hook = model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            out = model(**inputs)
    finally:
        hook.remove()
    runs = image_token_runs(inputs["input_ids"][0].tolist(), processor.image_token_id)
    assert len(runs) == 3
    for k, (start, length) in enumerate(runs):
        torch.testing.assert_close(captured["embeds"][0, start:start + length], out.image_hidden_states[k], rtol=0, atol=0)
    # Image k's features are those of image k alone.
    with torch.no_grad():
        second = model.get_image_features(processor(images=images[1:2], text="<image>", return_tensors="pt")["pixel_values"]).pooler_output
    torch.testing.assert_close(out.image_hidden_states[1], second[0], rtol=0, atol=1e-6)


def test_batch_padding_side_and_nested_image_lists(tiny):
    _, processor = tiny
    images = random_images(3)
    texts = ["no image", "<image> one", "<image> <image> two"]
    left = processor(images=[[], images[:1], images[1:]], text=texts, return_tensors="pt", padding_side="left")
    right = processor(images=images, text=texts, return_tensors="pt", padding_side="right")
    assert left["attention_mask"][0, 0] == 0 and left["attention_mask"][0, -1] == 1
    assert right["attention_mask"][0, 0] == 1 and right["attention_mask"][0, -1] == 0
    torch.testing.assert_close(left["pixel_values"], right["pixel_values"], rtol=0, atol=0)
    pad_id = processor.tokenizer.pad_token_id
    assert left["input_ids"][0, 0] == pad_id


def test_return_text_only_gives_the_prompts_without_images(tiny):
    _, processor = tiny
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    out = processor(images=random_images(1), text=prompt, return_text_only=True)
    text_only = processor.apply_chat_template(
        [{"role": "user", "content": "describe the image"}], add_generation_prompt=True
    )
    assert out["text_input_ids"][0] == processor.tokenizer(text_only, add_special_tokens=False)["input_ids"]
    assert processor.image_token_id not in out["text_input_ids"][0]
    assert out["text_attention_mask"][0] == [1] * len(out["text_input_ids"][0])


def non_square(colour=(200, 30, 30), size=(32, 16)):
    return Image.new("RGB", size, colour)


def test_pad_to_square_uses_the_image_processors_mean_colour():
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.5, 0.5)
    image_processor = tiny_image_processor("siglip")
    image_processor.image_mean, image_processor.image_std = list(mean), list(std)
    processor = ViFTProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(), image_seq_length=16,
                              pad_to_square=True)
    padded = processor.prepare_images([non_square()])[0]
    assert padded.size == (32, 32)
    fill = tuple(round(255 * m) for m in mean)
    assert padded.getpixel((0, 0)) == fill and padded.getpixel((31, 31)) == fill
    assert padded.getpixel((16, 16)) == (200, 30, 30)

    pixels = processor(images=[non_square()], text="<image>", return_tensors="pt")["pixel_values"][0]
    # The 8 rows above and below the 32x16 image hold the mean colour, which normalises to ~0 (rounding to 1/255).
    assert pixels[:, :7].abs().max() < 2 / 255 / min(std)
    assert pixels[:, -7:].abs().max() < 2 / 255 / min(std)
    assert pixels[:, 12:20].abs().min() > 0.1

    unpadded = processor(images=[non_square()], text="<image>", return_tensors="pt", pad_to_square=False)["pixel_values"][0]
    assert unpadded[:, :7].abs().min() > 0.1  # stretched, no fill


def test_chat_template_with_and_without_images_over_user_and_assistant_turns(tiny):
    _, processor = tiny
    conversation = [
        {"role": "system", "content": "you are a helpful assistant"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "how many shapes?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
        {"role": "user", "content": "and colours?"},
    ]
    rendered = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nyou are a helpful assistant<|im_end|>\n"
        "<|im_start|>user\n<image>\nhow many shapes?<|im_end|>\n"
        "<|im_start|>assistant\ntwo<|im_end|>\n"
        "<|im_start|>user\nand colours?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    text_only = processor.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text_only == "<|im_start|>user\nhi<|im_end|>\n"
    interleaved = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "compare "}, {"type": "image"}, {"type": "text", "text": "with "},
                                      {"type": "image"}]}]
    )
    assert interleaved == "<|im_start|>user\ncompare <image>\nwith <image>\n<|im_end|>\n"
    batch = processor.apply_chat_template([conversation, [{"role": "user", "content": "hi"}]])
    assert len(batch) == 2 and batch[1] == text_only


def test_chat_template_builds_on_the_language_models_own_template():
    # A template unlike ChatML: the processor keeps it and only flattens image/text items first.
    own = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    processor = ViFTProcessor(image_processor=tiny_image_processor(), tokenizer=tiny_tokenizer(chat_template=own),
                              image_seq_length=16)
    rendered = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]}], add_generation_prompt=True
    )
    assert rendered == "[user] <image>\nwhat?\n[assistant] "


def test_chat_template_tokenize_takes_images_from_the_messages(tiny):
    _, processor = tiny
    images = random_images(2)
    messages = [{"role": "user", "content": [{"type": "image", "image": images[0]}, {"type": "text", "text": "and"},
                                             {"type": "image", "image": images[1]}]}]
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_tensors="pt")
    expected = processor(images=images, text=processor.apply_chat_template(messages, add_generation_prompt=True),
                         return_tensors="pt")
    torch.testing.assert_close(out["input_ids"], expected["input_ids"], rtol=0, atol=0)
    torch.testing.assert_close(out["pixel_values"], expected["pixel_values"], rtol=0, atol=0)


def test_chat_image_items_with_a_path_load_it_and_unreachable_sources_are_refused(tiny, tmp_path):
    _, processor = tiny
    images = random_images(2)
    images[1].save(tmp_path / "second.png")
    by_object = [{"role": "user", "content": [{"type": "image", "image": images[0]}, {"type": "image", "image": images[1]},
                                              {"type": "text", "text": "compare"}]}]
    by_path = [{"role": "user", "content": [{"type": "image", "image": images[0]},
                                            {"type": "image", "path": str(tmp_path / "second.png")},
                                            {"type": "text", "text": "compare"}]}]
    expected = processor.apply_chat_template(by_object, add_generation_prompt=True, tokenize=True, return_tensors="pt")
    out = processor.apply_chat_template(by_path, add_generation_prompt=True, tokenize=True, return_tensors="pt")
    torch.testing.assert_close(out["pixel_values"], expected["pixel_values"], rtol=0, atol=0)
    torch.testing.assert_close(out["input_ids"], expected["input_ids"], rtol=0, atol=0)
    for item in ({"type": "image", "path": str(tmp_path / "missing.png")},
                 {"type": "image", "url": "http://127.0.0.1:9/image.png"}):
        messages = [{"role": "user", "content": [item, {"type": "text", "text": "what is it?"}]}]
        with pytest.raises(ValueError, match="Could not load the chat image"):
            processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)


def test_processor_save_and_load_round_trip(tmp_path):
    tokenizer = tiny_tokenizer(chat_template=CHATML_TEMPLATE)
    processor = ViFTProcessor(image_processor=tiny_image_processor("clip"), tokenizer=tokenizer, image_seq_length=17,
                              pad_to_square=True)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is ViFTProcessor
    assert (loaded.image_seq_length, loaded.pad_to_square, loaded.image_token) == (17, True, "<image>")
    assert loaded.chat_template == processor.chat_template
    assert loaded.image_token_id == processor.image_token_id
    image = random_images(1)
    a = processor(images=image, text="<image> hi", return_tensors="pt")
    b = loaded(images=image, text="<image> hi", return_tensors="pt")
    for key in ("input_ids", "pixel_values"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_per_modality_kwargs_and_decoding_come_from_processor_mixin(tiny):
    _, processor = tiny
    texts = ["<image> one", "two words here"]
    flat = processor(images=random_images(1), text=texts, return_tensors="pt", padding_side="left")
    nested = processor(images=random_images(1), text=texts, text_kwargs={"padding_side": "left", "return_tensors": "pt"})
    torch.testing.assert_close(nested["input_ids"], flat["input_ids"], rtol=0, atol=0)
    assert processor.decode(flat["input_ids"][1], skip_special_tokens=True).endswith("two words here")
    assert set(processor.model_input_names) == {"input_ids", "attention_mask", "pixel_values"}


def test_text_only_prompt_keeps_newlines_that_are_real_text(tiny):
    """Only what an image placeholder added is removed: an image item's newline goes, a newline the caller wrote
    after an inline `<image>` (DEMON contexts) stays."""
    _, processor = tiny
    demon = [{"role": "user", "content": "Step#1: shapes 0.<image>\nStep#2: shapes 1."}]
    prompt = processor.apply_chat_template(demon, add_generation_prompt=True)
    out = processor(images=random_images(1), text=prompt, return_text_only=True)
    expected = processor.apply_chat_template(
        [{"role": "user", "content": "Step#1: shapes 0.\nStep#2: shapes 1."}], add_generation_prompt=True
    )
    assert "shapes 0.\nStep#2" in processor.strip_images(prompt)
    assert out["text_input_ids"][0] == processor.tokenizer(expected, add_special_tokens=False)["input_ids"]
    items = [{"role": "user", "content": [{"type": "text", "text": "Step#1:\n"}, {"type": "image"},
                                          {"type": "text", "text": "Step#2:"}]}]
    assert "Step#1:\nStep#2:" in processor.strip_images(processor.apply_chat_template(items))
    batched = processor.apply_chat_template([demon, items], add_generation_prompt=True)
    assert [processor.strip_images(p) for p in batched] == [expected, processor.apply_chat_template(
        [{"role": "user", "content": "Step#1:\nStep#2:"}], add_generation_prompt=True)]
    import pickle

    restored = pickle.loads(pickle.dumps(prompt))  # a plain str: unpicklable without the (remote-code) processor module
    assert type(restored) is str and restored == prompt
