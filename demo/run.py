"""ViFT end to end on the embedded synthetic world, on a CPU, in minutes.

```bash
python -m demo                                   # the full demo (demo/configs/demo.yaml), writes demo_output/
python -m demo --config demo/configs/smoke.yaml --output_dir /tmp/vift-smoke   # the test suite's tiny version
python -m demo --seeds 0 1 2 --output_dir demo_seeds  # one run per seed, then the spread over the seeds
```
The console shows the step table, one progress bar per stage and the summary (with paired bootstrap intervals of
fused minus plain and fused minus the no-image control); trainer logs and warnings go to `<output_dir>/demo.log`
(`--verbose` shows them on the console).

What runs, in order (every number printed is measured in this run):
1. the world: images, captions, text-only instructions, held-out visual instructions (val/test) - `demo/world.py`;
2. a byte-level BPE tokenizer trained on the world's training texts, with ChatML - `demo/tokenizer.py`;
3. stand-ins for the two pretrained towers the authors start from: the tiny SigLIP tower learns to tell each cell's
   colour, shape and size (as SigLIP's pretraining gives it), and **stage 0**: the tiny Qwen2 language model learns
   the text-only tasks with TRL's own `sft` script (`trl.scripts.sft`, packing) - the instruct LLM;
4. **stage 1** (projector only, captions) and **stage 2** (everything, captions + text-only instructions) through the
   project's recipes (`modeling_vift.training`, the code behind `python -m recipes.stage1_align` /
   `recipes.stage2_finetune`) with vision-aware packing; no visual instruction is ever trained on;
5. evaluation on never-seen visual instructions: plain generation vs fused generation over an alpha/beta/layer grid
   chosen on the validation split and reported on the test split, next to perception (caption accuracy), task
   solving (text-only QA) and two controls (the text-only prompt without the image; the true description in place
   of the image);
6. the final model + processor saved with its remote code, reloaded in a fresh process with
   `AutoModel.from_pretrained(folder, trust_remote_code=True)`, which answers one test question.
"""

import copy
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field

import yaml


HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "configs", "demo.yaml")


# ----------------------------------------------------------------------------------------------- config


def deep_merge(base, override):
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_yaml_config(path, sections, what="Demo", default=None):
    """A demo YAML; `base: other.yaml` (relative to the file) is loaded first and overridden key by key. Every name
    in `sections` must be present after merging; `what` and `default` name the kind of file in the errors."""
    default = default or DEFAULT_CONFIG
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} config {path!r} does not exist (the default is {default}).")
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{what} config {path!r} must be a mapping, got {type(config).__name__}.")
    base = config.pop("base", None)
    if base:
        base_path = os.path.join(os.path.dirname(os.path.abspath(path)), base)
        config = deep_merge(load_yaml_config(base_path, (), what, default), config)
    for key in sections:
        if key not in config:
            raise ValueError(f"{what} config {path!r} lacks the `{key}` section (see {default}).")
    return config


def load_config(path):
    """The demo's YAML (see `load_yaml_config`)."""
    return load_yaml_config(
        path, ("world", "tokenizer", "text_model", "vision_model", "vision_pretraining", "stages", "evaluation"))


def resolve(path):
    """Stage configs are named relative to the demo package folder (`configs/stage1.yaml`)."""
    return path if os.path.isabs(path) else os.path.join(HERE, path)


# ----------------------------------------------------------------------------------------------- reporting


class Console:
    """Where the user's view of the run goes, while everything else (trainer logs, library warnings) goes to a log
    file: with `log_path`, file descriptors 1 and 2 point at the log for the duration (so even output of C code and
    child processes lands there) and `print` / progress bars write to a duplicate of the original stdout."""

    def __init__(self, log_path=None):
        self.log_path = log_path
        self.stream = sys.stdout
        self._saved = None

    def __enter__(self):
        if self.log_path:
            sys.stdout.flush()
            sys.stderr.flush()
            self._saved = (os.dup(1), os.dup(2))
            self.stream = os.fdopen(os.dup(1), "w", buffering=1)
            self._log = open(self.log_path, "a", buffering=1)
            os.dup2(self._log.fileno(), 1)
            os.dup2(self._log.fileno(), 2)
        return self

    def __exit__(self, *exc):
        if self._saved:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(self._saved[0], 1)
            os.dup2(self._saved[1], 2)
            for fd in self._saved:
                os.close(fd)
            self._log.close()
            self.stream.close()
            self._saved = None
            self.stream = sys.stdout

    def print(self, *args):
        print(*args, file=self.stream, flush=True)
        if self._saved:
            print(*args, flush=True)  # the log keeps the table too


class Table:
    """Prints one row per finished step, as the run goes, and keeps the rows for the summary."""

    def __init__(self, console=None):
        self.rows = []
        self.console = console or Console()
        self.start = time.time()
        self.console.print(f"{'step':<34}{'seconds':>9}  result")
        self.console.print("-" * 96)

    def row(self, step, seconds, result):
        self.rows.append({"step": step, "seconds": round(seconds, 1), "result": result})
        self.console.print(f"{step:<34}{seconds:>9.1f}  {result}")


class StageProgress:
    """One progress bar per training stage on the console: a `TrainerCallback` added to every trainer built while
    the context is open (transformers' `DEFAULT_CALLBACKS`), so TRL's own `sft` script and the recipes show it too."""

    def __init__(self, console, name):
        self.console, self.name = console, name

    def __enter__(self):
        from tqdm.auto import tqdm
        from transformers import TrainerCallback
        from transformers import trainer as trainer_module

        console, name = self.console, self.name

        class _Bar(TrainerCallback):
            bar = None

            def on_train_begin(self, args, state, control, **kwargs):
                self.bar = tqdm(total=state.max_steps, desc=name, file=console.stream, leave=False, ncols=90)

            def on_step_end(self, args, state, control, **kwargs):
                if self.bar is not None:
                    self.bar.update(state.global_step - self.bar.n)

            def on_train_end(self, args, state, control, **kwargs):
                if self.bar is not None:
                    self.bar.close()

        self._module = trainer_module
        self._callback = _Bar
        trainer_module.DEFAULT_CALLBACKS.append(_Bar)
        return self

    def __exit__(self, *exc):
        self._module.DEFAULT_CALLBACKS.remove(self._callback)


class Timer:
    def __enter__(self):
        self.start = time.time()
        return self

    def __exit__(self, *exc):
        self.seconds = time.time() - self.start


def quiet_training_logs():
    import logging

    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    for name in ("modeling_vift", "trl", "accelerate"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ----------------------------------------------------------------------------------------------- set-up


def build_towers(config, tokenizer, world_config, models_dir, seed):
    """Randomly initialised towers, saved like pretrained ones: a Qwen2 causal LM with the demo tokenizer, and a
    SigLIP vision tower (one patch per grid cell) with its image processor."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    text_config = Qwen2Config(
        vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **config["text_model"],
    )
    lm_dir = os.path.join(models_dir, "init-lm")
    Qwen2ForCausalLM(text_config).save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)

    vision_config = SiglipVisionConfig(image_size=world_config.image_size, patch_size=world_config.cell,
                                       **config["vision_model"])
    vision_dir = os.path.join(models_dir, "init-vision")
    SiglipVisionModel(vision_config).save_pretrained(vision_dir)
    size = {"height": world_config.image_size, "width": world_config.image_size}
    SiglipImageProcessor(size=size).save_pretrained(vision_dir)
    return lm_dir, vision_dir


def pretrain_vision_tower(vision_dir, records_path, image_folder, settings, seed, feature_layer=-2):
    """Stand-in for the vision tower's pretraining (the authors start from SigLIP, whose features already tell
    colours and shapes apart): linear probes on the tower's features at `feature_layer` (the layer ViFT projects)
    learn each cell's colour, shape and size and, with `settings["position_probe"]` (default on), which cell a patch
    is (real patch features keep where they come from; without this target the tiny tower is free to forget it);
    tower and probes are trained together, then the tower is saved. Returns the final probe accuracies on the last
    batch."""
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from transformers import SiglipImageProcessor, SiglipVisionModel

    from .world import CELL_ATTRIBUTES

    torch.manual_seed(seed)
    tower = SiglipVisionModel.from_pretrained(vision_dir)
    image_processor = SiglipImageProcessor.from_pretrained(vision_dir)
    with open(records_path) as f:
        records = json.load(f)
    images = [Image.open(os.path.join(image_folder, r["image"])).convert("RGB") for r in records]
    pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
    labels = torch.tensor([r["cells"] for r in records])
    targets = {name: len(values) for name, values in CELL_ATTRIBUTES.items()}
    if settings.get("position_probe", True):
        cells = labels.shape[1]
        labels = torch.cat([labels, torch.arange(cells).expand(len(records), cells).unsqueeze(-1)], dim=-1)
        targets["position"] = cells
    hidden = tower.config.hidden_size
    probes = torch.nn.ModuleList([torch.nn.Linear(hidden, n) for n in targets.values()])
    optimizer = torch.optim.AdamW(list(tower.parameters()) + list(probes.parameters()), lr=settings["learning_rate"])
    rng = random.Random(seed)
    tower.train()
    accuracies = []
    for _ in range(settings["steps"]):
        index = rng.sample(range(len(records)), min(settings["batch_size"], len(records)))
        features = tower(pixel_values[index], output_hidden_states=True).hidden_states[feature_layer]
        target = labels[index]
        logits = [probe(features) for probe in probes]
        loss = sum(F.cross_entropy(l.flatten(0, 1), target[..., k].flatten()) for k, l in enumerate(logits))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        accuracies = [float((l.argmax(-1) == target[..., k]).float().mean()) for k, l in enumerate(logits)]
    tower.eval()
    tower.save_pretrained(vision_dir)
    return dict(zip(targets, accuracies))


def write_stage_data(paths, data_dir):
    """Stage-0 data in TRL's prompt-completion format (completion-only loss), and the mixture YAMLs of stages 1/2."""
    stage0_dir = os.path.join(data_dir, "stage0_sft")
    os.makedirs(stage0_dir, exist_ok=True)
    with open(paths["stage0_text"]) as f:
        records = json.load(f)
    with open(os.path.join(stage0_dir, "train.jsonl"), "w") as f:
        for r in records:
            user, answer = r["conversations"][0]["value"], r["conversations"][1]["value"]
            f.write(json.dumps({"prompt": [{"role": "user", "content": user}],
                                "completion": [{"role": "assistant", "content": answer}]}) + "\n")
    mixtures = {
        "stage1": {"seed": 0, "sources": [
            {"name": "captions", "path": "stage1_captions.json", "image_folder": "."}]},
        "stage2": {"seed": 0, "sources": [
            {"name": "captions", "path": "stage2_captions.json", "image_folder": "."},
            {"name": "text", "path": "stage2_text.json"}]},
    }
    out = {"stage0": stage0_dir}
    for stage, mixture in mixtures.items():
        out[stage] = os.path.join(data_dir, f"{stage}_mixture.yaml")
        with open(out[stage], "w") as f:
            yaml.safe_dump(mixture, f, sort_keys=False)
    return out


# ----------------------------------------------------------------------------------------------- training


def overrides(mapping):
    args = []
    for key, value in (mapping or {}).items():
        args += [f"--{key}", str(value)]
    return args


def run_stage0(stage, lm_dir, data_dir, output_dir):
    """Stage 0 with TRL's own SFT script: the language model learns the text-only tasks."""
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser
    from trl.scripts.sft import main as sft_main

    from modeling_vift.training import ViFTSFTConfig
    from modeling_vift.training.packing import register_packed_sdpa

    register_packed_sdpa()  # the stage-0 config trains with attn_implementation: vift_packed_sdpa

    args = ["--config", resolve(stage["config"]), "--model_name_or_path", lm_dir, "--dataset_name", data_dir,
            "--output_dir", output_dir] + overrides(stage.get("overrides"))
    # TRL's `sft` parser with vift's SFTConfig, which spells checkpointing the way the running transformers does
    # (TRL's own default trips transformers 5.24's deprecation warning).
    parser = TrlParser((ScriptArguments, ViFTSFTConfig, ModelConfig, DatasetMixtureConfig))
    script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(args)
    sft_main(script_args, training_args, model_args, dataset_args)
    return "trl sft " + " ".join(args)


def run_vift_stage(number, stage, model_args, mixture, output_dir):
    """Stage 1 or 2 through the project's recipe code (`python -m recipes.stage1_align` / `stage2_finetune`)."""
    from modeling_vift.training import run

    args = ["--config", resolve(stage["config"]), *model_args, "--dataset_mixture", mixture,
            "--output_dir", output_dir] + overrides(stage.get("overrides"))
    trainer = run(number, args)
    script = "stage1_align" if number == 1 else "stage2_finetune"
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    losses = losses or [entry["train_loss"] for entry in history if "train_loss" in entry]
    return f"python -m recipes.{script} " + " ".join(args), losses


def text_qa_of_language_model(lm_dir, records_path, settings):
    """Task solving of a plain causal LM folder (the stage-0 output): greedy answers to the text-only QA split."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import grading as ev

    model = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    with open(records_path) as f:
        records = json.load(f)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": r["conversations"][0]["value"]}],
                                             tokenize=False, add_generation_prompt=True) for r in records]
    answers = ev.generate_text(model, tokenizer, prompts, settings["batch_size"], settings["max_new_tokens"],
                               desc="stage-0 text-only QA")
    return ev.accuracy(answers, records)


# ----------------------------------------------------------------------------------------------- evaluation


def load_images(records, image_folder, key="images"):
    from PIL import Image

    out = []
    for r in records:
        refs = r[key] if isinstance(r[key], list) else [r[key]]
        out.append([Image.open(os.path.join(image_folder, ref)).convert("RGB") for ref in refs])
    return out


def evaluate(model, processor, paths, world_config, settings, table):
    """Plain vs fused on the held-out visual instructions (grid on val, report on test), plus perception, task
    solving and the two controls."""
    from . import grading as ev

    data_dir = os.path.dirname(paths["val_visual"])
    load = lambda name: json.load(open(paths[name]))  # noqa: E731
    batch, max_new = settings["batch_size"], settings["max_new_tokens"]
    val, test = load("val_visual"), load("test_visual")
    val_images, test_images = load_images(val, data_dir), load_images(test, data_dir)
    val_prompts = [ev.visual_prompt(processor, r) for r in val]
    test_prompts = [ev.visual_prompt(processor, r) for r in test]
    results = {}

    with Timer() as t:
        plain_val = ev.accuracy(ev.generate(model, processor, val_prompts, val_images, None, batch, max_new,
                                            desc="val plain"), val)
        grid = []
        configs = [(a, b, tuple(layers), alignment) for alignment in settings.get("alignments", ["right"])
                   for layers in settings["layer_ranges"] for a in settings["alphas"] for b in settings["betas"]]
        for alpha, beta, layers, alignment in configs:
            answers = ev.generate(model, processor, val_prompts, val_images, (alpha, beta, layers, alignment), batch,
                                  max_new, desc=f"val fused a={alpha} b={beta} L={list(layers)} {alignment}")
            grid.append({"alpha": alpha, "beta": beta, "layers": list(layers), "alignment": alignment,
                         **ev.accuracy(answers, val)})
    # Highest validation accuracy; ties go to the earliest grid entry (the config lists the milder settings first).
    best = max(grid, key=lambda g: g["accuracy"])
    chosen = {"alpha": best["alpha"], "beta": best["beta"], "layers": best["layers"], "alignment": best["alignment"]}
    results["validation"] = {"plain": plain_val, "grid": grid, "chosen": chosen}
    table.row("tune fusion on val", t.seconds,
              f"plain {plain_val['accuracy']:.3f} | best fused {best['accuracy']:.3f} at a={best['alpha']} "
              f"b={best['beta']} layers={best['layers']} ({len(grid)} settings)")

    with Timer() as t:
        fusion = (chosen["alpha"], chosen["beta"], tuple(chosen["layers"]), chosen["alignment"])
        plain_answers = ev.generate(model, processor, test_prompts, test_images, None, batch, max_new, desc="test plain")
        fused_answers = ev.generate(model, processor, test_prompts, test_images, fusion, batch, max_new,
                                    desc="test fused")
        blind_prompts = [processor.strip_images(p) for p in test_prompts]
        blind_answers = ev.generate(model, processor, blind_prompts, None, None, batch, max_new, desc="test no image")
        textual_prompts = [ev.textual_record_prompt(processor, r) for r in test]
        textual_answers = ev.generate(model, processor, textual_prompts, None, None, batch, max_new,
                                      desc="test description")
    results["test"] = {
        "plain": ev.accuracy(plain_answers, test),
        "fused": ev.accuracy(fused_answers, test),
        "text_only_prompt": ev.accuracy(blind_answers, test),
        "true_description": ev.accuracy(textual_answers, test),
    }
    correct = {name: [ev.is_correct(a, r) for a, r in zip(answers, test)]
               for name, answers in (("plain", plain_answers), ("fused", fused_answers),
                                     ("text_only_prompt", blind_answers))}
    results["comparisons"] = {
        "fused_minus_plain": paired_bootstrap(correct["fused"], correct["plain"]),
        "fused_minus_text_only_prompt": paired_bootstrap(correct["fused"], correct["text_only_prompt"]),
    }
    results["test_examples"] = [
        {"question": r["question"], "images": r["images"], "answer": r["answer"], "plain": p, "fused": f}
        for r, p, f in list(zip(test, plain_answers, fused_answers))[:12]
    ]
    table.row("test: plain vs fused", t.seconds,
              f"plain {results['test']['plain']['accuracy']:.3f} | fused {results['test']['fused']['accuracy']:.3f} "
              f"| no image {results['test']['text_only_prompt']['accuracy']:.3f} "
              f"| true description {results['test']['true_description']['accuracy']:.3f}")

    with Timer() as t:
        captions = load("caption_eval")
        caption_prompt = ev.render(processor, [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": "Describe the image."}]}])
        caption_answers = ev.generate(model, processor, [caption_prompt] * len(captions),
                                      load_images(captions, data_dir, key="image"), None, batch,
                                      settings["caption_max_new_tokens"], desc="captions")
        results["captions"] = ev.caption_scores(caption_answers, captions, world_config)
        results["caption_examples"] = [{"image": r["image"], "caption": r["caption"], "generated": a}
                                       for r, a in list(zip(captions, caption_answers))[:3]]
        text_records = load("text_eval")
        text_answers = ev.generate(model, processor, [ev.conversation_prompt(processor, r) for r in text_records],
                                   None, None, batch, max_new, desc="text-only QA")
        results["text_qa"] = ev.accuracy(text_answers, text_records)
    table.row("perception and task solving", t.seconds,
              f"caption exact {results['captions']['exact']:.3f} (objects P {results['captions']['object_precision']:.3f}"
              f" R {results['captions']['object_recall']:.3f}) | text-only QA {results['text_qa']['accuracy']:.3f}")
    return results


def plot_heatmap(grid, plain_accuracy, path):
    """Validation accuracy of fused generation over alpha (rows) x beta (columns), one panel per layer range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layer_ranges = sorted({tuple(g["layers"]) for g in grid})
    alignments = list(dict.fromkeys(g.get("alignment", "right") for g in grid))
    alphas = sorted({g["alpha"] for g in grid})
    betas = sorted({g["beta"] for g in grid})
    panels = [(layers, alignment) for alignment in alignments for layers in layer_ranges]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1, 3.2), squeeze=False)
    lookup = {(g["alpha"], g["beta"], tuple(g["layers"]), g.get("alignment", "right")): g["accuracy"] for g in grid}
    image = None
    for ax, (layers, alignment) in zip(axes[0], panels):
        values = [[lookup[(a, b, layers, alignment)] for b in betas] for a in alphas]
        image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", origin="lower")
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_xlabel("beta")
        ax.set_ylabel("alpha")
        ax.set_title(f"layers [{layers[0]}, {layers[1]}), {alignment}", fontsize=9)
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black",
                        fontsize=8)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="val accuracy")
    fig.suptitle(f"Fused generation, validation accuracy (plain: {plain_accuracy:.2f})", fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- save and reload


def save_final_model(model, processor, chosen, folder):
    """The final model + processor with its remote code; the tuned fusion settings become the config defaults."""
    import modeling_vift  # noqa: F401  (registers the auto classes: the folder gets the remote-code files)
    from modeling_vift.evaluation import apply_fusion_setting

    apply_fusion_setting(model, {"fusion_alpha": chosen["alpha"], "fusion_beta": chosen["beta"],
                                 "fusion_layers": chosen["layers"], "fusion_alignment": chosen.get("alignment", "right")})
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def reload_in_fresh_process(folder, record, image_folder, work_dir, timeout=300):
    """Runs `demo/answer.py` in a new interpreter in which `modeling_vift` cannot be imported: the folder loads with
    `AutoModel.from_pretrained(folder, trust_remote_code=True)` from its own code files, and answers `record`."""
    from modeling_vift.publishing.fresh_process import run_python_without_vift

    os.makedirs(work_dir, exist_ok=True)
    with open(os.path.join(HERE, "answer.py")) as f:
        script = f.read()
    args = ["--folder", os.path.abspath(folder), "--question", record["question"], "--json", "--image",
            *[os.path.abspath(os.path.join(image_folder, p)) for p in record["images"]]]
    done = run_python_without_vift(script, os.path.abspath(work_dir), args=args, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"Reloading {folder} in a fresh process failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- main


def run_demo(config, output_dir, reload=True, verbose=True):
    """Runs the whole demo into `output_dir` and returns the results dict (also written to results.json). With
    `verbose=False` the console shows the step table, one progress bar per stage and the summary, and everything
    else (trainer logs, library warnings) goes to `output_dir/demo.log`."""
    import torch

    os.makedirs(output_dir, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(config.get("threads", 1)))
    log_path = None if verbose else os.path.join(output_dir, "demo.log")
    if log_path and os.path.exists(log_path):
        os.remove(log_path)
    try:
        with Console(log_path) as console:
            return _run_demo(config, output_dir, reload, console)
    finally:
        torch.set_num_threads(threads)


def _run_demo(config, output_dir, reload, console):
    import torch

    from . import grading
    from . import tokenizer as demo_tokenizer
    from .world import WorldConfig, build_world, corpus

    started = time.time()
    seed = int(config.get("seed", 0))
    quiet_training_logs()
    grading.progress_stream = console.stream
    data_dir, models_dir = os.path.join(output_dir, "data"), os.path.join(output_dir, "models")
    console.print(f"ViFT demo, seed {seed}: {output_dir}" + (f" (full log: {console.log_path})" if console.log_path else ""))
    table = Table(console)
    results = {"seed": seed, "config": config, "threads": torch.get_num_threads()}

    with Timer() as t:
        world_config = WorldConfig(seed=seed, **config["world"])
        paths = build_world(data_dir, world_config)
        tokenizer = demo_tokenizer.build_tokenizer(corpus(paths), **config["tokenizer"])
        lm_dir, vision_dir = build_towers(config, tokenizer, world_config, models_dir, seed)
        stage_data = write_stage_data(paths, data_dir)
    table.row("world + tokenizer", t.seconds,
              f"{world_config.image_size}px images, {world_config.grid}x{world_config.grid} cells, "
              f"vocab {len(tokenizer)}, data in {data_dir}")

    with Timer() as t:
        probe = pretrain_vision_tower(vision_dir, paths["vision_pretrain"], data_dir, config["vision_pretraining"], seed)
    table.row("vision tower (SigLIP stand-in)", t.seconds,
              "cell probe accuracy " + " ".join(f"{k} {v:.2f}" for k, v in probe.items()))

    stages = {name: seeded(stage, seed) for name, stage in config["stages"].items()}
    stage0_dir, stage1_dir, stage2_dir = (os.path.join(models_dir, n) for n in ("stage0-lm", "stage1", "stage2"))
    commands = {}
    with Timer() as t, StageProgress(console, "stage 0"):
        commands["stage0"] = run_stage0(stages["stage0"], lm_dir, stage_data["stage0"], stage0_dir)
        stage0_qa = text_qa_of_language_model(stage0_dir, paths["text_eval"], config["evaluation"])
    results["stage0_text_qa"] = stage0_qa
    table.row("stage 0: LM on text tasks (TRL)", t.seconds, f"text-only QA accuracy {stage0_qa['accuracy']:.3f}")
    with Timer() as t, StageProgress(console, "stage 1"):
        commands["stage1"], losses = run_vift_stage(
            1, stages["stage1"], ["--model_name_or_path", stage0_dir, "--vision_tower_name_or_path", vision_dir],
            stage_data["stage1"], stage1_dir)
    table.row("stage 1: projector on captions", t.seconds, f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    with Timer() as t, StageProgress(console, "stage 2"):
        commands["stage2"], losses = run_vift_stage(
            2, stages["stage2"], ["--model_name_or_path", stage1_dir], stage_data["stage2"], stage2_dir)
    table.row("stage 2: captions + text tasks", t.seconds, f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    results["commands"] = commands
    training_seconds = time.time() - started

    from modeling_vift import ViFTForConditionalGeneration, ViFTProcessor

    model = ViFTForConditionalGeneration.from_pretrained(stage2_dir).eval()
    processor = ViFTProcessor.from_pretrained(stage2_dir)
    results.update(evaluate(model, processor, paths, world_config, config["evaluation"], table))

    with Timer() as t:
        final_dir = os.path.join(output_dir, "vift-demo")
        save_final_model(model, processor, results["validation"]["chosen"], final_dir)
        plot_path = os.path.join(output_dir, "fusion_heatmap.png")
        plot_heatmap(results["validation"]["grid"], results["validation"]["plain"]["accuracy"], plot_path)
        sample = json.load(open(paths["test_visual"]))[0]
        if reload:
            reloaded = reload_in_fresh_process(final_dir, sample, data_dir, os.path.join(output_dir, "reload"))
            results["reload"] = {"record": sample, **reloaded}
    table.row("save + reload (fresh process)", t.seconds,
              f"{final_dir}" + (f" -> {results['reload']['fused']!r} (expected {sample['answer']!r})" if reload else ""))

    results["seconds"] = {"training": round(training_seconds, 1), "total": round(time.time() - started, 1),
                          "steps": table.rows}
    results["paths"] = {"model": final_dir, "heatmap": plot_path, "results": os.path.join(output_dir, "results.json")}
    if console.log_path:
        results["paths"]["log"] = console.log_path
    with open(results["paths"]["results"], "w") as f:
        json.dump(results, f, indent=1, default=str)
    print_summary(results, console)
    return results


def seeded(stage, seed):
    """A stage entry whose trainer seed is the demo's seed (unless the stage's overrides set one)."""
    stage = dict(stage)
    stage["overrides"] = {"seed": seed, **(stage.get("overrides") or {})}
    return stage


def paired_bootstrap(first, second, samples=2000, seed=0):
    """Mean of `first - second` (per-question 0/1 correctness, same questions) and its 95 % bootstrap interval
    (questions resampled with replacement, percentile method, fixed seed)."""
    if len(first) != len(second) or not first:
        raise ValueError(f"paired_bootstrap needs two equally long non-empty lists, got {len(first)} and {len(second)}.")
    rng = random.Random(seed)
    n = len(first)
    diffs = [a - b for a, b in zip(first, second)]
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    return {"difference": sum(diffs) / n, "low": means[int(0.025 * samples)], "high": means[int(0.975 * samples) - 1],
            "samples": samples}


def print_summary(results, console=None):
    say = console.print if console else print
    test, chosen = results["test"], results["validation"]["chosen"]
    say("")
    say(f"Never-seen visual instructions, test split ({test['plain']['count']} questions):")
    say(f"  {'':<38}{'accuracy':>9}")
    say(f"  {'plain multimodal generation':<38}{test['plain']['accuracy']:>9.3f}")
    say(f"  {'fused generation (ViFT)':<38}{test['fused']['accuracy']:>9.3f}"
        f"   alpha={chosen['alpha']} beta={chosen['beta']} layers={chosen['layers']} "
        f"alignment={chosen.get('alignment', 'right')} (tuned on val)")
    say(f"  {'control: text-only prompt, no image':<38}{test['text_only_prompt']['accuracy']:>9.3f}")
    say(f"  {'control: true description as text':<38}{test['true_description']['accuracy']:>9.3f}")
    for name, key in (("plain", "fused_minus_plain"), ("the no-image control", "fused_minus_text_only_prompt")):
        if key in results.get("comparisons", {}):
            c = results["comparisons"][key]
            say(f"  fused - {name}: {c['difference']:+.3f} (95% bootstrap interval {c['low']:+.3f} .. {c['high']:+.3f})")
    kinds = sorted(test["plain"]["by_kind"])
    say("  by kind (plain -> fused): " + ", ".join(
        f"{k} {test['plain']['by_kind'][k]:.2f}->{test['fused']['by_kind'][k]:.2f}" for k in kinds))
    say(f"Perception: caption exact {results['captions']['exact']:.3f}; "
        f"task solving: text-only QA {results['text_qa']['accuracy']:.3f}")
    say(f"Run time {results['seconds']['total']:.0f} s (training {results['seconds']['training']:.0f} s). "
        f"Results: {results['paths']['results']}; heatmap: {results['paths']['heatmap']}")


def run_seeds(config, output_dir, seeds, verbose=False):
    """The demo once per seed (`output_dir/seed_<n>`), then one table over the seeds: each condition's accuracy per
    seed, mean, min and max, and whether fused beats plain and the no-image control on every seed."""
    runs = {}
    for seed in seeds:
        runs[seed] = run_demo({**config, "seed": seed}, os.path.join(output_dir, f"seed_{seed}"), reload=False,
                              verbose=verbose)
    conditions = ("plain", "fused", "text_only_prompt", "true_description")
    rows = {c: [runs[s]["test"][c]["accuracy"] for s in seeds] for c in conditions}
    rows["caption_exact"] = [runs[s]["captions"]["exact"] for s in seeds]
    summary = {
        "seeds": list(seeds),
        "accuracy": {c: {"per_seed": v, "mean": sum(v) / len(v), "min": min(v), "max": max(v)} for c, v in rows.items()},
        "chosen": {s: runs[s]["validation"]["chosen"] for s in seeds},
        "comparisons": {s: runs[s].get("comparisons", {}) for s in seeds},
        "fused_beats_plain_on_every_seed": all(
            runs[s]["test"]["fused"]["accuracy"] > runs[s]["test"]["plain"]["accuracy"] for s in seeds),
        "fused_beats_no_image_on_every_seed": all(
            runs[s]["test"]["fused"]["accuracy"] > runs[s]["test"]["text_only_prompt"]["accuracy"] for s in seeds),
        "seconds": {s: runs[s]["seconds"]["total"] for s in seeds},
    }
    with open(os.path.join(output_dir, "seeds.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print()
    print(f"Test accuracy over seeds {list(seeds)} ({runs[seeds[0]]['test']['plain']['count']} questions each):")
    print(f"  {'':<38}" + "".join(f"{'seed ' + str(s):>9}" for s in seeds) + f"{'mean':>9}{'min':>9}{'max':>9}")
    names = {"plain": "plain multimodal generation", "fused": "fused generation (ViFT)",
             "text_only_prompt": "control: text-only prompt, no image",
             "true_description": "control: true description as text", "caption_exact": "perception: exact captions"}
    for c, name in names.items():
        a = summary["accuracy"][c]
        print(f"  {name:<38}" + "".join(f"{v:>9.3f}" for v in a["per_seed"]) + f"{a['mean']:>9.3f}{a['min']:>9.3f}"
              f"{a['max']:>9.3f}")
    print(f"  fused > plain on every seed: {summary['fused_beats_plain_on_every_seed']}; "
          f"fused > no-image control on every seed: {summary['fused_beats_no_image_on_every_seed']}")
    print(f"Summary: {os.path.join(output_dir, 'seeds.json')}")
    return summary


@dataclass
class DemoArguments:
    config: str = field(default=DEFAULT_CONFIG, metadata={"help": "demo YAML (default: demo/configs/demo.yaml)"})
    output_dir: str | None = field(default=None, metadata={"help": "where everything is written (default: from the config)"})
    no_reload: bool = field(default=False, metadata={"help": "skip the fresh-process reload check"})
    seeds: list[int] | None = field(
        default=None, metadata={"help": "run the demo once per seed (output_dir/seed_<n>) and print the spread, "
                                "e.g. --seeds 0 1 2"})
    verbose: bool = field(
        default=False, metadata={"help": "show trainer logs and library warnings on the console (by default they go "
                                 "to <output_dir>/demo.log)"})


def main(argv=None):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses(argv)
    config = load_config(args.config)
    output_dir = args.output_dir or config.get("output_dir", "demo_output")
    if args.seeds:
        return run_seeds(config, output_dir, args.seeds, verbose=args.verbose)
    return run_demo(config, output_dir, reload=not args.no_reload, verbose=args.verbose)
