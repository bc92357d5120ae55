"""Throughput of the dataset conversion behind `python -m hub.push_dataset` (issue 5).

    python benchmarks/dataset_conversion.py                        # 20,000 caption records + 50,000 text records
    python benchmarks/dataset_conversion.py --records 100000 --num-proc 1 2 4 --work-dir /data/bench

Generates, once, a synthetic set in the authors' layout under --work-dir: an image folder of small JPEGs (each
record its own image, `--image-size` px, textured so they compress like photos rather than flat colour), a
caption JSON list whose records point at them, and a JSON Lines file of text-only instructions. It then converts
both (pass 1: check every record; pass 2: read and decode every image, build the TRL messages, write sharded
Parquet) from scratch for each `--num-proc`, and prints records/s and input MB/s (JSON + image bytes read), plus the
Parquet written. Each setting runs `--repeats` times; the table shows the median wall time, and the CPU seconds
(this process and its workers, user + system) of that run: on a shared machine the wall time depends on the load,
the CPU time much less.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

import numpy as np


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_vift.publishing.dataset import convert_dataset  # noqa: E402


def generate(work_dir, records, text_records, image_size, seed=0):
    """Writes (once) the synthetic authors' data; returns (sources, image folder, input bytes per source)."""
    from PIL import Image

    images = os.path.join(work_dir, "images")
    captions = os.path.join(work_dir, "second_stage_captions.json")
    text = os.path.join(work_dir, "text_data_magpie.json")
    marker = os.path.join(work_dir, f"done-{records}-{text_records}-{image_size}")
    if not os.path.exists(marker):
        rng = np.random.default_rng(seed)
        os.makedirs(images, exist_ok=True)
        base = np.linspace(0, 255, image_size, dtype=np.float32)
        rows = []
        for i in range(records):
            folder = f"part{i // 1000:03d}"
            os.makedirs(os.path.join(images, folder), exist_ok=True)
            colour = rng.integers(0, 256, 3)
            noise = rng.normal(0, 18, (image_size, image_size, 3))
            pixels = (base[None, :, None] * 0.5 + base[:, None, None] * 0.3 + colour * 0.4 + noise).clip(0, 255)
            relative = f"{folder}/{i:07d}.jpg"
            Image.fromarray(pixels.astype(np.uint8), "RGB").save(os.path.join(images, relative), quality=90)
            words = " ".join(rng.choice(["a", "red", "blue", "shape", "on", "the", "table", "near", "window"], 40))
            rows.append({"id": f"cap-{i}", "image": relative, "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image in detail."},
                {"from": "gpt", "value": words},
            ]})
        with open(captions, "w") as f:
            json.dump(rows, f)
        with open(text, "w") as f:
            for i in range(text_records):
                answer = " ".join(rng.choice(["the", "answer", "is", "because", "so", "we", "get", "x", "="], 120))
                f.write(json.dumps({"id": f"txt-{i}", "conversations": [
                    {"from": "human", "value": f"Question {i}: solve the problem step by step."},
                    {"from": "gpt", "value": answer},
                ]}) + "\n")
        open(marker, "w").close()
    image_bytes = sum(e.stat().st_size for d in os.scandir(images) for e in os.scandir(d.path))
    sizes = {
        "second_stage_captions": os.path.getsize(captions) + image_bytes,
        "text_magpie": os.path.getsize(text),
    }
    return {"second_stage_captions": captions, "text_magpie": text}, images, sizes


def cpu_seconds():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20000, help="caption records, each with its own image")
    parser.add_argument("--text-records", type=int, default=50000, help="text-only records")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "vift-dataset-conversion-bench"))
    args = parser.parse_args()

    os.makedirs(args.work_dir, exist_ok=True)
    started = time.perf_counter()
    sources, images, sizes = generate(args.work_dir, args.records, args.text_records, args.image_size)
    print(f"data: {args.records} caption records ({sizes['second_stage_captions'] / 1e6:.1f} MB of JSON + images), "
          f"{args.text_records} text records ({sizes['text_magpie'] / 1e6:.1f} MB); ready in "
          f"{time.perf_counter() - started:.0f} s")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), Python "
          f"{platform.python_version()}, load average at start {os.getloadavg()[0]:.1f}")
    print()
    print(f"{'config':<24}{'num_proc':>9}{'records':>10}{'seconds':>9}{'records/s':>11}{'input MB/s':>12}"
          f"{'CPU s':>8}{'records/CPU s':>15}{'Parquet MB':>12}{'skipped':>9}")
    for num_proc in args.num_proc:
        for config, path in sources.items():
            runs, report = [], None
            for _ in range(args.repeats):
                out = os.path.join(args.work_dir, "out")
                shutil.rmtree(out, ignore_errors=True)
                cpu0, t0 = cpu_seconds(), time.perf_counter()
                report = convert_dataset({config: path}, images, out, num_proc=num_proc, progress=False,
                                         log=lambda *a: None)[config]
                runs.append((time.perf_counter() - t0, cpu_seconds() - cpu0))
            seconds, cpu = sorted(runs)[len(runs) // 2]
            print(f"{config:<24}{num_proc:>9}{report.records:>10}{seconds:>9.1f}{report.records / seconds:>11.0f}"
                  f"{sizes[config] / 1e6 / seconds:>12.1f}{cpu:>8.1f}{report.records / cpu:>15.0f}"
                  f"{report.file_bytes / 1e6:>12.1f}{report.num_skipped:>9}")


if __name__ == "__main__":
    main()
