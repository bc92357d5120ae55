"""VPG-C on top of a finished demo: does Cheetah's instruction-guided visual re-attention help the two-image tasks?

```bash
python -m demo                                 # first the demo: writes demo_output/
python -m demo.vpgc --demo_output demo_output  # then this (demo/configs/vpgc.yaml): writes demo_output/vpgc/
python -m demo --config demo/configs/smoke.yaml --output_dir /tmp/vift-smoke    # the test suite's tiny version
python -m demo.vpgc --demo_output /tmp/vift-smoke --config demo/configs/vpgc_smoke.yaml
```

What runs, in order (every number printed is measured in this run):
1. data: "spot the difference" pairs (two scenes that differ in exactly one attribute; the answer says in words
   which object changed and how - the analogue of the Cheetah authors' synthetic discriminative training) plus
   single-image detailed captions, as LLaVA/Bunny JSON and a mixture YAML; and two held-out sets of the demo's
   two-image tasks ("which has more shapes", "what changed"), a validation set for tuning and a test set for
   reporting, never trained on (a pair that also occurs in them is left out of the training pairs);
2. the VPG-C stage (`python -m recipes.vpgc_train`, the code in `modeling_vift.training`) from the demo's stage-2
   model: a new VPG-C module at `vpgc_layer` (default: the middle decoder layer), everything else frozen, packing;
3. accuracy on the held-out two-image tasks without VPG-C (the stage-2 model) and with it, each with plain and with
   fused generation (the alpha/beta/layers the demo tuned on its own validation split), by question kind, next to
   two controls (the text-only prompt without the images; the true descriptions in place of the images);
4. the VPG-C model saved with its remote code and reloaded in a fresh process with
   `AutoModel.from_pretrained(folder, trust_remote_code=True)`, which answers one test question.
"""

import json
import os
import random
import time
from dataclasses import dataclass, field

import yaml

from .run import (
    HERE,
    Table,
    Timer,
    load_images,
    load_yaml_config,
    quiet_training_logs,
    reload_in_fresh_process,
    save_final_model,
)
from .world import (
    CAPTION_PROMPTS,
    ImageWriter,
    WorldConfig,
    changed_scene,
    detailed_caption,
    pair_question,
    random_scene,
    scene_descriptions,
)


DEFAULT_CONFIG = os.path.join(HERE, "configs", "vpgc.yaml")
# Offsets added to the seed for the RNG of each data split: the demo's world draws from `Random(seed)`, so these
# streams never repeat its scenes' stream, nor each other's.
SPLIT_SEED_OFFSETS = {"train": 1000, "val": 2000, "test": 3000}
DIFFERENCE_PROMPTS = (
    "What is different between the two images?",
    "Spot the difference between the two images.",
    "How does image 2 differ from image 1?",
    "Describe what changed from image 1 to image 2.",
)
QUESTION_KINDS = ("more shapes", "what changed")
CONDITIONS = ("without_vpgc", "with_vpgc")


# ----------------------------------------------------------------------------------------------- inputs


def load_config(path):
    """A VPG-C YAML (`base:` merging as for the demo's YAML, `demo.run.load_yaml_config`), checked."""
    config = load_yaml_config(path, ("data", "vpgc", "training", "evaluation"), "VPG-C", DEFAULT_CONFIG)
    for key in ("pairs", "captions", "validation", "test"):
        value = config["data"].get(key)
        if not isinstance(value, int) or value < (0 if key == "captions" else 1):
            raise ValueError(f"VPG-C config {path!r}: data.{key} must be a whole number of records "
                             f"({'0 or more' if key == 'captions' else '1 or more'}), got {value!r}.")
    return config


def load_demo_output(folder):
    """The parts of a finished `python -m demo` run this step builds on: (results, world config, stage-2 folder)."""
    hint = "run `python -m demo` first (or pass --demo_output with the folder a finished demo run wrote)"
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Demo output folder {folder!r} does not exist: {hint}.")
    files = {name: os.path.join(folder, name) for name in
             ("results.json", "data/world_config.json", "models/stage2/config.json")}
    for name, path in files.items():
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing, so {folder!r} is not a finished demo output: {hint}.")
    with open(files["results.json"]) as f:
        results = json.load(f)
    chosen = results.get("validation", {}).get("chosen")
    if not chosen or not {"alpha", "beta", "layers"} <= set(chosen):
        raise ValueError(f"{files['results.json']} holds no tuned fusion settings (validation.chosen with alpha, "
                         f"beta, layers): the demo did not finish; {hint}.")
    with open(files["data/world_config.json"]) as f:
        saved = json.load(f)
    # Worlds written before `position_first` existed named the position after the shape.
    saved.setdefault("position_first", False)
    try:
        world_config = WorldConfig(**saved)
    except TypeError as error:
        raise ValueError(f"{files['data/world_config.json']} does not match demo.world.WorldConfig ({error}): it was "
                         f"written by another version of the demo; {hint}.") from None
    return results, world_config, os.path.dirname(files["models/stage2/config.json"])


# ----------------------------------------------------------------------------------------------- data


def scene_difference(first, second):
    """What changed from `first` to `second`, two scenes that differ in exactly one attribute of one object or by
    one object: (kind, the object before or None, the object after or None), kind one of
    `demo.world.CHANGE_OPTIONS`."""
    before = list(set(first.objects) - set(second.objects))
    after = list(set(second.objects) - set(first.objects))
    if len(before) + len(after) == 1:
        return "number", (before or [None])[0], (after or [None])[0]
    if len(before) == len(after) == 1:
        old, new = before[0], after[0]
        changed = [name for name in ("colour", "shape", "size", "cell") if getattr(old, name) != getattr(new, name)]
        if len(changed) == 1:
            return ("position" if changed[0] == "cell" else changed[0]), old, new
    raise ValueError(f"The scenes differ in more than one attribute or object: {first} -> {second}.")


def describe_difference(first, second, config):
    """The change from `first` to `second` in the world's own words and word order (`position_first`): "The colour
    changed: in the top left the small red circle became blue." Returns (kind, sentence)."""
    kind, old, new = scene_difference(first, second)

    def located(phrase, cell):
        where = config.positions[cell]
        return f"in the {where} {phrase}" if config.position_first else f"{phrase} at the {where}"

    if kind == "number" and old is None:
        return kind, f"The number of shapes changed: {located(new.phrase(), new.cell)} was added."
    the = f"the {old.size} {old.colour} {old.shape}"
    if kind == "number":
        return kind, f"The number of shapes changed: {located(the, old.cell)} was removed."
    if kind == "position":
        where = config.positions
        return kind, f"The position changed: {the} moved from the {where[old.cell]} to the {where[new.cell]}."
    became = f"a {new.shape}" if kind == "shape" else getattr(new, kind)
    return kind, f"The {kind} changed: {located(the, old.cell)} became {became}."


def two_image_tasks(rng, config, n, images, split):
    """`n` held-out two-image tasks of `demo.world.pair_question`, in the demo's val/test record format; `kind` is
    the question kind ("more shapes" or "what changed"). Returns (records, set of the (scene 1, scene 2) pairs)."""
    records, pairs = [], set()
    for i in range(n):
        first, second, _, question, answer, choices = pair_question(rng, config)
        pairs.add((first, second))
        records.append({
            "id": f"{split}-{i}", "kind": QUESTION_KINDS[0] if "more shapes" in question else QUESTION_KINDS[1],
            "question": question, "answer": answer, "choices": list(choices),
            "images": [images(s, rng, split) for s in (first, second)],
            "descriptions": scene_descriptions([first, second], config),
        })
    return records, pairs


def spot_the_difference(rng, config, n, images, held_out):
    """`n` training pairs: a random scene and a copy with one change (`demo.world.changed_scene`), asked about in
    one of `DIFFERENCE_PROMPTS`; the answer describes the change. Pairs in `held_out` are drawn again."""
    records = []
    while len(records) < n:
        first = random_scene(rng, config)
        second, _ = changed_scene(rng, first, config)
        if (first, second) in held_out:
            continue
        kind, answer = describe_difference(first, second, config)
        prompt = rng.choice(DIFFERENCE_PROMPTS)
        records.append({
            "id": f"std-{len(records)}", "kind": kind, "image": [images(s, rng, "std") for s in (first, second)],
            "descriptions": scene_descriptions([first, second], config),
            "conversations": [{"from": "human", "value": f"Image 1: <image>\nImage 2: <image>\n{prompt}"},
                              {"from": "gpt", "value": answer}]})
    return records


def captions(rng, config, n, images):
    """`n` single-image detailed captions, as in the demo's stage 2."""
    records = []
    for i in range(n):
        scene = random_scene(rng, config)
        prompt = rng.choice(CAPTION_PROMPTS)
        records.append({"id": f"cap-{i}", "image": images(scene, rng, "cap"), "conversations": [
            {"from": "human", "value": f"<image>\n{prompt}"},
            {"from": "gpt", "value": detailed_caption(scene, config)}]})
    return records


def build_vpgc_data(root, world_config, settings, seed):
    """Writes the held-out val/test two-image tasks, the training pairs and captions (LLaVA/Bunny JSON + PNGs) and the
    training mixture YAML under `root`; returns a dict of name -> file path. Deterministic for a seed."""
    os.makedirs(root, exist_ok=True)
    images = ImageWriter(root, world_config).image
    rngs = {split: random.Random(seed + offset) for split, offset in SPLIT_SEED_OFFSETS.items()}
    val, val_pairs = two_image_tasks(rngs["val"], world_config, settings["validation"], images, "val")
    test, test_pairs = two_image_tasks(rngs["test"], world_config, settings["test"], images, "test")
    splits = {
        "val": val,
        "test": test,
        "spot_the_difference": spot_the_difference(rngs["train"], world_config, settings["pairs"], images,
                                                   val_pairs | test_pairs),
        "captions": captions(rngs["train"], world_config, settings["captions"], images),
    }
    paths = {}
    for name, records in splits.items():
        paths[name] = os.path.join(root, f"{name}.json")
        with open(paths[name], "w") as f:
            json.dump(records, f)
    sources = [{"name": "spot_the_difference", "path": "spot_the_difference.json", "image_folder": "."}]
    if settings["captions"]:
        sources.append({"name": "captions", "path": "captions.json", "image_folder": "."})
    paths["mixture"] = os.path.join(root, "vpgc_mixture.yaml")
    with open(paths["mixture"], "w") as f:
        yaml.safe_dump({"seed": seed, "sources": sources}, f, sort_keys=False)
    return paths


# ----------------------------------------------------------------------------------------------- training


def vpgc_layer(setting, stage2_dir):
    """The decoder layer VPG-C sits at: `setting`, or the middle layer of the stage-2 language model when None."""
    with open(os.path.join(stage2_dir, "config.json")) as f:
        layers = json.load(f)["text_config"]["num_hidden_layers"]
    layer = layers // 2 if setting is None else int(setting)
    if not 0 <= layer < layers:
        raise ValueError(f"vpgc.layer={setting} is out of range: the demo's language model has {layers} decoder "
                         f"layers (0..{layers - 1}); leave it null for the middle one ({layers // 2}).")
    return layer


def train_vpgc(config, layer, stage2_dir, mixture, output_dir):
    """The VPG-C stage through the project's recipe code (`python -m recipes.vpgc_train`): writes the recipe YAML
    next to the model, runs it, returns (command, logged losses, steps trained)."""
    from modeling_vift.training import run

    recipe = {**config["training"], "model_name_or_path": os.path.abspath(stage2_dir),
              "dataset_mixture": os.path.abspath(mixture), "vpgc_layer": layer,
              "vpgc_num_heads": config["vpgc"]["num_heads"], "output_dir": os.path.abspath(output_dir)}
    if config["vpgc"].get("hidden_size") is not None:
        recipe["vpgc_hidden_size"] = config["vpgc"]["hidden_size"]
    os.makedirs(output_dir, exist_ok=True)
    recipe_path = os.path.join(output_dir, "vpgc_recipe.yaml")
    with open(recipe_path, "w") as f:
        yaml.safe_dump(recipe, f, sort_keys=False)
    trainer = run("vpgc", ["--config", recipe_path])
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    losses = losses or [entry["train_loss"] for entry in history if "train_loss" in entry]
    return f"python -m recipes.vpgc_train --config {recipe_path}", losses, trainer.state.global_step


def vpgc_parameters(model):
    """(parameters of the VPG-C module, parameters of the whole model)."""
    return sum(p.numel() for p in model.model.vpgc.parameters()), sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------- evaluation


def plain_and_fused(model, processor, records, images, fusion, settings, name):
    """Accuracy of plain and of fused generation on two-image task records (demo/grading.py scoring)."""
    from . import grading as ev

    prompts = [ev.visual_prompt(processor, r) for r in records]
    batch, max_new = settings["batch_size"], settings["max_new_tokens"]
    out = {}
    for mode, setting in (("plain", None), ("fused", fusion)):
        answers = ev.generate(model, processor, prompts, images, setting, batch, max_new, desc=f"{name} {mode}")
        out[mode] = ev.accuracy(answers, records)
        out[mode]["examples"] = [{"question": r["question"], "answer": r["answer"], "response": a}
                                 for r, a in list(zip(records, answers))[:4]]
    return out


def controls(model, processor, records, settings):
    """The two controls of the demo: the text-only prompt without the images, the true descriptions as text."""
    from . import grading as ev

    batch, max_new = settings["batch_size"], settings["max_new_tokens"]
    blind = [processor.strip_images(ev.visual_prompt(processor, r)) for r in records]
    textual = [ev.textual_record_prompt(processor, r) for r in records]
    return {
        "text_only_prompt": ev.accuracy(ev.generate(model, processor, blind, None, None, batch, max_new,
                                                    desc="test no image"), records),
        "true_description": ev.accuracy(ev.generate(model, processor, textual, None, None, batch, max_new,
                                                    desc="test description"), records),
    }


def _read(path):
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------- main


def run_vpgc(demo_output, config, output_dir=None, reload=True):
    """Runs the VPG-C step on a finished demo output and returns the results dict (also written to
    `output_dir/vpgc_results.json`; `output_dir` defaults to `demo_output/vpgc`)."""
    import torch

    output_dir = output_dir or os.path.join(demo_output, "vpgc")
    if os.path.abspath(output_dir) == os.path.abspath(demo_output):
        raise ValueError(f"--output_dir {output_dir!r} is the demo output itself: pick a new folder (the default is "
                         f"{os.path.join(demo_output, 'vpgc')}).")
    threads = torch.get_num_threads()
    torch.set_num_threads(int(config.get("threads", 1)))
    try:
        return _run_vpgc(demo_output, config, output_dir, reload)
    finally:
        torch.set_num_threads(threads)


def _run_vpgc(demo_output, config, output_dir, reload):
    import torch

    from modeling_vift import ViFTForConditionalGeneration, ViFTProcessor

    started = time.time()
    demo_results, world_config, stage2_dir = load_demo_output(demo_output)
    layer = vpgc_layer(config["vpgc"].get("layer"), stage2_dir)
    chosen = demo_results["validation"]["chosen"]
    fusion = (chosen["alpha"], chosen["beta"], tuple(chosen["layers"]))
    seed = int(config.get("seed", 0))
    settings = config["evaluation"]
    quiet_training_logs()
    os.makedirs(output_dir, exist_ok=True)
    data_dir = os.path.join(output_dir, "data")
    table = Table()
    results = {"demo_output": os.path.abspath(demo_output), "seed": seed, "config": config,
               "threads": torch.get_num_threads(), "fusion": chosen}

    with Timer() as t:
        paths = build_vpgc_data(data_dir, world_config, config["data"], seed)
        val, test = _read(paths["val"]), _read(paths["test"])
        val_images, test_images = load_images(val, data_dir), load_images(test, data_dir)
    results["data"] = {"paths": paths, **{k: config["data"][k] for k in ("pairs", "captions", "validation", "test")}}
    table.row("data", t.seconds, f"{config['data']['pairs']} spot-the-difference pairs + {config['data']['captions']}"
              f" captions; held out: {len(val)} val, {len(test)} test two-image tasks")

    with Timer() as t:
        stage2 = ViFTForConditionalGeneration.from_pretrained(stage2_dir).eval()
        processor = ViFTProcessor.from_pretrained(stage2_dir)
        results["validation"] = {"without_vpgc": plain_and_fused(stage2, processor, val, val_images, fusion,
                                                                 settings, "val without VPG-C")}
        results["test"] = {"without_vpgc": plain_and_fused(stage2, processor, test, test_images, fusion, settings,
                                                           "test without VPG-C"),
                           "controls": controls(stage2, processor, test, settings)}
    without = results["test"]["without_vpgc"]
    table.row("without VPG-C (stage 2)", t.seconds,
              f"test plain {without['plain']['accuracy']:.3f} | fused {without['fused']['accuracy']:.3f}")

    model_dir = os.path.join(output_dir, "models", "vpgc")
    with Timer() as t:
        results["command"], losses, steps = train_vpgc(config, layer, stage2_dir, paths["mixture"], model_dir)
    results["training"] = {"seconds": round(t.seconds, 1), "steps": steps,
                           "loss_first": losses[0], "loss_last": losses[-1]}
    table.row(f"VPG-C stage (layer {layer})", t.seconds, f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")

    with Timer() as t:
        model = ViFTForConditionalGeneration.from_pretrained(model_dir).eval()
        parameters, total = vpgc_parameters(model)
        results["vpgc"] = {"layer": layer, "num_layers": model.config.text_config.num_hidden_layers,
                           "parameters": parameters, "model_parameters": total, "share": parameters / total}
        results["validation"]["with_vpgc"] = plain_and_fused(model, processor, val, val_images, fusion, settings,
                                                             "val with VPG-C")
        results["test"]["with_vpgc"] = plain_and_fused(model, processor, test, test_images, fusion, settings,
                                                       "test with VPG-C")
    with_ = results["test"]["with_vpgc"]
    table.row("with VPG-C", t.seconds,
              f"test plain {with_['plain']['accuracy']:.3f} | fused {with_['fused']['accuracy']:.3f}")

    with Timer() as t:
        final_dir = os.path.join(output_dir, "vift-vpgc")
        save_final_model(model, processor, chosen, final_dir)
        if reload:
            reloaded = reload_in_fresh_process(final_dir, test[0], data_dir, os.path.join(output_dir, "reload"))
            results["reload"] = {"record": test[0], **reloaded}
    answered = f" -> {results['reload']['fused']!r} (expected {test[0]['answer']!r})" if reload else ""
    table.row("save + reload (fresh process)", t.seconds, final_dir + answered)

    results["seconds"] = {"total": round(time.time() - started, 1), "steps": table.rows}
    results["paths"] = {"model": final_dir, "results": os.path.join(output_dir, "vpgc_results.json")}
    with open(results["paths"]["results"], "w") as f:
        json.dump(results, f, indent=1, default=str)
    print_summary(results)
    return results


def print_summary(results):
    test, vpgc, fusion = results["test"], results["vpgc"], results["fusion"]
    columns = ("all questions",) + QUESTION_KINDS

    def cells(result):
        return [result["accuracy"]] + [result["by_kind"].get(k, float("nan")) for k in QUESTION_KINDS]

    print()
    print(f"Held-out two-image tasks, test split ({test['without_vpgc']['plain']['count']} questions); fused "
          f"generation with the demo's alpha={fusion['alpha']} beta={fusion['beta']} layers={fusion['layers']}:")
    print(f"  {'':<34}" + "".join(f"{c:>17}" for c in columns))
    print(f"  {'':<34}" + f"{'plain':>9}{'fused':>8}" * len(columns))
    names = ("without VPG-C (stage 2)", f"with VPG-C (layer {vpgc['layer']} of {vpgc['num_layers']})")
    for condition, name in zip(CONDITIONS, names):
        plain, fused = cells(test[condition]["plain"]), cells(test[condition]["fused"])
        print(f"  {name:<34}" + "".join(f"{p:>9.3f}{f:>8.3f}" for p, f in zip(plain, fused)))
    for control, name in (("text_only_prompt", "control: no images (text only)"),
                          ("true_description", "control: true descriptions as text")):
        print(f"  {name:<34}" + "".join(f"{p:>9.3f}{'-':>8}" for p in cells(test["controls"][control])))
    val = {c: results["validation"][c] for c in CONDITIONS}
    print(f"Validation ({val['without_vpgc']['plain']['count']} questions, all): " + "; ".join(
        f"{name} plain {val[c]['plain']['accuracy']:.3f} fused {val[c]['fused']['accuracy']:.3f}"
        for c, name in zip(CONDITIONS, ("without VPG-C", "with VPG-C"))))
    training = results["training"]
    print(f"VPG-C: {vpgc['parameters']:,} parameters = {100 * vpgc['share']:.2f} % of the model's "
          f"{vpgc['model_parameters']:,}; trained in {training['seconds']:.0f} s ({training['steps']} steps, loss "
          f"{training['loss_first']:.3f} -> {training['loss_last']:.3f}).")
    print(f"Run time {results['seconds']['total']:.0f} s. Results: {results['paths']['results']}")


@dataclass
class VPGCArguments:
    demo_output: str = field(metadata={"help": "the folder a finished `python -m demo` run wrote"})
    config: str = field(default=DEFAULT_CONFIG, metadata={"help": "VPG-C YAML (default: demo/configs/vpgc.yaml)"})
    output_dir: str | None = field(default=None, metadata={"help": "where everything is written (default: DEMO_OUTPUT/vpgc)"})
    no_reload: bool = field(default=False, metadata={"help": "skip the fresh-process reload check"})


def main(argv=None):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(VPGCArguments).parse_args_into_dataclasses(argv)
    return run_vpgc(args.demo_output, load_config(args.config), args.output_dir, reload=not args.no_reload)


if __name__ == "__main__":
    main()
