"""Right-aligned (the authors') vs token-aligned fused generation, measured on trained demo models (one per seed).

```bash
python -m demo --config <demo.yaml with seed: N> --output_dir /tmp/demo-seedN --no_reload   # one trained model per seed
python benchmarks/fusion_alignment.py /tmp/demo-seed0 /tmp/demo-seed1 /tmp/demo-seed2 --tune_on_val
python benchmarks/fusion_alignment.py /tmp/demo-seed0 --alpha 1.0 --beta 0.5 --layers 0 4        # one fixed setting
```

For each demo output folder (its `models/stage2` model and `data/` world), on the held-out test split: accuracy of
plain generation, right-aligned fusion and token-aligned fusion, on all questions, on the two-image (DEMON-style) ones
and on the single-image ones. The fusion setting (alpha, beta, layers) of each alignment:
- `--tune_on_val`: chosen for each alignment separately on the folder's validation split, over the demo's own grid
  (`evaluation.alphas`, `betas`, `layer_ranges` of the folder's `results.json`, else of `--demo_config`), as the demo
  chooses it (highest validation accuracy; ties go to the first in the demo's grid order);
- else `--alpha` / `--beta` / `--layers` when `--alpha` is given, else the setting the demo chose on validation
  (`results.json`), else alpha 1.0, beta 0.5, every layer.
Answers are `max_new_tokens` long as in the demo's evaluation config (`--max_new_tokens` overrides). Prints one row
per folder, then mean, standard deviation and min-max over the folders per method. Then, on the DEMON-format fixtures
(`tests/fixtures/eval/demon`), how each alignment pairs positions: the share of steered positions whose multimodal
token is the text-only token's own copy.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

METHODS = (("plain", None), ("right", "right"), ("token", "token"))
KINDS = (("all", lambda r: True), ("two images", lambda r: len(r["images"]) == 2),
         ("one image", lambda r: len(r["images"]) == 1))


def generate(model, processor, prompts, images, setting, alignment, batch_size, max_new_tokens):
    """The demo's greedy answers: plain (`alignment=None`) or fused at `setting = (alpha, beta, layers)`."""
    from demo import grading

    if alignment is not None:
        model.generation_config.fusion_alignment = alignment  # fused generate reads it (call > generation config)
    return grading.generate(model, processor, prompts, images, setting if alignment else None, batch_size,
                            max_new_tokens)


def accuracy_by_kind(answers, records):
    from demo import grading

    result = {}
    for name, keep in KINDS:
        chosen = [(a, r) for a, r in zip(answers, records) if keep(r)]
        if chosen:
            result[name] = grading.accuracy([a for a, _ in chosen], [r for _, r in chosen])["accuracy"]
    return result


def tune_on_validation(model, processor, val, val_images, grid, alignment, batch_size, max_new_tokens):
    """The grid setting with the highest validation accuracy for `alignment` (ties: the first in grid order)."""
    from demo import grading

    prompts = [grading.visual_prompt(processor, r) for r in val]
    tried = []
    for setting in grid:
        answers = generate(model, processor, prompts, val_images, setting, alignment, batch_size, max_new_tokens)
        tried.append((grading.accuracy(answers, val)["accuracy"], setting))
    best_accuracy, best = max(tried, key=lambda entry: entry[0])  # max keeps the first of equal accuracies
    return best, best_accuracy, len(tried)


def read_demo_folder(folder, demo_config):
    """The paths of a demo output folder and its evaluation config (from its results.json, else `demo_config`)."""
    from demo.run import load_config

    stage2, data = os.path.join(folder, "models", "stage2"), os.path.join(folder, "data")
    for path in (stage2, os.path.join(data, "val_visual.json"), os.path.join(data, "test_visual.json")):
        if not os.path.exists(path):
            raise SystemExit(
                f"{folder} is not a demo output folder: {path} is missing. Pass folders written by "
                f"`python -m demo --output_dir <folder>` (they hold models/stage2 and data/val_visual.json, test_visual.json)."
            )
    results_path = os.path.join(folder, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else None
    evaluation = (results or {}).get("config", {}).get("evaluation") or load_config(demo_config)["evaluation"]
    return stage2, data, results, evaluation


def measure_demo(folder, args):
    import torch

    from demo import grading
    from demo.run import load_images
    from modeling_vift import ViFTForConditionalGeneration, ViFTProcessor

    torch.set_num_threads(args.threads)
    stage2, data, results, evaluation = read_demo_folder(folder, args.demo_config)
    model = ViFTForConditionalGeneration.from_pretrained(stage2).eval()
    processor = ViFTProcessor.from_pretrained(stage2)
    max_new_tokens = args.max_new_tokens or int(evaluation["max_new_tokens"])
    label = f"seed {results['seed']}" if results and "seed" in results else os.path.basename(os.path.normpath(folder))
    test = json.load(open(os.path.join(data, "test_visual.json")))[: args.limit]
    test_images = load_images(test, data)
    test_prompts = [grading.visual_prompt(processor, r) for r in test]
    out = {"folder": folder, "label": label, "max_new_tokens": max_new_tokens, "settings": {}, "test": {},
           "count": {name: sum(1 for r in test if keep(r)) for name, keep in KINDS}}

    if args.tune_on_val:
        val = json.load(open(os.path.join(data, "val_visual.json")))
        val_images = load_images(val, data)
        grid = [(float(a), float(b), tuple(layers)) for layers in evaluation["layer_ranges"] for a in evaluation["alphas"]
                for b in evaluation["betas"]]  # the demo's grid, in its order
        for name, alignment in METHODS[1:]:
            setting, val_accuracy, tried = tune_on_validation(model, processor, val, val_images, grid, alignment,
                                                              args.batch_size, max_new_tokens)
            out["settings"][name] = {"alpha": setting[0], "beta": setting[1], "layers": list(setting[2]),
                                     "val_accuracy": val_accuracy, "tuned_over": tried, "val_n": len(val)}
    else:
        if args.alpha is not None:
            setting = (args.alpha, args.beta, list(args.layers))
        elif results is not None:
            chosen = results["validation"]["chosen"]
            setting = (chosen["alpha"], chosen["beta"], list(chosen["layers"]))
        else:
            setting = (1.0, 0.5, [0, model.config.text_config.num_hidden_layers])
        for name, _ in METHODS[1:]:
            out["settings"][name] = {"alpha": setting[0], "beta": setting[1], "layers": setting[2]}

    for name, alignment in METHODS:
        chosen = out["settings"].get(name)
        setting = (chosen["alpha"], chosen["beta"], tuple(chosen["layers"])) if chosen else None
        answers = generate(model, processor, test_prompts, test_images, setting, alignment, args.batch_size,
                           max_new_tokens)
        out["test"][name] = accuracy_by_kind(answers, test)
        print(f"  {label} ({folder}) {name}: {out['test'][name]}" + (f" at {chosen}" if chosen else ""), flush=True)
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
        expanded = prompt.replace(processor.image_token, processor.replace_image_token(None, 0))  # as the processor does
        ids = processor.tokenizer([expanded], return_tensors="pt", add_special_tokens=False)
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
    """`mean ± std [min, max]` over the folders (std: sample standard deviation; `-` with fewer than two)."""
    if not values:
        return "-"
    std = f"{statistics.stdev(values):.3f}" if len(values) > 1 else "-"
    return f"{statistics.mean(values):.3f} ± {std} [{min(values):.3f}, {max(values):.3f}]"


def format_setting(setting):
    text = f"a={setting['alpha']:g} b={setting['beta']:g} layers={setting['layers']}"
    if "val_accuracy" in setting:
        text += f" (val {setting['val_accuracy']:.3f} on {setting['val_n']}, best of {setting['tuned_over']})"
    return text


def report(runs, tuned):
    names = [name for name, _ in METHODS]
    how = "tuned on each folder's validation split, per alignment" if tuned else "one setting per folder, not tuned per alignment"
    print(f"\nDemo test split, {len(runs)} trained model(s); fusion settings {how}.")
    print("\nPer folder:")
    print("| model | questions | n | plain | right-aligned fusion | token-aligned fusion |\n|---|---|---|---|---|---|")
    for run in runs:
        for kind, _ in KINDS:
            if run["count"][kind]:
                cells = [f"{run['test'][name][kind]:.3f}" for name in names]
                print(f"| {run['label']} | {kind} | {run['count'][kind]} | " + " | ".join(cells) + " |")
    print(f"\nOver the {len(runs)} folder(s): mean ± std [min, max]")
    print("| questions | n per folder | plain | right-aligned fusion | token-aligned fusion |\n|---|---|---|---|---|")
    for kind, _ in KINDS:
        counts = sorted({run["count"][kind] for run in runs if run["count"][kind]})
        if counts:
            cells = [spread([run["test"][name][kind] for run in runs if kind in run["test"][name]]) for name in names]
            print(f"| {kind} | {'/'.join(map(str, counts))} | " + " | ".join(cells) + " |")
    print("\nSettings:")
    for run in runs:
        print(f"  {run['label']} ({run['folder']}, max_new_tokens {run['max_new_tokens']}): "
              + "; ".join(f"{name}: {format_setting(setting)}" for name, setting in run["settings"].items()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="demo output folders (one per seed)")
    parser.add_argument("--tune_on_val", action="store_true",
                        help="choose alpha/beta/layers per alignment on each folder's validation split (the demo's grid)")
    parser.add_argument("--alpha", type=float, default=None, help="a fixed setting (without --tune_on_val)")
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--layers", type=int, nargs=2, default=[0, 4])
    parser.add_argument("--demo_config", default=os.path.join(os.path.dirname(HERE), "demo", "configs", "demo.yaml"),
                        help="the demo config whose evaluation grid is used for folders without results.json")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="default: the demo's evaluation config")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test questions")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.tune_on_val and args.alpha is not None:
        parser.error("--tune_on_val chooses alpha/beta/layers itself: give either it or --alpha/--beta/--layers.")

    runs = [measure_demo(folder, args) for folder in args.folders]
    report(runs, args.tune_on_val)

    from modeling_vift import ViFTProcessor

    processor = ViFTProcessor.from_pretrained(os.path.join(args.folders[0], "models", "stage2"))
    count, pairing = demon_pairing(processor)
    print(f"\nDEMON-format fixtures ({count} samples): steered positions paired with their own token")
    for name, p in pairing.items():
        print(f"  {name}: {p['own_copy']} of {p['steered']} ({p['own_copy'] / max(p['steered'], 1):.1%})")
    print(json.dumps({"demo": runs, "demon_fixtures": pairing}, default=str))
    return runs


if __name__ == "__main__":
    main()
