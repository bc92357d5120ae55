"""Fused generation overhead: plain generate vs the fused fast path vs the sequential reference, side by side.

    python benchmarks/fusion_overhead.py                       # CPU: tiny and small shapes
    python benchmarks/fusion_overhead.py --device cuda --shapes real   # GPU: Qwen2.5-7B + SigLIP-so400m shapes, bf16

Models are randomly initialised (no download). Every run generates exactly `new_tokens` tokens per row
(min_new_tokens = max_new_tokens), greedy, one image per prompt. The reference is the authors' algorithm as they
run it: one prompt at a time, three full passes (tests/fusion_reference.py). Prints wall time, generated
tokens/s and the two ratios the targets are about: fused/plain time at batch 1, fused/reference throughput.
"""

import argparse
import os
import sys
import time
from functools import partial

import torch


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_vift import ViFTConfig, ViFTForConditionalGeneration  # noqa: E402
from tests.fusion_reference import reference_fused_generate  # noqa: E402


SHAPES = {
    # hidden sizes etc. of the text model / vision tower
    "tiny": dict(
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, vocab_size=300),
        vision=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        prompt=(12, 24),
    ),
    "small": dict(
        text=dict(hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2, vocab_size=8000),
        vision=dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, image_size=224, patch_size=16),
        prompt=(20, 40),
    ),
    # Qwen2.5-7B-Instruct + SigLIP-so400m-patch14-384 (729 image tokens), the authors' model
    "real": dict(
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                  vocab_size=152064, rope_theta=1000000.0),
        vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=384, patch_size=14),
        prompt=(30, 60),
    ),
}


def build(shape, device, dtype):
    spec = SHAPES[shape]
    text = dict(model_type="qwen2", max_position_embeddings=32768, tie_word_embeddings=False, **spec["text"])
    vision = dict(model_type="siglip_vision_model", **spec["vision"])
    config = ViFTConfig(vision_config=vision, text_config=text, image_token_id=spec["text"]["vocab_size"] - 1)
    torch.manual_seed(0)
    with torch.device(device):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = ViFTForConditionalGeneration(config).eval()
        finally:
            torch.set_default_dtype(previous)
    return model


def make_batch(model, batch, device, seed, question_lengths):
    """Left-padded chat-like prompts: prefix, one image, question; lengths vary per row."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    low, high = question_lengths
    rows, text_rows = [], []
    for _ in range(batch):
        prefix = torch.randint(0, config.image_token_id, (int(torch.randint(4, 8, (1,), generator=generator)),), generator=generator)
        question = torch.randint(0, config.image_token_id, (int(torch.randint(low, high, (1,), generator=generator)),), generator=generator)
        image = torch.full((config.image_seq_length,), config.image_token_id)
        rows.append(torch.cat([prefix, image, question]))
        text_rows.append(torch.cat([prefix, question]))

    def pad(seqs):
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = s
            mask[i, width - len(s):] = 1
        return ids.to(device), mask.to(device)

    input_ids, attention_mask = pad(rows)
    text_input_ids, text_attention_mask = pad(text_rows)
    vision = config.vision_config
    pixel_values = torch.randn(batch, 3, vision.image_size, vision.image_size, generator=generator).to(device)
    return dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                text_input_ids=text_input_ids, text_attention_mask=text_attention_mask)



def timed(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def run_plain(model, batch, gen):
    inputs = {k: v for k, v in batch.items() if not k.startswith("text_")}
    return model.generate(**inputs, **gen)


def run_fused(model, batch, gen, layers):
    return model.generate(**batch, fusion=True, fusion_alpha=0.5, fusion_beta=0.5, fusion_layers=layers, **gen)


def run_reference(model, batch, gen, layers):
    outs = []
    for row in range(batch["input_ids"].shape[0]):
        mask = batch["attention_mask"][row].bool()
        text_mask = batch["text_attention_mask"][row].bool()
        outs.append(reference_fused_generate(
            model,
            batch["input_ids"][row][mask].unsqueeze(0),
            batch["pixel_values"][row:row + 1],
            batch["text_input_ids"][row][text_mask].unsqueeze(0),
            0.5, 0.5, layers, **gen,
        ))
    return outs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", default=None)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 16])
    parser.add_argument("--new-tokens", nargs="+", type=int, default=[32, 256])
    parser.add_argument("--skip-reference-above", type=int, default=10**9,
                        help="skip the (slow) sequential reference for batches larger than this")
    args = parser.parse_args()
    device = args.device
    shapes = args.shapes or (["real"] if device == "cuda" else ["tiny", "small"])
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cpu":
        print(f"# CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, float32")
    else:
        print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, bfloat16")
    header = (f"{'shape':6} {'batch':>5} {'new':>4} | {'plain s':>8} {'fused s':>8} {'ref s':>8} | "
              f"{'plain tok/s':>11} {'fused tok/s':>11} {'ref tok/s':>9} | {'fused/plain':>11} {'fused/ref thr':>13}")
    print(header)
    print("-" * len(header))
    for shape in shapes:
        model = build(shape, device, dtype)
        layers_total = model.config.text_config.num_hidden_layers
        layers = (layers_total // 2, layers_total)
        warm = make_batch(model, 1, device, seed=0, question_lengths=SHAPES[shape]["prompt"])
        run_fused(model, warm, dict(max_new_tokens=2, min_new_tokens=2, do_sample=False), layers)
        run_plain(model, warm, dict(max_new_tokens=2, min_new_tokens=2, do_sample=False))
        for new_tokens in args.new_tokens:
            gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            for batch_size in args.batches:
                batch = make_batch(model, batch_size, device, seed=batch_size, question_lengths=SHAPES[shape]["prompt"])
                t_plain, _ = timed(partial(run_plain, model, batch, gen), device)
                t_fused, _ = timed(partial(run_fused, model, batch, gen, layers), device)
                if batch_size <= args.skip_reference_above:
                    t_ref, _ = timed(partial(run_reference, model, batch, gen, layers), device)
                else:
                    t_ref = float("nan")
                tokens = batch_size * new_tokens
                print(f"{shape:6} {batch_size:5d} {new_tokens:4d} | {t_plain:8.3f} {t_fused:8.3f} {t_ref:8.3f} | "
                      f"{tokens / t_plain:11.1f} {tokens / t_fused:11.1f} {tokens / t_ref:9.1f} | "
                      f"{t_fused / t_plain:11.3f} {t_ref / t_fused:13.2f}", flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
