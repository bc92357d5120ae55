"""Vision-aware packing vs padded batching, side by side: how much of each batch is real tokens, and training
tokens/s on a model at every caption share.

    python benchmarks/packing.py --shapes tiny --samples 24 --repeats 2      # CPU: fill table + tiny-model throughput
    python benchmarks/packing.py --device cuda --shapes 0.5b --dtype bfloat16 --samples 256   # GPU

Length mix (synthetic, like ViFT's stage 2): caption samples are 729 image tokens (SigLIP-so400m at 384 px) plus
50-300 text tokens; text-only instructions are 100-3000 tokens with 1-4 assistant turns (an assumption: uniform
count, turn ends at random token offsets); rows of max_length 4096. The fill table uses the packers of
`modeling_vift.training.packing` (best-fit decreasing, at most 8 images per row; whole samples, and with
`packing_split_turns`: text conversations cut after assistant turns) on 20,000 samples per mix.
The throughput part trains the same samples (caption share 0.5, 0.7 and 0.9) as length-grouped padded batches
(the samples sorted by length, then batched, like `group_by_length` over one mega-batch) and as packed rows with
split turns under `vift_packed_sdpa` (forward, backward, AdamW step), alternating the two passes `--repeats`
times; it reports median real (non-padding) tokens per second and their ratio. Models are randomly initialised;
the vision tower of every shape emits 729 tokens per image.
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
from modeling_vift.training.packing import (  # noqa: E402
    PACKED_SDPA,
    fill_ratio,
    pack_bfd,
    pack_bfd_split,
    register_packed_sdpa,
)


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


def sample_mix(n, caption_share, rng):
    """`sample_lengths` plus, for text samples of several turns, the offsets where a turn ends (1-4 turns)."""
    lengths, images = sample_lengths(n, caption_share, rng)
    turns = rng.integers(1, 5, n)
    points = {int(i): np.unique(rng.integers(1, lengths[i], turns[i] - 1))
              for i in np.flatnonzero((images == 0) & (turns > 1))}
    return lengths, images, points


def piece_tokens(rows):
    return [sum(end - start for _, start, end in row) for row in rows]


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
        lengths, images, points = sample_mix(20_000, share, rng)
        bins = pack_bfd(lengths, max_length, images, max_images_per_row=8)
        split = pack_bfd_split(lengths, max_length, points, images, max_images_per_row=8)
        cut = sum(len(row) for row in split) - len(lengths)
        rows.append((share, padded_fill(lengths, batch_size, rng), padded_fill(lengths, batch_size, rng, True),
                     fill_ratio([lengths[b].sum() for b in bins], max_length),
                     fill_ratio(piece_tokens(split), max_length), cut / len(points)))
    print(f"\nNon-padding share of the token slots (20,000 samples per mix, max_length {max_length}, "
          f"padded batches of {batch_size})")
    print("| caption share | padded (random) | padded (length-grouped) | packed (BFD) | packed, turns split "
          "| cuts per multi-turn text sample |")
    print("|---|---|---|---|---|---|")
    for share, padded, grouped, packed, split, cuts in rows:
        print(f"| {share:.1f} | {padded:.3f} | {grouped:.3f} | {packed:.4f} | {split:.4f} | {cuts:.2f} |")


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
    """Packed rows of whole samples (`bins` of sample indices)."""
    rows = [[(int(i), 0, len(samples[i][0])) for i in members] for members in bins]
    return piece_batches(samples, rows, seq_lens)


def piece_batches(samples, rows, seq_lens=False):
    """One padding-free row per packed row of `(sample, start, end)` pieces; the first label of a piece is ignored
    and positions restart per piece, as ViFTDataCollator builds them."""
    for row in rows:
        ids, labels, positions, sizes = [], [], [], []
        for index, start, end in row:
            ids.append(samples[index][0][start:end])
            piece_labels = samples[index][1][start:end].clone()
            piece_labels[0] = -100
            labels.append(piece_labels)
            positions.append(torch.arange(end - start))
            sizes.append(end - start)
        n_images = sum(samples[index][2] for index, start, _ in row if start == 0)
        batch = dict(input_ids=torch.cat(ids)[None], labels=torch.cat(labels)[None],
                     position_ids=torch.cat(positions)[None])
        if seq_lens:  # the boundaries ViFTDataCollator(return_seq_lens=True) adds
            lengths = torch.tensor(sizes)
            batch["cu_seq_lens_q"] = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).to(torch.int32)])
        yield batch, n_images, int(sum(sizes))


def padded_batches(samples, order, batch_size, image_size=None):
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
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    print(f"\nTraining throughput, {shape} model on {args.device} ({args.dtype}): {args.samples} samples per mix, "
          f"length-grouped padded batches of {args.batch_size} (sdpa) vs packed rows of {args.max_length} with "
          f"split turns ({PACKED_SDPA}); forward + backward + AdamW; median of {args.repeats} alternating passes")
    print("| caption share | layout | batches | real tokens / s | non-padding share | packed / grouped |")
    print("|---|---|---|---|---|---|")
    for share in (0.5, 0.7, 0.9):
        rng = np.random.default_rng(args.seed)
        lengths, images, points = sample_mix(args.samples, share, rng)
        samples = [make_sample(int(n), bool(i), model.config, rng) for n, i in zip(lengths, images)]
        rows = pack_bfd_split(lengths, args.max_length, points, images, max_images_per_row=8)
        order = np.argsort(-lengths, kind="stable").tolist()  # length-grouped: all samples in one mega-batch
        layouts = {
            "padded, length-grouped": ("sdpa", lambda: padded_batches(samples, order, args.batch_size)),
            "packed, turns split": (PACKED_SDPA, lambda: piece_batches(samples, rows, True)),
        }
        for attention, batches in layouts.values():  # warm-up: one batch of each
            model.set_attn_implementation(attention)
            train_pass(model, optimizer, [next(iter(batches()))], device, image_size, dtype)
        rates = {name: [] for name in layouts}
        for _ in range(args.repeats):
            for name, (attention, batches) in layouts.items():
                model.set_attn_implementation(attention)
                rates[name].append(train_pass(model, optimizer, batches(), device, image_size, dtype))
        batches_of = -(-len(order) // args.batch_size)
        slots = sum(len(order[s:s + args.batch_size]) * max(lengths[order[s:s + args.batch_size]])
                    for s in range(0, len(order), args.batch_size))
        shares = {"padded, length-grouped": lengths.sum() / slots,
                  "packed, turns split": fill_ratio(piece_tokens(rows), args.max_length)}
        counts = {"padded, length-grouped": batches_of, "packed, turns split": len(rows)}
        base = statistics.median(rates["padded, length-grouped"])
        for name, values in rates.items():
            print(f"| {share:.1f} | {name} | {counts[name]} | {statistics.median(values):,.0f} | {shares[name]:.3f} "
                  f"| {statistics.median(values) / base:.2f}x |", flush=True)


def main():
    register_packed_sdpa()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--shapes", nargs="+", default=["tiny"], choices=sorted(SHAPES))
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--batch_size", type=int, default=4, help="samples per padded batch")
    parser.add_argument("--samples", type=int, default=24, help="samples per mix in the throughput runs")
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
