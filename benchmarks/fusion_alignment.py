"""Right-aligned (the authors') vs token-aligned fused generation, measured on trained demo models.

```bash
python -m demo --config demo/configs/demo.yaml --output_dir /tmp/demo-seed0 --no_reload   # one trained model per seed
python benchmarks/fusion_alignment.py /tmp/demo-seed0 [/tmp/demo-seed1 ...] [--alpha 1.0 --beta 0.5 --layers 0 4]
```

For each demo output folder (its `models/stage2` model and `data/` world), on the held-out test split: accuracy of
plain generation, right-aligned fusion and token-aligned fusion, on the two-image (DEMON-style) questions and on the
single-image questions, at one fusion setting (the one the demo tuned on validation, from `results.json`, unless
given). Then, on the DEMON-format fixtures (`tests/fixtures/eval/demon`), how each alignment pairs positions: the share
of steered positions whose multimodal token is the text-only token's own copy. Prints a table; mean and spread
(min-max) over the folders.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def accuracy_by_images(model, processor, records, images, setting, alignment, batch_size):
    from demo import evaluate as ev

    prompts = [ev.visual_prompt(processor, r) for r in records]
    fusion = None
    if alignment is not None:
        model.generation_config.fusion_alignment = alignment  # fused generate reads it (call > generation config)
        fusion = setting
    answers = ev.generate(model, processor, prompts, images, fusion, batch_size, max_new_tokens=100)
    result = {}
    for name, keep in (("two images", lambda r: len(r["images"]) == 2), ("one image", lambda r: len(r["images"]) == 1)):
        chosen = [(a, r) for a, r in zip(answers, records) if keep(r)]
        if chosen:
            result[name] = ev.accuracy([a for a, _ in chosen], [r for _, r in chosen])["accuracy"]
    result["count"] = {name: sum(1 for r in records if len(r["images"]) == n) for name, n in (("two images", 2),
                                                                                            ("one image", 1))}
    return result


def measure_demo(folder, args):
    import torch

    from demo.run import load_images
    from modeling_vift import ViFTForConditionalGeneration, ViFTProcessor

    torch.set_num_threads(args.threads)
    stage2 = os.path.join(folder, "models", "stage2")
    model = ViFTForConditionalGeneration.from_pretrained(stage2).eval()
    processor = ViFTProcessor.from_pretrained(stage2)
    setting = (args.alpha, args.beta, tuple(args.layers))
    results_path = os.path.join(folder, "results.json")
    if args.alpha is None and os.path.exists(results_path):
        chosen = json.load(open(results_path))["validation"]["chosen"]
        setting = (chosen["alpha"], chosen["beta"], tuple(chosen["layers"]))
    elif args.alpha is None:
        setting = (1.0, 0.5, (0, model.config.text_config.num_hidden_layers))
    data = os.path.join(folder, "data")
    records = json.load(open(os.path.join(data, "test_visual.json")))[: args.limit]
    images = load_images(records, data)
    out = {"folder": folder, "setting": {"alpha": setting[0], "beta": setting[1], "layers": list(setting[2])}}
    for name, alignment in (("plain", None), ("right", "right"), ("token", "token")):
        out[name] = accuracy_by_images(model, processor, records, images, setting, alignment, args.batch_size)
        print(f"  {folder} {name}: {out[name]}", flush=True)
    return out


def demon_pairing(processor):
    """Share of steered positions paired with their own copy, per alignment, on the DEMON-format fixtures."""
    from modeling_vift.evaluation.demon import load_demon
    from modeling_vift.evaluation.runner import render_prompt
    from modeling_vift.remote_code.fusion_vift import fusion_columns
    from modeling_vift.testing_utils import materialize_fixtures

    source = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "eval", "demon")
    with tempfile.TemporaryDirectory() as tmp:  # the fixtures name their images; write stand-ins to read them
        samples = load_demon(materialize_fixtures(source, os.path.join(tmp, "demon"))).samples
    totals = {"right": [0, 0], "token": [0, 0]}
    for sample in samples:
        prompt = render_prompt(processor, sample)
        ids = processor.tokenizer([processor.expand_image_tokens(prompt)], return_tensors="pt", add_special_tokens=False)
        q = processor.tokenizer([processor.strip_images(prompt)], return_tensors="pt", add_special_tokens=False)
        for alignment in totals:
            columns = fusion_columns(ids["input_ids"], ids["attention_mask"], q["input_ids"], q["attention_mask"],
                                     processor.image_token_id, alignment)[0]
            steered = columns >= 0
            own = ids["input_ids"][0, columns[steered]] == q["input_ids"][0, steered]
            totals[alignment][0] += int(own.sum())
            totals[alignment][1] += int(steered.sum())
    return len(samples), {k: {"own_copy": own, "steered": n} for k, (own, n) in totals.items()}


def spread(values):
    return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})" if values else "-"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="demo output folders (one per seed)")
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--layers", type=int, nargs=2, default=[0, 4])
    parser.add_argument("--limit", type=int, default=None, help="only the first N test questions")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    runs = [measure_demo(folder, args) for folder in args.folders]
    print(f"\nDemo test split, {len(runs)} trained model(s) (mean (min-max) over them):")
    print("| questions | n | plain | right-aligned fusion | token-aligned fusion |\n|---|---|---|---|---|")
    for kind in ("two images", "one image"):
        cells = [spread([r[name][kind] for r in runs if kind in r[name]]) for name in ("plain", "right", "token")]
        print(f"| {kind} | {runs[0]['plain']['count'][kind]} | " + " | ".join(cells) + " |")
    print("settings: " + "; ".join(f"{r['folder']}: {r['setting']}" for r in runs))

    from modeling_vift import ViFTProcessor

    processor = ViFTProcessor.from_pretrained(os.path.join(args.folders[0], "models", "stage2"))
    count, pairing = demon_pairing(processor)
    print(f"\nDEMON-format fixtures ({count} samples): steered positions paired with their own token")
    for name, p in pairing.items():
        print(f"  {name}: {p['own_copy']} of {p['steered']} ({p['own_copy'] / max(p['steered'], 1):.1%})")
    print(json.dumps({"demo": runs, "demon_fixtures": pairing}, default=str))


if __name__ == "__main__":
    main()
