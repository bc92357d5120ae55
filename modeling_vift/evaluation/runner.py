"""Batched generation over evaluation samples, streamed to JSONL, resumable and sharded across processes.

Layout of an output folder:
    run_config.json                    what produced the predictions (checked on resume)
    shards/rank000-of-002.jsonl        one file per process; one JSON record per line, written as soon as generated
    predictions.jsonl                  all shards merged once, in sample order (written by the main process)

Resume: every id already present in `predictions.jsonl` or any shard file is skipped (a line cut short by an
interruption is discarded and regenerated). Sharding: launched with `accelerate launch --num_processes N`, process r
generates every N-th pending sample starting at r; the main process merges after all have finished. Greedy decoding.
"""

from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import dataclass, replace

from ..remote_code.configuration_vift import check_fusion_alignment, check_fusion_layers, check_fusion_weights
from ..remote_code.fusion_vift import resolve_fusion_settings
from .samples import IMAGE_PLACEHOLDER, open_image


@dataclass
class GenerationSettings:
    max_new_tokens: int = 64
    batch_size: int = 1
    fusion: bool = False
    fusion_alpha: float | None = None  # None: the model config's default
    fusion_beta: float | None = None
    fusion_layers: list | None = None
    fusion_alignment: str | None = None  # "right" (the authors') or "token"; None: the model's
    system_prompt: str | None = None

    def __post_init__(self):
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        # The model's layer count is not known here: the range is checked against it when generation starts.
        self.fusion_alpha, self.fusion_beta = check_fusion_weights(self.fusion_alpha, self.fusion_beta)
        if self.fusion_layers is not None:
            self.fusion_layers = list(check_fusion_layers(self.fusion_layers))
        check_fusion_alignment(self.fusion_alignment)

    def fusion_kwargs(self):
        """The keyword arguments of fused `generate` (only the ones given; the rest come from the model config)."""
        if not self.fusion:
            return {}
        kwargs = {"fusion": True}
        if self.fusion_alpha is not None:
            kwargs["fusion_alpha"] = float(self.fusion_alpha)
        if self.fusion_beta is not None:
            kwargs["fusion_beta"] = float(self.fusion_beta)
        if self.fusion_layers is not None:
            kwargs["fusion_layers"] = tuple(self.fusion_layers)
        if self.fusion_alignment is not None:
            kwargs["fusion_alignment"] = self.fusion_alignment
        return kwargs


def parse_layer_range(spec, num_layers=None):
    """A steered layer range as written in a config or on the command line: `"14:28"` or `[14, 28]` -> `[14, 28]`;
    `"all"` -> `[0, L)`, `"upper_half"` -> `[L // 2, L)` (with `num_layers=L`; without it the name is returned);
    None / "" / "default" -> None (the model's own setting). Checked against `num_layers` when given."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "default")):
        return None
    if isinstance(spec, str):
        name = spec.strip().lower()
        if name in ("all", "upper_half"):
            if num_layers is None:
                return name
            return [0, num_layers] if name == "all" else [num_layers // 2, num_layers]
        try:
            spec = [int(x) for x in name.replace("-", ":").split(":")]
        except ValueError:
            raise ValueError(
                f"A layer range is written start:end (e.g. 14:28), 'all', 'upper_half' or 'default', got {spec!r}."
            ) from None
    return list(check_fusion_layers(spec, num_layers))


def num_text_layers(model):
    config = model.config
    text = getattr(config, "text_config", None)
    return getattr(text, "num_hidden_layers", None) or getattr(config, "num_hidden_layers")


def layer_range_for_model(model, spec, name="fusion_layers"):
    """`parse_layer_range` against a loaded model, refusing a range that does not fit it with the model's own
    setting and the remedy (a YAML written for a 28-layer LM, used on another model, is the usual cause)."""
    num_layers = num_text_layers(model)
    try:
        return parse_layer_range(spec, num_layers)
    except ValueError as err:
        own = getattr(model.generation_config, "fusion_layers", None) or model.config.fusion_layers
        raise ValueError(
            f"{err} ({name}={spec!r} was given in the config or on the command line.) This model's own setting is "
            f"{list(own)}: leave {name} unset to use it, or give a range that fits {num_layers} layers "
            f"('all' = 0:{num_layers}, 'upper_half' = {num_layers // 2}:{num_layers})."
        ) from None


def with_fusion_defaults(settings, model):
    """The settings with the fusion values left unset filled from the model's generation config, else its config (as
    fused `generate` does), so that records and the resume check name the values actually used."""
    if not settings.fusion:
        return settings
    alpha, beta, layers, alignment = resolve_fusion_settings(
        model, settings.fusion_alpha, settings.fusion_beta, settings.fusion_layers, settings.fusion_alignment
    )
    return replace(settings, fusion_alpha=alpha, fusion_beta=beta, fusion_layers=list(layers), fusion_alignment=alignment)


def distributed_state():
    """The process group set up by `accelerate launch` / `torchrun` (or a single process). Without CUDA the processes
    talk over gloo (CPU), which `PartialState` only does when told `cpu=True`."""
    import torch
    from accelerate import PartialState

    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    return PartialState(cpu=use_cpu)


# ---------------------------------------------------------------------------------------------- JSONL


def read_jsonl(path):
    """Records of a JSONL file, and the number of lines that could not be parsed (a record cut short)."""
    records, broken = [], 0
    if not os.path.exists(path):
        return records, broken
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                broken += 1
    return records, broken


def _repair_tail(path):
    """Cuts a file back to its last complete line, so appended records never continue a half-written one."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.seek(0)
            f.truncate(data.rfind(b"\n") + 1)


def _better(new, old):
    """Which of two records of one id to keep: a successful one over an error, else the later one."""
    if old is None:
        return new
    if old.get("error") is None and new.get("error") is not None:
        return old
    return new


def collect_records(output_dir):
    """All records found in an output folder (merged file and shards), one per id, and the count of broken lines."""
    best, broken = {}, 0
    paths = [os.path.join(output_dir, "predictions.jsonl")] + sorted(glob.glob(os.path.join(output_dir, "shards", "*.jsonl")))
    for path in paths:
        records, bad = read_jsonl(path)
        broken += bad
        for record in records:
            if "id" in record:
                best[str(record["id"])] = _better(record, best.get(str(record["id"])))
    return best, broken


def check_run_config(output_dir, run_config, overwrite=False, write=True):
    """Checks that predictions already in `output_dir` were made with `run_config` (resuming other settings would
    mix runs) and, with `write`, records it in `run_config.json`; `overwrite` discards earlier predictions instead."""
    path = os.path.join(output_dir, "run_config.json")
    if overwrite:
        if write:
            for stale in [os.path.join(output_dir, "predictions.jsonl"), path] + glob.glob(os.path.join(output_dir, "shards", "*.jsonl")):
                if os.path.exists(stale):
                    os.remove(stale)
    elif os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
        changed = {k: (previous.get(k), v) for k, v in run_config.items() if previous.get(k) != v}
        if changed:
            raise ValueError(
                f"{output_dir} holds predictions made with other settings ({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in changed.items())}). "
                f"Use another output_dir, or overwrite=True to discard them."
            )
        return
    if write:
        os.makedirs(output_dir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(run_config, f, indent=2, sort_keys=True)
        os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- generation


def render_prompt(processor, sample, system_prompt=None):
    """The chat-formatted prompt of a sample (its `<image>` placeholders become the processor's image token)."""
    content = sample.prompt.replace(IMAGE_PLACEHOLDER, processor.image_token)
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def _batches(samples, batch_size):
    """Consecutive batches of up to `batch_size` samples; samples with and without images are never mixed (fused
    generation applies only to prompts with images)."""
    batch = []
    for sample in samples:
        if batch and (len(batch) == batch_size or bool(batch[0].images) != bool(sample.images)):
            yield batch
            batch = []
        batch.append(sample)
    if batch:
        yield batch


def generate_greedy(model, processor, texts, images=None, max_new_tokens=64, fusion=None, **generate_kwargs):
    """Greedy answers (stripped strings) for one left-padded batch of rendered prompts `texts`; `images` is the flat
    list of their images in order of appearance. `fusion` holds fused `generate`'s keyword arguments (`{"fusion":
    True, ...}`; the text-only prompts come from the processor's `return_text_only`), None for plain generation.
    Further keyword arguments go to `generate`."""
    import torch

    inputs = processor(images=images or None, text=texts, return_tensors="pt", padding=True, padding_side="left",
                       return_text_only=bool(fusion))
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    kwargs = {**inputs, **(fusion or {}), **generate_kwargs}
    if kwargs.get("pad_token_id") is None:
        pad_id = processor.tokenizer.pad_token_id
        kwargs["pad_token_id"] = processor.tokenizer.eos_token_id if pad_id is None else pad_id
    with torch.inference_mode():
        output = model.generate(**kwargs, max_new_tokens=int(max_new_tokens), do_sample=False)
    decoded = processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return [text.strip() for text in decoded]


def generate_batch(model, processor, samples, settings):
    """Generates for one batch; returns `[(prediction or None, error or None)]` in order. A sample whose images
    cannot be opened, or a batch that fails, is reported per sample instead of stopping the run."""
    results = [None] * len(samples)
    ready, images = [], []
    for i, sample in enumerate(samples):
        try:
            opened = [open_image(image) for image in sample.images]
        except Exception as err:  # unreadable / corrupt image file
            results[i] = (None, f"image error: {type(err).__name__}: {err}")
            continue
        ready.append(i)
        images.extend(opened)
    if not ready:
        return results
    use_fusion = settings.fusion and bool(samples[ready[0]].images)
    texts = [render_prompt(processor, samples[i], settings.system_prompt) for i in ready]
    try:
        fusion = settings.fusion_kwargs() if use_fusion else None
        decoded = generate_greedy(model, processor, texts, images, int(settings.max_new_tokens), fusion=fusion)
        for i, text in zip(ready, decoded):
            results[i] = (text, None)
    except (ValueError, RuntimeError) as err:  # bad input (too long, shapes); programming errors surface
        if len(ready) > 1:  # find the sample that fails; the others still get their predictions
            for i in ready:
                results[i] = generate_batch(model, processor, [samples[i]], settings)[0]
        else:
            message = str(err).split("\n")[0]
            if use_fusion and "fusion" in message:
                message += " (this model's generate does not take the fusion arguments: update the model code)"
            results[ready[0]] = (None, f"generation error: {type(err).__name__}: {message}")
    return results


def run_generation(model, processor, samples, output_dir, settings, run_config=None, overwrite=False, progress=True,
                   state=None, desc="generate"):
    """Generates predictions for `samples` (those not done yet) into `output_dir`; each process its own shard.

    Returns a dict of counts for this process: `pending` (before the run, all processes), `generated` (here),
    `errors` (here), `resumed` (already done), `broken_lines` (discarded partial records), `seconds` (wall time)."""
    state = state or distributed_state()
    start = time.perf_counter()
    run_config = json.loads(json.dumps(run_config or {}, default=str))  # compared as stored
    check_run_config(output_dir, run_config, overwrite=overwrite, write=False)  # every process fails alike
    state.wait_for_everyone()
    if state.is_main_process:
        check_run_config(output_dir, run_config, overwrite=overwrite, write=True)
    state.wait_for_everyone()
    done, broken = collect_records(output_dir)
    done_ok = {k for k, r in done.items() if r.get("error") is None}
    pending = [s for s in samples if s.id not in done_ok]
    state.wait_for_everyone()  # every process has read the same state before any writes

    mine = pending[state.process_index :: state.num_processes]
    shard_path = os.path.join(output_dir, "shards", f"rank{state.process_index:03d}-of-{state.num_processes:03d}.jsonl")
    os.makedirs(os.path.dirname(shard_path), exist_ok=True)
    _repair_tail(shard_path)
    fusion = settings.fusion_kwargs()
    generated = errors = 0
    bar = None
    if progress and mine:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc=f"{desc} [{state.process_index + 1}/{state.num_processes}]",
                   position=state.process_index, leave=True, dynamic_ncols=True)
    with open(shard_path, "a", encoding="utf-8") as out:
        for batch in _batches(mine, int(settings.batch_size)):
            for sample, (prediction, error) in zip(batch, generate_batch(model, processor, batch, settings)):
                record = {
                    "id": sample.id,
                    "prediction": prediction if prediction is not None else "",
                    "error": error,
                    "fusion": fusion if (fusion and sample.images) else None,
                    "sample": sample.scoring_fields(),
                }
                out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                generated += 1
                errors += error is not None
            out.flush()
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    state.wait_for_everyone()
    return {
        "pending": len(pending), "generated": generated, "errors": errors, "resumed": len(samples) - len(pending),
        "broken_lines": broken, "seconds": round(time.perf_counter() - start, 3),
    }


def merge_predictions(output_dir, samples):
    """Merges the shard files into `predictions.jsonl` in sample order (main process only) and returns the records.
    Samples without a record (none expected after a completed run) are returned in `missing`."""
    records, _ = collect_records(output_dir)
    ordered, missing = [], []
    for sample in samples:
        record = records.get(sample.id)
        (ordered.append(record) if record is not None else missing.append(sample.id))
    path = os.path.join(output_dir, "predictions.jsonl")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for record in ordered:
            f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)
    return ordered, missing


__all__ = [
    "GenerationSettings",
    "check_run_config",
    "collect_records",
    "generate_batch",
    "generate_greedy",
    "layer_range_for_model",
    "merge_predictions",
    "num_text_layers",
    "parse_layer_range",
    "read_jsonl",
    "render_prompt",
    "with_fusion_defaults",
    "run_generation",
]
