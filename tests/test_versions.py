"""The supported transformers range: one range in the bundle, setup.py and the locks, and a clear refusal outside it."""

import os
import re

import pytest
import transformers

from modeling_vift.publishing.fresh_process import run_python_without_vift
from modeling_vift.remote_code.configuration_vift import (
    ALLOW_UNTESTED_ENV,
    SUPPORTED_TRANSFORMERS,
    check_transformers_version,
)
from modeling_vift.testing_utils import tiny_vift


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_lock(name):
    pins = {}
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                package, version = line.split("==")
                pins[package.lower()] = version
    return pins


@pytest.mark.parametrize("version", [SUPPORTED_TRANSFORMERS[0], "5.20.1", "5.24.0", "5.24.9+local"])
def test_versions_inside_the_range_load(version):
    check_transformers_version(version)


@pytest.mark.parametrize("version", ["5.16.1", "4.57.6", SUPPORTED_TRANSFORMERS[1], "5.25.0.dev0", "6.0.0"])
def test_versions_outside_the_range_are_refused_naming_both(version, monkeypatch):
    monkeypatch.delenv(ALLOW_UNTESTED_ENV, raising=False)
    with pytest.raises(ImportError) as error:
        check_transformers_version(version)
    message = str(error.value)
    assert f"transformers {version} is installed" in message
    assert f">={SUPPORTED_TRANSFORMERS[0]},<{SUPPORTED_TRANSFORMERS[1]}" in message
    assert ALLOW_UNTESTED_ENV in message


def test_override_turns_the_refusal_into_a_warning(monkeypatch):
    monkeypatch.setenv(ALLOW_UNTESTED_ENV, "1")
    check_transformers_version("6.0.0")  # no error


def test_running_transformers_is_supported():
    check_transformers_version(transformers.__version__)


def test_setup_py_declares_the_bundles_range():
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        setup = f.read()
    declared = re.search(r'"transformers>=([\d.]+),<([\d.]+)"', setup)
    assert declared, "setup.py must pin transformers as >=OLDEST,<FIRST_UNSUPPORTED"
    assert declared.groups() == SUPPORTED_TRANSFORMERS


def test_locks_pin_the_oldest_and_a_supported_newest_release():
    oldest, first_unsupported = SUPPORTED_TRANSFORMERS
    assert read_lock("requirements-lock-oldest.txt")["transformers"] == oldest
    locked = read_lock("requirements-lock.txt")
    check_transformers_version(locked["transformers"])
    for package in ("torch", "trl", "peft", "accelerate", "datasets", "huggingface-hub", "tokenizers"):
        assert package in locked, f"requirements-lock.txt does not pin {package}"


REFUSAL_SCRIPT = r'''
import sys
import transformers
transformers.__version__ = "5.99.0"  # what a future release would report
from transformers import AutoConfig, AutoModelForImageTextToText
try:
    AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True)
except ImportError as error:
    print("REFUSED:", error)
    raise SystemExit(0)
raise SystemExit("loaded under an unsupported transformers")
'''


def test_remote_code_under_an_unsupported_transformers_fails_with_one_clear_error(tmp_path):
    model, processor = tiny_vift(seed=0)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    env_before = os.environ.pop(ALLOW_UNTESTED_ENV, None)
    try:
        proc = run_python_without_vift(REFUSAL_SCRIPT, cwd=str(tmp_path), args=[folder])
    finally:
        if env_before is not None:
            os.environ[ALLOW_UNTESTED_ENV] = env_before
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "REFUSED:" in proc.stdout
    assert "transformers 5.99.0 is installed" in proc.stdout
    assert f">={SUPPORTED_TRANSFORMERS[0]},<{SUPPORTED_TRANSFORMERS[1]}" in proc.stdout
