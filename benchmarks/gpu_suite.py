"""The GPU suite: every speed and memory figure the project targets, in one command and one table.

    python benchmarks/gpu_suite.py                      # on a GPU: the real shapes in bf16 (under 8 min on one H100/H200)
    python benchmarks/gpu_suite.py --tiny               # anywhere: tiny shapes, float32 on CPU (tests run this)

Random weights with the real shapes; nothing is downloaded. Three parts, each measured side by side in one run:
1. Generation (Qwen2.5-7B + SigLIP-so400m shapes, 729 image tokens): plain vs fused `generate` at batch 1 and 16,
   exactly `--new_tokens` greedy tokens per row, plus the authors' sequential reference (one prompt at a time,
   three passes). Targets: fused <= 1.05x plain time at batch 1; fused batch-16 throughput >= 12x the reference.
2. A stage-2 training step (Qwen2.5-1.5B LM + SigLIP-so400m shapes, packed padding-free rows, bf16, AdamW),
   gradient checkpointing off and on: real tokens/s, MFU and peak memory. MFU = achieved FLOP/s / peak FLOP/s with
   FLOPs per step = 6 * N_lm * T + 6 * N_vision * I + 12 * L * d * sum(s_i^2) (T real tokens, I image patches, s_i
   each packed sample's length, L layers, d hidden size: forward + backward of the matmuls and of causal attention
   counted in full, as in the PaLM appendix; recomputation under checkpointing is not counted as useful work).
   Target: >= 40 % MFU packed.
3. Packed vs padded: the same samples as padding-free packed rows and as padded batches, real tokens/s.
Peak FLOP/s: `--peak_tflops`, else 989 for H100/H200 (dense bf16), else none (MFU not printed).
"""

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from transformers.utils import is_flash_attn_2_available


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.fusion_overhead import make_batch, run_fused, run_plain, run_reference  # noqa: E402
from benchmarks.packing import packed_batches, padded_batches, sample_lengths  # noqa: E402
from modeling_vift import ViFTConfig, ViFTForConditionalGeneration  # noqa: E402
from modeling_vift.training.packing import PACKED_SDPA, pack_bfd, register_packed_sdpa  # noqa: E402


SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                     image_size=384, patch_size=14)
QWEN25_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152064, rope_theta=1000000.0)
QWEN25_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                   num_key_value_heads=2, vocab_size=151936, rope_theta=1000000.0)
TINY_VISION = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                   patch_size=8)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=300)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}


@dataclass
class Row:
    part: str
    case: str
    value: str
    ratio: str = ""
    target: str = ""


def build(text, vision, device, dtype, max_positions=32768):
    config = ViFTConfig(
        vision_config=dict(model_type="siglip_vision_model", **vision),
        text_config=dict(model_type="qwen2", max_position_embeddings=max_positions, tie_word_embeddings=False, **text),
        image_token_id=text["vocab_size"] - 1,
    )
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = ViFTForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device, fn):
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def generation_part(args, device, dtype):
    text, vision = (TINY_TEXT, TINY_VISION) if args.tiny else (QWEN25_7B, SIGLIP_SO400M)
    model = build(text, vision, device, dtype).eval()
    n_layers = model.config.text_config.num_hidden_layers
    layers = (n_layers // 2, n_layers)
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    warm = make_batch(model, 1, device, seed=0, question_lengths=(30, 60))
    run_plain(model, warm, dict(gen, max_new_tokens=2, min_new_tokens=2))
    run_fused(model, warm, dict(gen, max_new_tokens=2, min_new_tokens=2), layers)
    rows = []
    for batch_size in (1, 16):
        batch = make_batch(model, batch_size, device, seed=batch_size, question_lengths=(30, 60))
        plain = timed(device, lambda: run_plain(model, batch, gen))
        fused = timed(device, lambda: run_fused(model, batch, gen, layers))
        reference = timed(device, lambda: run_reference(model, batch, gen, layers))
        tokens = batch_size * args.new_tokens
        case = f"batch {batch_size}, {args.new_tokens} new tokens"
        rows.append(Row("generate", f"{case}: plain", f"{tokens / plain:,.1f} tok/s ({plain:.2f} s)"))
        rows.append(Row("generate", f"{case}: fused", f"{tokens / fused:,.1f} tok/s ({fused:.2f} s)",
                        f"{fused / plain:.3f}x plain time", "<= 1.05x" if batch_size == 1 else ""))
        rows.append(Row("generate", f"{case}: sequential reference", f"{tokens / reference:,.1f} tok/s ({reference:.2f} s)",
                        f"fused {reference / fused:.2f}x its throughput", ">= 12x" if batch_size == 16 else ""))
    return rows


def training_samples(args, config, rng, n):
    """The stage-2 length mix (70 % captions): real shapes as benchmarks/packing.py draws it (729 image tokens +
    50-300 text tokens, or 100-3000 text tokens); tiny shapes scaled down to the tiny tower's image tokens."""
    if args.tiny:
        images = (rng.random(n) < 0.7).astype(np.int64)
        lengths = np.where(images, config.image_seq_length + rng.integers(8, 40, n), rng.integers(8, 120, n))
    else:
        lengths, images = sample_lengths(n, 0.7, rng)
    samples = []
    for length, has_image in zip(lengths, images):
        ids = torch.from_numpy(rng.integers(10, config.image_token_id, int(length)))
        labels = ids.clone()
        if has_image:
            ids[:config.image_seq_length] = config.image_token_id
            labels[:config.image_seq_length] = -100
        labels[0] = -100
        samples.append((ids, labels, int(has_image)))
    return lengths, images, samples


def step_flops(model, batches):
    config = model.config
    n_lm = sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    n_vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    text = config.text_config
    flops = 0
    for batch, n_images, tokens in batches:
        if "cu_seq_lens_q" in batch:
            edges = batch["cu_seq_lens_q"].tolist()
            squares = sum((b - a) ** 2 for a, b in zip(edges[:-1], edges[1:]))
        else:
            squares = int((batch["attention_mask"].sum(-1) ** 2).sum())
        flops += 6 * n_lm * tokens + 6 * n_vision * n_images * config.image_seq_length
        flops += 12 * text.num_hidden_layers * text.hidden_size * squares
    return flops


def train_steps(model, batches, device, dtype, steps):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    image_size = model.config.vision_config.image_size

    def step(batch, n_images):
        batch = {k: v.to(device) for k, v in batch.items()}
        if n_images:
            batch["pixel_values"] = torch.randn(n_images, 3, image_size, image_size, device=device, dtype=dtype)
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(*batches[0][:2])  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for batch, n_images, _ in batches[1:steps + 1]:
        times.append(timed(device, lambda: step(batch, n_images)))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return times, peak


def training_part(args, device, dtype, peak_tflops):
    text, vision = (TINY_TEXT, TINY_VISION) if args.tiny else (QWEN25_1_5B, SIGLIP_SO400M)
    max_length = 256 if args.tiny else args.max_length
    model = build(text, vision, device, dtype, max_positions=max(max_length, 8192)).train()
    packed_attention = "flash_attention_2" if device.type == "cuda" and is_flash_attn_2_available() else PACKED_SDPA
    rng = np.random.default_rng(args.seed)
    lengths, images, samples = training_samples(args, model.config, rng, args.samples)
    bins = pack_bfd(lengths, max_length, images, max_images_per_row=8)
    packed = list(packed_batches(samples, bins, model.config.vision_config.image_size, seq_lens=True))
    rows = []
    for checkpointing in (False, True):
        if checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # the name from transformers 5.24 on
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.set_attn_implementation(packed_attention)
        times, peak = train_steps(model, packed, device, dtype, args.steps)
        used = packed[1:args.steps + 1]
        tokens = sum(t for _, _, t in used)
        rate = tokens / sum(times)
        mfu = step_flops(model, used) / sum(times) / (peak_tflops * 1e12) if peak_tflops else None
        case = f"packed rows of {max_length} ({packed_attention}), checkpointing {'on' if checkpointing else 'off'}"
        value = f"{rate:,.0f} tok/s, step {statistics.median(times):.3f} s"
        value += f", peak {peak:.1f} GiB" if peak == peak else ""
        rows.append(Row("train step", case, value, f"MFU {mfu:.1%}" if mfu is not None else "MFU n/a (no peak FLOP/s)",
                        ">= 40 %" if not checkpointing else ""))
    (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()

    # Packed vs padded on the same samples (checkpointing off, same optimizer work per sample).
    order = rng.permutation(len(samples)).tolist()
    padded = list(padded_batches(samples, order, args.padded_batch_size, model.config.vision_config.image_size))
    rates = {}
    for name, attention, batches in (("padded batches (sdpa)", "sdpa", padded),
                                     (f"packed rows ({packed_attention})", packed_attention, packed)):
        model.set_attn_implementation(attention)
        times, _ = train_steps(model, batches, device, dtype, len(batches) - 1)
        rates[name] = sum(t for _, _, t in batches[1:]) / sum(times)
    base = rates["padded batches (sdpa)"]
    for name, rate in rates.items():
        rows.append(Row("packed vs padded", name, f"{rate:,.0f} real tok/s", f"{rate / base:.2f}x padded"))
    return rows


def peak_flops(args, device):
    if args.peak_tflops:
        return args.peak_tflops
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        return next((value for key, value in PEAK_TFLOPS.items() if key in name), None)
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (float32 on CPU): checks the suite runs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--new_tokens", type=int, default=None, help="new tokens per row (default 256; 8 with --tiny)")
    parser.add_argument("--max_length", type=int, default=4096, help="packed row length of the training part")
    parser.add_argument("--samples", type=int, default=None, help="training samples (default 96; 24 with --tiny)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per setting")
    parser.add_argument("--padded_batch_size", type=int, default=4)
    parser.add_argument("--peak_tflops", type=float, default=None, help="the accelerator's peak dense bf16 TFLOP/s")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.new_tokens = args.new_tokens or (8 if args.tiny else 256)
    args.samples = args.samples or (24 if args.tiny else 96)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    register_packed_sdpa()
    accelerator = torch.cuda.get_device_name() if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    print(f"# {platform.machine()}, {accelerator}, torch {torch.__version__}, {dtype}, "
          f"{'tiny' if args.tiny else 'real'} shapes", flush=True)
    start = time.perf_counter()
    rows = generation_part(args, device, dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    rows += training_part(args, device, dtype, peak_flops(args, device))
    print("\n| part | case | measured | ratio | target |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.part} | {row.case} | {row.value} | {row.ratio} | {row.target} |")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return rows


if __name__ == "__main__":
    main()
