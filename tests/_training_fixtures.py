"""Helpers of the training tests: tiny assets built in code in temporary folders, subprocess runners, and a loader
that opens a checkpoint through `trust_remote_code` only (the `modeling_vift` package made unimportable)."""

import json
import os
import subprocess
import sys

import pytest


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """Tiny towers, a tiny ViFT checkpoint, images, LLaVA JSON files, a TRL-format parquet dataset, mixtures."""
    from recipes.make_tiny_assets import make_tiny_assets

    return make_tiny_assets(str(tmp_path_factory.mktemp("vift-tiny")))


def subprocess_env():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", PYTHONPATH=REPO,
               TRANSFORMERS_NO_ADVISORY_WARNINGS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    return env


def run_command(args, timeout=300, cwd=REPO):
    """Runs a command from the repository root; fails the test with its output when it exits non-zero."""
    result = subprocess.run(args, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, args))} exited with {result.returncode}:\n{output[-6000:]}"
    return output


def run_recipe(module, config, *overrides, timeout=300):
    return run_command([sys.executable, "-m", module, "--config", config, *map(str, overrides)], timeout=timeout)


def train_losses(output_dir):
    with open(os.path.join(output_dir, "trainer_state.json")) as f:
        history = json.load(f)["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


LOAD_WITH_REMOTE_CODE = r'''
import sys, math, torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from PIL import Image
for path in sys.argv[1:]:
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]}]
    text = processor.apply_chat_template(messages)
    inputs = processor(images=[Image.new("RGB", (40, 30), (200, 10, 10))], text=text, return_tensors="pt")
    with torch.no_grad():
        loss = model(**inputs, labels=inputs["input_ids"]).loss
    assert math.isfinite(loss.item()), loss
    print("LOADED", path, type(model).__name__, round(loss.item(), 4))
'''


def load_with_remote_code(checkpoints, workdir):
    """Loads each checkpoint in a fresh interpreter where `modeling_vift` cannot be imported (remote code only) and
    runs one forward on an image prompt."""
    from modeling_vift.publishing.fresh_process import run_python_without_vift

    os.makedirs(workdir, exist_ok=True)
    result = run_python_without_vift(LOAD_WITH_REMOTE_CODE, str(workdir), args=list(map(str, checkpoints)))
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert result.stdout.count("LOADED") == len(checkpoints), result.stdout
    return result.stdout
