"""peft LoRA on the language model of a ViFT model."""

import torch
from peft import LoraConfig, get_peft_model

from modeling_vift.testing_utils import random_images, tiny_vift


# Only the language model's projections: SigLIP's attention has q_proj/v_proj too, which must stay untouched.
LANGUAGE_MODEL_LORA = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                 target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)")


def batch_of(processor):
    images = random_images(3)
    texts = ["<image>\ndescribe the image", "how many shapes are there?", "<image> and <image> which has more shapes?"]
    batch = processor(images=[images[:1], [], images[1:]], text=texts, return_tensors="pt", padding_side="right")
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


def test_lora_on_the_language_model_wraps_and_trains_one_step():
    model, processor = tiny_vift()
    peft_model = get_peft_model(model, LANGUAGE_MODEL_LORA)
    wrapped = {name for name, module in peft_model.named_modules() if hasattr(module, "lora_A")}
    layers = model.config.text_config.num_hidden_layers
    assert len(wrapped) == 4 * layers  # q, k, v, o of every decoder layer
    assert all(".language_model." in name for name in wrapped)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    loss = peft_model(**batch_of(processor)).loss
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()

    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "the step changed nothing"
    assert all("lora_" in n for n in changed), sorted(n for n in changed if "lora_" not in n)
    assert any("lora_B" in n for n in changed)  # B starts at zero; the first step moves it


def test_lora_model_generates_and_merges_to_the_same_function():
    model, processor = tiny_vift()
    peft_model = get_peft_model(model, LANGUAGE_MODEL_LORA)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # a trained-looking adapter, so merging has an effect to preserve
            torch.nn.init.normal_(param, std=0.1)
    peft_model.eval()
    batch = batch_of(processor)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        adapted = peft_model(**inputs).logits
        base = peft_model.get_base_model()
        with peft_model.disable_adapter():
            plain = base(**inputs).logits
    assert (adapted - plain).abs().max() > 1e-3
    generated = peft_model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape == (3, inputs["input_ids"].shape[1] + 4)

    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapted, rtol=0, atol=1e-5)
