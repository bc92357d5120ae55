"""Peak memory of the LM head + loss with a large vocabulary, side by side in one run: the model's own loss (full
[tokens x vocab] logits), the fused LM head that TRL's `SFTTrainer` puts on every model it trains
(`trl.trainer.utils.add_fused_lm_head`: 4096-token x 32768-column tiles; on CPU its tiles are folded with torch ops),
and the model's own chunked loss (`loss_chunk_size`, recipe option of the same name).

    python benchmarks/lm_head_memory.py --tokens 1024 2048 4096 --vocab 151936 --chunk 256

Each measurement runs in a fresh Python process (so one variant's freed memory cannot hide the other's peak): it
builds a ViFT model with a tiny Qwen2 LM (hidden 64, 2 layers) and the given vocabulary, records the process's peak
resident memory (`ru_maxrss`), runs one forward + backward on a text-only row of `--tokens` tokens (every token a
target), and reports the growth of the peak above what the model alone needed, with the loss and the largest
difference of the LM head's gradient between the two variants. CPU, float32, random weights.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys

import torch


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = {
    "full": "model loss (full logits)",
    "trl": "TRL's fused LM head (SFTTrainer's default)",
    "vift": "model loss with loss_chunk_size",
}


def peak_rss_bytes():
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure(variant, tokens, vocab, seed, chunk):
    from modeling_vift import ViFTConfig, ViFTForConditionalGeneration

    config = ViFTConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        text_config=dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                         max_position_embeddings=max(tokens, 64), tie_word_embeddings=False),
        image_token_id=vocab - 1,
    )
    torch.manual_seed(seed)
    model = ViFTForConditionalGeneration(config).train()
    model.set_attn_implementation("sdpa")
    ids = torch.randint(0, vocab - 1, (1, tokens))
    labels = ids.clone()
    labels[0, 0] = -100
    if variant == "trl":
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model)
    before = peak_rss_bytes()
    if variant == "trl":
        loss = model(input_ids=ids, labels=labels, fused_lm_head=True).loss
    elif variant == "vift":
        loss = model(input_ids=ids, labels=labels, loss_chunk_size=chunk).loss
    else:
        loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    after = peak_rss_bytes()
    grad = model.get_output_embeddings().weight.grad
    return {"before": before, "after": after, "loss": float(loss), "grad": grad.flatten()[:4096].tolist()}


def run_child(variant, tokens, vocab, seed, chunk):
    command = [sys.executable, os.path.abspath(__file__), "--child", variant, "--tokens", str(tokens),
               "--vocab", str(vocab), "--seed", str(seed), "--chunk", str(chunk)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--vocab", type=int, default=151936, help="Qwen2.5's vocabulary: 151,936 rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=256, help="loss_chunk_size: target tokens per chunk")
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.tokens[0], args.vocab, args.seed, args.chunk)))
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}; vocabulary "
          f"{args.vocab:,}, LM hidden 64, float32, loss_chunk_size {args.chunk}, one forward + backward per fresh "
          f"process; peak growth = rise of the process's peak RSS during the step")
    print("| tokens | logits (tokens x vocab x 4 B) | " + " | ".join(f"peak growth: {name}" for name in VARIANTS.values())
          + " | TRL / full | chunked / full | loss: full, TRL, chunked | max abs grad diff vs full (TRL, chunked) |")
    print("|---" * (6 + len(VARIANTS)) + "|")
    for tokens in args.tokens:
        results = {variant: run_child(variant, tokens, args.vocab, args.seed, args.chunk) for variant in VARIANTS}
        growth = {v: (r["after"] - r["before"]) / 2**20 for v, r in results.items()}
        diffs = [max(abs(a - b) for a, b in zip(results["full"]["grad"], results[v]["grad"])) for v in ("trl", "vift")]
        print(f"| {tokens} | {tokens * args.vocab * 4 / 2**20:,.0f} MiB | "
              + " | ".join(f"{growth[v]:,.0f} MiB" for v in VARIANTS)
              + f" | {growth['trl'] / max(growth['full'], 1e-9):.2f} | {growth['vift'] / max(growth['full'], 1e-9):.2f}"
              f" | {results['full']['loss']:.6f}, {results['trl']['loss']:.6f}, {results['vift']['loss']:.6f}"
              f" | {diffs[0]:.1e}, {diffs[1]:.1e} |", flush=True)

if __name__ == "__main__":
    main()
