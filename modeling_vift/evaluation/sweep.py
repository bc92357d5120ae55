"""Choosing fused-inference settings from evidence: a grid over alpha, beta, the steered layer range and (optionally)
the alignment on a validation split, scored with the benchmark's metric.

Writes into the output folder: `runs/<setting>/` (one resumable prediction folder per setting), `sweep_results.json`
(every setting's score and alignment), `best_fusion.json` (the best setting; ties go to the first in grid order),
`heatmap.png` (score over alpha x beta, one panel per layer range and alignment) and `validation_ids.txt` (exclude
them from the reported evaluation with `exclude_ids_file`). The best setting, alignment included, can be written into
a saved model's `config.json` and `generation_config.json` (`write_fusion_setting`).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field, fields, replace
from typing import Optional

from ..remote_code.configuration_vift import check_fusion_alignment, fusion_setting
from ..remote_code.fusion_vift import resolve_fusion_settings
from .benchmarks import canonical_benchmark, load_benchmark
from .pipeline import (
    BenchmarkRunConfig,
    EvalConfig,
    _help,
    evaluate_benchmark,
    load_model_and_processor,
    primary_score,
    write_json,
)
from .runner import layer_range_for_model, num_text_layers, parse_layer_range


@dataclass
class SweepConfig(BenchmarkRunConfig):
    """A grid of fusion settings, each evaluated with `evaluate_benchmark` on the same validation samples."""

    alphas: list[float] = field(default_factory=lambda: [0.5, 1.0], metadata=_help("Values of alpha."))
    betas: list[float] = field(default_factory=lambda: [0.0, 0.5], metadata=_help("Values of beta."))
    layer_ranges: list[str] = field(default_factory=lambda: ["default"], metadata=_help(
        "Layer ranges: start:end, 'all', 'upper_half' or 'default' (the model's own setting)."))
    fusion_alignments: list[str] = field(default_factory=lambda: ["right"], metadata=_help(
        "Alignments to search: 'right' (the authors', the default) and/or 'token' (each text token steers its own copy; "
        "for images between pieces of text)."))
    sample_seed: Optional[int] = field(default=None, metadata=_help("With max_samples: draw a random subset with this seed."))
    include_baseline: bool = field(default=True, metadata=_help("Also score plain generation (no fusion)."))
    write_best_to: Optional[str] = field(default=None, metadata=_help(
        "config, generation_config or both: store the best setting in the (local) model folder."))

    def __post_init__(self):
        super().__post_init__()
        if not self.alphas or not self.betas or not self.layer_ranges or not self.fusion_alignments:
            raise ValueError("alphas, betas, layer_ranges and fusion_alignments must each hold at least one value.")
        for alignment in self.fusion_alignments:
            if alignment is None:
                raise ValueError("fusion_alignments holds None: list the alignments to search ('right', 'token').")
            check_fusion_alignment(alignment)
        for spec in self.layer_ranges:
            parse_layer_range(spec)
        if self.write_best_to not in (None, "config", "generation_config", "both"):
            raise ValueError(f"write_best_to must be config, generation_config or both, got {self.write_best_to!r}.")


def _tag(alpha, beta, layers, alignment="right"):
    """The run folder of one setting; the authors' right alignment keeps the name it had before alignments were searched."""
    tag = f"layers{layers[0]}-{layers[1]}_alpha{alpha:g}_beta{beta:g}"
    return tag if alignment == "right" else f"{tag}_{alignment}"


def select_validation(samples, max_samples=None, seed=None):
    if max_samples is None or max_samples >= len(samples):
        return list(samples)
    if seed is None:
        return list(samples[:max_samples])
    chosen = set(random.Random(seed).sample(range(len(samples)), max_samples))
    return [s for i, s in enumerate(samples) if i in chosen]


def run_fusion_sweep(config: SweepConfig, model=None, processor=None, state=None, dtype=None):
    """Runs the grid (one `evaluate_benchmark` per setting, on the same validation samples); returns the sweep result
    (settings, scores, best) on the main process, None elsewhere."""
    from .runner import distributed_state

    state = state or distributed_state()
    benchmark = canonical_benchmark(config.benchmark)
    if benchmark == "open_ended":
        raise ValueError("A fusion sweep needs a scored benchmark (mathvista, mathverse, mathvision or demon).")
    with state.main_process_first():  # a Hub dataset is downloaded once
        loaded = load_benchmark(
            benchmark, config.data_path, split=config.split, config=config.data_config, image_root=config.image_root,
            prompt_style=config.prompt_style, query_field=config.query_field,
        )
    samples = select_validation(loaded.samples, config.max_samples, config.sample_seed)
    if not samples:
        raise ValueError(f"No validation samples to sweep on ({len(loaded.skipped)} records were skipped; see their reasons with the evaluate recipe).")
    validation = replace(loaded, samples=samples)
    if model is None or processor is None:
        model, processor = load_model_and_processor(config.model_name_or_path, dtype=dtype or config.dtype, device=state.device)
    layer_ranges = []
    for spec in config.layer_ranges:
        layers = layer_range_for_model(model, spec, name="layer_ranges")
        layers = layers or list(resolve_fusion_settings(model)[2])  # 'default': the model's own
        if layers not in layer_ranges:
            layer_ranges.append(layers)
    alphas = [float(a) for a in config.alphas]
    betas = [float(b) for b in config.betas]
    alignments = list(dict.fromkeys(config.fusion_alignments))

    settings = []
    if config.include_baseline:
        settings.append(("baseline", {"fusion": False}))
    for alignment in alignments:  # in the order given: ties go to the first (the authors' right, by default)
        for layers in layer_ranges:
            for beta in betas:
                for alpha in alphas:
                    settings.append((_tag(alpha, beta, layers, alignment), {
                        "fusion": True, "fusion_alpha": alpha, "fusion_beta": beta,
                        "fusion_layers": f"{layers[0]}:{layers[1]}", "fusion_alignment": alignment}))

    shared = {f.name: getattr(config, f.name) for f in fields(BenchmarkRunConfig)}
    results = []
    for tag, fusion in settings:
        run = EvalConfig(**dict(shared, output_dir=os.path.join(config.output_dir, "runs", tag), **fusion))
        outcome = evaluate_benchmark(run, model=model, processor=processor, state=state, loaded=validation)
        if state.is_main_process:
            generation = outcome["generation"]
            results.append({
                "tag": tag, "fusion": generation.fusion, "fusion_alpha": generation.fusion_alpha if generation.fusion else None,
                "fusion_beta": generation.fusion_beta if generation.fusion else None,
                "fusion_layers": generation.fusion_layers if generation.fusion else None,
                "fusion_alignment": generation.fusion_alignment if generation.fusion else None,
                "score": primary_score(benchmark, outcome["scores"]), "n": outcome["stats"]["num_samples"],
                "errors": len(outcome["report"]["generation_errors"]),
            })
        state.wait_for_everyone()
    if not state.is_main_process:
        return None

    fused = [r for r in results if r["fusion"]]
    best = max(fused, key=lambda r: r["score"])  # max keeps the first of equal scores: grid order breaks ties
    baseline = next((r for r in results if not r["fusion"]), None)
    metric = "overall (mean of DEMON categories)" if benchmark == "demon" else "accuracy"
    summary = {
        "benchmark": benchmark, "metric": metric, "model": config.model_name_or_path, "data_path": str(config.data_path),
        "num_validation_samples": len(samples), "alphas": alphas, "betas": betas, "layer_ranges": layer_ranges,
        "fusion_alignments": alignments, "results": results, "baseline_score": baseline["score"] if baseline else None,
        "best": {"fusion_alpha": best["fusion_alpha"], "fusion_beta": best["fusion_beta"],
                 "fusion_layers": best["fusion_layers"], "fusion_alignment": best["fusion_alignment"],
                 "score": best["score"]},
    }
    os.makedirs(config.output_dir, exist_ok=True)
    write_json(os.path.join(config.output_dir, "sweep_results.json"), summary)
    write_json(os.path.join(config.output_dir, "best_fusion.json"), dict(summary["best"], benchmark=benchmark, metric=metric,
                                                                          baseline_score=summary["baseline_score"],
                                                                          num_validation_samples=len(samples)))
    with open(os.path.join(config.output_dir, "validation_ids.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{s.id}\n" for s in samples))
    plot_heatmap(summary, os.path.join(config.output_dir, "heatmap.png"))
    if config.write_best_to:
        if not config.model_name_or_path or not os.path.isdir(str(config.model_name_or_path)):
            raise ValueError("write_best_to needs model_name_or_path to be a local model folder.")
        summary["written_to"] = write_fusion_setting(config.model_name_or_path, summary["best"], config.write_best_to)
    summary["table"] = format_sweep_table(summary)
    return summary


def format_sweep_table(summary):
    rows = ["| alignment | layers | alpha | beta | score |", "|---|---|---|---|---|"]
    for r in summary["results"]:
        if r["fusion"]:
            rows.append(f"| {r['fusion_alignment']} | [{r['fusion_layers'][0]}, {r['fusion_layers'][1]}) | {r['fusion_alpha']:g} | "
                        f"{r['fusion_beta']:g} | {r['score']:.4f} |")
        else:
            rows.append(f"| no fusion | - | - | - | {r['score']:.4f} |")
    best = summary["best"]
    rows.append(f"\nBest: alpha={best['fusion_alpha']:g}, beta={best['fusion_beta']:g}, layers={best['fusion_layers']}, "
                f"alignment={best['fusion_alignment']} "
                f"({summary['metric']} {best['score']:.4f} on {summary['num_validation_samples']} validation samples)")
    return "\n".join(rows)


def plot_heatmap(summary, path):
    """Score (a fraction, as in the JSON files) over alpha (x) and beta (y), one panel per layer range and alignment
    (alignments in rows when more than one was searched); the best setting is starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    alphas, betas, ranges = summary["alphas"], summary["betas"], summary["layer_ranges"]
    alignments = summary.get("fusion_alignments") or ["right"]
    fig, axes = plt.subplots(len(alignments), len(ranges), squeeze=False, figsize=(
        1.2 + 1.1 * len(alphas) * len(ranges) + 1.5 * len(ranges), 0.2 + (1.4 + 0.7 * len(betas)) * len(alignments)))
    lookup = {(r["fusion_alpha"], r["fusion_beta"], tuple(r["fusion_layers"]), r.get("fusion_alignment") or "right"): r["score"]
              for r in summary["results"] if r["fusion"]}
    vmax = max(lookup.values()) or 1.0  # one colour scale for every panel
    best = summary["best"]
    best_key = [best["fusion_alpha"], best["fusion_beta"], list(best["fusion_layers"]), best.get("fusion_alignment") or "right"]
    panels = [(axes[row, column], alignment, layers, column) for row, alignment in enumerate(alignments)
              for column, layers in enumerate(ranges)]
    image = None
    for ax, alignment, layers, index in panels:
        grid = np.array([[lookup[(a, b, tuple(layers), alignment)] for a in alphas] for b in betas])
        image = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto", vmin=0, vmax=vmax)
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_yticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_xlabel("alpha (text-only stream)")
        if index == 0:  # one y label: on every panel it ran into the neighbour's tick labels
            ax.set_ylabel("beta (subtracted multimodal stream)")
        ax.set_title(f"layers [{layers[0]}, {layers[1]})" + (f", {alignment} alignment" if len(alignments) > 1 else ""))
        for y in range(len(betas)):
            for x in range(len(alphas)):
                is_best = [alphas[x], betas[y], list(layers), alignment] == best_key
                ax.text(x, y, f"{grid[y, x]:.3f}" + (" *" if is_best else ""), ha="center", va="center",
                        color="white" if grid[y, x] < 0.6 * vmax else "black", fontsize=8, fontweight="bold" if is_best else None)
    baseline = summary.get("baseline_score")
    fig.suptitle(f"{summary['benchmark']} {summary['metric']}, n={summary['num_validation_samples']}"
                 + (f", no fusion: {baseline:.3f}" if baseline is not None else ""), fontsize=10)
    fig.tight_layout()
    fig.colorbar(image, ax=list(axes.flat), shrink=0.8, label=summary["metric"])  # one scale, right of every panel
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _update_json(path, updates, create=False):
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    elif create:
        data = {}
    else:
        raise FileNotFoundError(f"{path} does not exist.")
    data.update(updates)
    write_json(path, data)
    return path


def write_fusion_setting(model_dir, setting, target="both"):
    """Writes `fusion_alpha`, `fusion_beta`, `fusion_layers` (and `fusion_alignment`, when the setting names one) into
    a saved model's `config.json` (the defaults fused generation uses) and/or `generation_config.json`. Returns the
    files written."""
    if target not in ("config", "generation_config", "both"):
        raise ValueError(f"target must be 'config', 'generation_config' or 'both', got {target!r}.")
    config_path = os.path.join(model_dir, "config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    num_layers = (config.get("text_config") or {}).get("num_hidden_layers") or config.get("num_hidden_layers")
    updates = fusion_setting(setting["fusion_alpha"], setting["fusion_beta"], setting["fusion_layers"], num_layers,
                             setting.get("fusion_alignment"))
    written = []
    if target in ("config", "both"):
        written.append(_update_json(config_path, updates))
    if target in ("generation_config", "both"):
        # a file marked `_from_model_config` (what save_pretrained writes for a model without generation settings)
        # is rebuilt from config.json on load, which drops the fusion keys: the file now holds settings of its own
        written.append(_update_json(os.path.join(model_dir, "generation_config.json"),
                                    dict(updates, _from_model_config=False), create=True))
    return written


def apply_fusion_setting(model, setting):
    """Sets the fusion defaults of a loaded model (config and generation config) to a sweep's best setting (its
    alignment too, when it names one)."""
    updates = fusion_setting(setting["fusion_alpha"], setting["fusion_beta"], setting["fusion_layers"], num_text_layers(model),
                             setting.get("fusion_alignment"))
    for target in (model.config, getattr(model, "generation_config", None)):
        if target is not None:
            for name, value in updates.items():
                setattr(target, name, value)
    return model


__all__ = ["SweepConfig", "apply_fusion_setting", "plot_heatmap", "run_fusion_sweep", "select_validation", "write_fusion_setting"]
