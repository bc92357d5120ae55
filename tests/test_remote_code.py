"""The remote-code bundle: a saved folder loads with `trust_remote_code=True` in a process that cannot import
`modeling_vift`, and behaves exactly like the original."""

import ast
import json
import os
import sys

import pytest
import torch

import modeling_vift
from modeling_vift.publishing.fresh_process import run_python_without_vift
from modeling_vift.testing_utils import random_images, tiny_vift


BUNDLE_DIR = os.path.join(os.path.dirname(modeling_vift.__file__), "remote_code")
REMOTE_ENTRY_FILES = ("configuration_vift.py", "modeling_vift.py", "processing_vift.py")
STDLIB = set(sys.stdlib_module_names)


def relative_imports(filename):
    """Sibling module files imported with single-dot relative imports anywhere in `filename`."""
    with open(os.path.join(BUNDLE_DIR, filename), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            assert node.level == 1 and node.module, f"{filename}: only `from .module import name` travels as remote code"
            found.add(node.module + ".py")
    return found


def remote_code_files():
    """The entry files plus everything they reach through relative imports, transitively."""
    todo, seen = list(REMOTE_ENTRY_FILES), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(relative_imports(name))
    return seen


def absolute_imports(tree):
    """Top-level packages imported outside `if is_..._available():` guards (transformers' own rule for remote code)."""
    import transformers.utils.import_utils as import_utils

    found = set()

    def visit(node):
        if isinstance(node, ast.If):
            names = [getattr(n.func, "id", getattr(n.func, "attr", "")) for n in ast.walk(node.test) if isinstance(n, ast.Call)]
            if any(hasattr(import_utils, name) and name.startswith("is_") for name in names):
                return  # an optional backend, checked at use
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two tiny models (SigLIP+Qwen2, CLIP+Llama) saved with their processors, plus the inputs to compare on."""
    root = tmp_path_factory.mktemp("remote")
    images = random_images(3, seed=1)
    for i, image in enumerate(images):
        image.save(root / f"image{i}.png")
    cases = {}
    for vision, text in (("siglip", "qwen2"), ("clip", "llama")):
        model, processor = tiny_vift(vision, text, seed=3)
        folder = root / f"{vision}-{text}"
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        cases[folder.name] = (folder, model, processor)
    return root, images, cases


def test_remote_code_files_import_only_torch_transformers_and_siblings():
    allowed = {"torch", "transformers"}
    for name in sorted(remote_code_files()):
        with open(os.path.join(BUNDLE_DIR, name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        third_party = absolute_imports(tree) - STDLIB
        assert third_party <= allowed, f"{name} imports {sorted(third_party - allowed)}: remote code may import only {sorted(allowed)}"


def test_bundle_folder_holds_exactly_the_files_that_ship():
    """The remote-code folder holds what is copied next to the weights and nothing else (no __init__.py: it is a
    namespace package, so nothing in it can run on import)."""
    present = {name for name in os.listdir(BUNDLE_DIR) if name != "__pycache__"}
    assert present == remote_code_files()


def test_saved_folder_holds_every_relatively_imported_file(saved):
    _, _, cases = saved
    needed = remote_code_files()
    assert {"configuration_vift.py", "modeling_vift.py", "processing_vift.py"} <= needed
    for folder, _, _ in cases.values():
        present = set(os.listdir(folder))
        assert needed <= present, f"{folder.name} lacks {sorted(needed - present)}"
        for name in needed:  # copied verbatim
            with open(folder / name, encoding="utf-8") as saved_file, open(os.path.join(BUNDLE_DIR, name), encoding="utf-8") as source:
                assert saved_file.read() == source.read()


def test_config_and_processor_auto_maps(saved):
    _, _, cases = saved
    for folder, _, _ in cases.values():
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "vift"
        assert config["auto_map"] == {
            "AutoConfig": "configuration_vift.ViFTConfig",
            "AutoModel": "modeling_vift.ViFTForConditionalGeneration",
            "AutoModelForImageTextToText": "modeling_vift.ViFTForConditionalGeneration",
        }
        processor_config = json.loads((folder / "processor_config.json").read_text())
        assert processor_config["auto_map"] == {"AutoProcessor": "processing_vift.ViFTProcessor"}


CHILD_SCRIPT = r'''
import json, sys
import torch
import transformers
from PIL import Image
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

try:
    import modeling_vift  # noqa: F401
    raise SystemExit("modeling_vift was importable: the test would not prove anything")
except ImportError:
    pass

images = [Image.open(f"image{i}.png") for i in range(3)]
messages = json.load(open("messages.json"))
for folder, out_path in zip(sys.argv[1::2], sys.argv[2::2]):
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    prompts = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[[images[0]], [], images[1:]], text=prompts, return_tensors="pt", padding_side="left",
                       return_text_only=True)
    model_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    result = {"prompts": prompts, "inputs": dict(inputs), "classes": [], "transformers": transformers.__version__}
    for auto in (AutoModel, AutoModelForImageTextToText):
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        result["classes"].append(type(model).__module__ + "." + type(model).__name__)
        with torch.no_grad():
            result[auto.__name__ + "_logits"] = model(**model_inputs).logits
        result[auto.__name__ + "_tokens"] = model.generate(**model_inputs, max_new_tokens=8, do_sample=False)
    result["fused_tokens"] = model.generate(**model_inputs, max_new_tokens=8, do_sample=False, fusion=True,
                                            text_input_ids=inputs["text_input_ids"],
                                            text_attention_mask=inputs["text_attention_mask"])
    # A remote-loaded model saves a folder that loads the same way again.
    resaved = out_path + ".resaved"
    model.save_pretrained(resaved)
    processor.save_pretrained(resaved)
    again = AutoModelForImageTextToText.from_pretrained(resaved, trust_remote_code=True).eval()
    with torch.no_grad():
        result["resaved_logits"] = again(**model_inputs).logits
    result["resaved_auto_map"] = json.load(open(resaved + "/config.json"))["auto_map"]
    torch.save(result, out_path)
'''

MESSAGES = [
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image"}]}],
    [{"role": "user", "content": "how many shapes are there?"}],
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"},
                                  {"type": "text", "text": "which has more shapes?"}]}],
]


def check_fresh_process_loads_and_generates_identically(saved, tmp_path, python=None):
    """Loads each saved folder as remote code in a fresh process (`python`: another environment's interpreter) that
    cannot import `modeling_vift`, and compares prompts, inputs, logits, plain and fused tokens with this process.
    Returns the transformers version the child ran."""
    root, images, cases = saved
    for i in range(3):
        os.link(root / f"image{i}.png", tmp_path / f"image{i}.png")
    (tmp_path / "messages.json").write_text(json.dumps(MESSAGES))
    args = []
    for name, (folder, _, _) in cases.items():
        args += [folder, tmp_path / f"{name}.pt"]
    proc = run_python_without_vift(CHILD_SCRIPT, cwd=str(tmp_path), args=args, python=python)
    assert proc.returncode == 0, f"child process failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    versions = set()
    for name, (folder, model, processor) in cases.items():
        result = torch.load(tmp_path / f"{name}.pt", weights_only=False)
        versions.add(result["transformers"])
        assert all(cls.startswith("transformers_modules.") for cls in result["classes"]), result["classes"]
        prompts = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
        assert result["prompts"] == prompts
        inputs = processor(images=[[images[0]], [], images[1:]], text=prompts, return_tensors="pt",
                           padding_side="left", return_text_only=True)
        assert set(result["inputs"]) == set(inputs)
        for key, value in inputs.items():
            torch.testing.assert_close(result["inputs"][key], value, rtol=0, atol=0)

        model_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")}
        with torch.no_grad():
            logits = model(**model_inputs).logits
        tokens = model.generate(**model_inputs, max_new_tokens=8, do_sample=False)
        fused = model.generate(**model_inputs, max_new_tokens=8, do_sample=False, fusion=True,
                               text_input_ids=inputs["text_input_ids"], text_attention_mask=inputs["text_attention_mask"])
        for auto in ("AutoModel", "AutoModelForImageTextToText"):
            torch.testing.assert_close(result[f"{auto}_logits"], logits, rtol=0, atol=1e-5)
            assert torch.equal(result[f"{auto}_tokens"], tokens)
        assert torch.equal(result["fused_tokens"], fused)
        torch.testing.assert_close(result["resaved_logits"], logits, rtol=0, atol=1e-5)
        assert set(result["resaved_auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}
    return versions.pop()


def test_fresh_process_without_package_loads_and_generates_identically(saved, tmp_path):
    check_fresh_process_loads_and_generates_identically(saved, tmp_path)


CROSS_PYTHON_ENV = "VIFT_CROSS_PYTHON"


@pytest.mark.skipif(
    not os.environ.get(CROSS_PYTHON_ENV),
    reason=f"{CROSS_PYTHON_ENV} names no other environment's python (`make compat` sets it to one with another "
    f"transformers and without vift)",
)
def test_folder_saved_here_loads_identically_under_another_transformers(saved, tmp_path):
    """The cross-version round trip of CI's matrix: saved under this environment's transformers, loaded as remote
    code by an environment with another transformers and no vift installed; same prompts, ids, logits and tokens."""
    import transformers

    python = os.environ[CROSS_PYTHON_ENV]
    child_version = check_fresh_process_loads_and_generates_identically(saved, tmp_path, python=python)
    print(f"saved under transformers {transformers.__version__}, loaded under {child_version} ({python})")
    assert child_version != transformers.__version__, (
        f"{CROSS_PYTHON_ENV}={python} runs the same transformers ({child_version}): the round trip proves nothing."
    )
