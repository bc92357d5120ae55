"""Vision-aware packing vs padded batching, side by side: how much of each batch is real tokens, and training
tokens/s on a model.

    python benchmarks/packing.py --shapes tiny small              # CPU: fill table + the tiny and a small model
    python benchmarks/packing.py --device cuda --shapes 0.5b --dtype bfloat16 --samples 256   # GPU

Length mix (synthetic, like ViFT's stage 2): caption samples are 729 image tokens (SigLIP-so400m at 384 px) plus
50-300 text tokens; text-only instructions are 100-3000 tokens; rows of max_length 4096. The fill table uses the
packer of `modeling_vift.training.packing` (best-fit decreasing, at most 8 images per row) on 20,000 samples per mix.
The throughput part trains the same samples both ways (forward, backward, AdamW step) and alternates the two
passes `--repeats` times; it reports median real (non-padding) tokens per second and their ratio. Models are
randomly initialised; the vision tower of every shape emits 729 tokens per image.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_vift import ViFTConfig, ViFTForConditionalGeneration  # noqa: E402
from modeling_vift.training.packing import PACKED_SDPA, fill_ratio, pack_bfd, register_packed_sdpa  # noqa: E402


IMAGE_TOKENS = 729
SHAPES = {
    "tiny": dict(
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=300),
        vision=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=216,
                    patch_size=8),
    ),
    # A small LM (projections outweigh attention, as in real models) with the tiny vision tower: still fine on a CPU.
    "small": dict(
        text=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=8000),
        vision=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=216,
                    patch_size=8),
    ),
    # Qwen2.5-0.5B's LM shape and SigLIP-so400m's vision tower.
    "0.5b": dict(
        text=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936),
        vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                    image_size=384, patch_size=14),
    ),
}


def sample_lengths(n, caption_share, rng):
    is_caption = rng.random(n) < caption_share
    lengths = np.where(is_caption, IMAGE_TOKENS + rng.integers(50, 301, n), rng.integers(100, 3001, n))
    return lengths.astype(np.int64), is_caption.astype(np.int64)


def padded_fill(lengths, batch_size, rng, group_by_length=False):
    order = rng.permutation(len(lengths))
    if group_by_length:  # like transformers' group_by_length: sort inside mega-batches of 50 batches
        mega = 50 * batch_size
        order = np.concatenate([
            chunk[np.argsort(-lengths[chunk], kind="stable")] for chunk in np.array_split(order, max(1, len(order) // mega))
        ])
    real = slots = 0
    for start in range(0, len(order), batch_size):
        batch = lengths[order[start:start + batch_size]]
        real += batch.sum()
        slots += len(batch) * batch.max()
    return real / slots


def fill_table(max_length, batch_size, seed):
    rows = []
    for share in (0.5, 0.7, 0.9):
        rng = np.random.default_rng(seed)
        lengths, images = sample_lengths(20_000, share, rng)
        bins = pack_bfd(lengths, max_length, images, max_images_per_row=8)
        rows.append((share, padded_fill(lengths, batch_size, rng), padded_fill(lengths, batch_size, rng, True),
                     fill_ratio([lengths[b].sum() for b in bins], max_length), len(lengths) / len(bins)))
    print(f"\nNon-padding share of the token slots (20,000 samples per mix, max_length {max_length}, "
          f"padded batches of {batch_size})")
    print("| caption share | padded (random) | padded (length-grouped) | packed (BFD) | samples / packed row |")
    print("|---|---|---|---|---|")
    for share, padded, grouped, packed, per_row in rows:
        print(f"| {share:.1f} | {padded:.3f} | {grouped:.3f} | {packed:.4f} | {per_row:.2f} |")


def build_model(shape, device, dtype):
    spec = SHAPES[shape]
    text = dict(spec["text"], max_position_embeddings=8192, tie_word_embeddings=False)
    config = ViFTConfig(
        vision_config=dict(model_type="siglip_vision_model", **spec["vision"]),
        text_config=dict(model_type="qwen2", **text),
        image_token_id=text["vocab_size"] - 1,
    )
    assert config.image_seq_length == IMAGE_TOKENS, config.image_seq_length
    torch.manual_seed(0)
    model = ViFTForConditionalGeneration(config).to(device=device, dtype=dtype).train()
    model.set_attn_implementation("sdpa")
    return model


def make_sample(length, has_image, config, rng):
    vocab, image_id = config.text_config.vocab_size, config.image_token_id
    ids = rng.integers(10, vocab - 1, length)
    labels = ids.copy()
    if has_image:
        ids[:IMAGE_TOKENS] = image_id
        labels[:IMAGE_TOKENS] = -100
    labels[0] = -100
    return torch.from_numpy(ids), torch.from_numpy(labels), int(has_image)


def packed_batches(samples, bins, image_size, seq_lens=False):
    for members in bins:
        ids = torch.cat([samples[i][0] for i in members])[None]
        labels = torch.cat([samples[i][1] for i in members])[None]
        positions = torch.cat([torch.arange(len(samples[i][0])) for i in members])[None]
        n_images = sum(samples[i][2] for i in members)
        batch = dict(input_ids=ids, labels=labels, position_ids=positions)
        if seq_lens:  # the boundaries ViFTDataCollator(return_seq_lens=True) adds
            lengths = torch.tensor([len(samples[i][0]) for i in members])
            batch["cu_seq_lens_q"] = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).to(torch.int32)])
        yield batch, n_images, int(ids.numel())


def padded_batches(samples, order, batch_size, image_size):
    for start in range(0, len(order), batch_size):
        members = order[start:start + batch_size]
        width = max(len(samples[i][0]) for i in members)
        ids = torch.zeros(len(members), width, dtype=torch.long)
        labels = torch.full((len(members), width), -100, dtype=torch.long)
        mask = torch.zeros(len(members), width, dtype=torch.long)
        for row, i in enumerate(members):
            n = len(samples[i][0])
            ids[row, :n], labels[row, :n], mask[row, :n] = samples[i][0], samples[i][1], 1
        n_images = sum(samples[i][2] for i in members)
        yield dict(input_ids=ids, labels=labels, attention_mask=mask), n_images, int(mask.sum())


def train_pass(model, optimizer, batches, device, image_size, dtype):
    real = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch, n_images, tokens in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        if n_images:
            batch["pixel_values"] = torch.randn(n_images, 3, image_size, image_size, device=device, dtype=dtype)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        real += tokens
    if device.type == "cuda":
        torch.cuda.synchronize()
    return real / (time.perf_counter() - start)


def throughput(args, shape):
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = build_model(shape, device, dtype)
    image_size = model.config.vision_config.image_size
    rng = np.random.default_rng(args.seed)
    lengths, images = sample_lengths(args.samples, 0.7, rng)
    samples = [make_sample(int(n), bool(i), model.config, rng) for n, i in zip(lengths, images)]
    bins = pack_bfd(lengths, args.max_length, images, max_images_per_row=8)
    order = rng.permutation(len(samples)).tolist()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    layouts = {
        "padded batches (sdpa)": ("sdpa", lambda: padded_batches(samples, order, args.batch_size, image_size)),
        "packed rows, sdpa with block-diagonal mask": ("sdpa", lambda: packed_batches(samples, bins, image_size)),
        f"packed rows, {PACKED_SDPA}": (PACKED_SDPA, lambda: packed_batches(samples, bins, image_size, True)),
    }
    # Warm-up on one batch of each, then alternate the passes over the same samples.
    for attention, batches in layouts.values():
        model.set_attn_implementation(attention)
        train_pass(model, optimizer, [next(iter(batches()))], device, image_size, dtype)
    rates = {name: [] for name in layouts}
    for _ in range(args.repeats):
        for name, (attention, batches) in layouts.items():
            model.set_attn_implementation(attention)
            rates[name].append(train_pass(model, optimizer, batches(), device, image_size, dtype))
    real = int(lengths.sum())
    pad_slots = sum(len(order[s:s + args.batch_size]) * max(lengths[order[s:s + args.batch_size]])
                    for s in range(0, len(order), args.batch_size))
    packed_fill = fill_ratio([lengths[b].sum() for b in bins], args.max_length)
    print(f"\nTraining throughput, {shape} model on {args.device} ({args.dtype}): {args.samples} samples "
          f"(caption share 0.7, {real} real tokens) as {len(bins)} packed rows of {args.max_length} or "
          f"{-(-len(order) // args.batch_size)} padded batches of {args.batch_size}; forward + backward + AdamW; "
          f"median of {args.repeats} alternating passes")
    print("| layout | real tokens / s | non-padding share | vs padded |")
    print("|---|---|---|---|")
    base = statistics.median(rates["padded batches (sdpa)"])
    for name, values in rates.items():
        share = real / pad_slots if name.startswith("padded") else packed_fill
        print(f"| {name} | {statistics.median(values):,.0f} | {share:.3f} | {statistics.median(values) / base:.2f}x |")


def main():
    register_packed_sdpa()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--shapes", nargs="+", default=["tiny"], choices=sorted(SHAPES))
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--batch_size", type=int, default=4, help="samples per padded batch")
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPU cores, torch "
          f"{torch.__version__}" + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""))
    fill_table(args.max_length, 8, args.seed)
    for shape in args.shapes:
        throughput(args, shape)


if __name__ == "__main__":
    main()
