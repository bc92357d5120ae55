"""Publishing ViFT models to the Hugging Face Hub (`python -m hub.push_model`).

The steps, each of which stops with a clear error before anything is uploaded:
1. check the repo id and the checkpoint folder (config with `auto_map`, safetensors weights, remote-code files and
   their relative imports, processor with chat template, tokenizer);
2. plan the files: the checkpoint's model, code and processor files, a generated `generation_config.json` carrying
   the fusion defaults, and a generated model card `README.md` (YAML metadata and a usage snippet); anything else
   in the folder (optimizer states, logs, ...) is listed as left out;
3. lay the planned files out in a folder exactly as they will be in the repository;
4. prove, in a fresh Python process that cannot import this package, that the folder loads with
   `trust_remote_code=True` and generates (plainly and with fusion); refuse to upload otherwise;
5. upload through `huggingface_hub`: `create_repo`, then one `create_commit` (large folders: `upload_large_folder`
   where the installed huggingface_hub has it, else `upload_folder`, which splits large uploads itself).

The token is handed to `HfApi` and never printed or logged. Not part of the remote-code bundle.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

from ..remote_code.configuration_vift import fusion_setting
from .fresh_process import run_python_without_vift
from .upload import PlannedFile, PublishError, check_repo_id, format_plan, materialize, read_json, upload_to_hub


PAPER = "https://arxiv.org/abs/2502.11427"
DEFAULT_TAGS = ("vift", "vision-language", "multimodal", "ability-fused-inference")

# Files of a checkpoint folder that belong in a model repository (the remote-code files are added by name).
_MODEL_FILE_PATTERNS = (
    r"config\.json",
    r"model(-\d{5}-of-\d{5})?\.safetensors",
    r"model\.safetensors\.index\.json",
    r"processor_config\.json",
    r"preprocessor_config\.json",
    r"tokenizer(_config)?\.json",
    r"tokenizer\.model",
    r"special_tokens_map\.json",
    r"added_tokens\.json",
    r"vocab\.(json|txt)",
    r"merges\.txt",
    r"chat_template\.(jinja|json)",
    r"additional_chat_templates/[^/]+\.jinja",
)
# What remote code may import: users of `trust_remote_code` have transformers, torch and their dependencies.
REMOTE_CODE_PACKAGES = ("torch", "transformers", "huggingface_hub", "safetensors", "tokenizers", "numpy", "PIL")
# Files that are generated rather than copied.
_GENERATED = ("README.md", "generation_config.json")


# --------------------------------------------------------------------------------------------------- checkpoint


def _relative_imports(path):
    with open(path, encoding="utf-8") as f:
        source = f.read()
    return set(re.findall(r"^\s*from\s+\.(\w+)\s+import", source, flags=re.MULTILINE))


def remote_code_files(folder, auto_maps):
    """The `.py` files named by `auto_maps` and, recursively, their single-dot relative imports. Raises
    `PublishError` naming the missing ones."""
    wanted = set()
    for auto_map in auto_maps:
        for reference in auto_map.values():
            for ref in reference if isinstance(reference, (list, tuple)) else [reference]:
                if ref and "--" not in ref:
                    wanted.add(ref.split(".")[0] + ".py")
    found, missing, queue = set(), set(), sorted(wanted)
    while queue:
        name = queue.pop()
        if name in found or name in missing:
            continue
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            missing.add(name)
            continue
        found.add(name)
        queue.extend(f"{module}.py" for module in _relative_imports(path))
    if missing:
        raise PublishError(
            f"The remote-code file(s) {sorted(missing)} are missing from {folder!r}: config.json / "
            f"processor_config.json refer to them (auto_map) or other code files import them. Re-save the model and processor with the vift "
            f"package imported (model.save_pretrained / processor.save_pretrained copy them)."
        )
    return sorted(found)


def check_remote_code_imports(folder, files):
    """Raises `PublishError` when a remote-code file imports a package that users loading the model with
    `trust_remote_code` may not have (anything but the standard library and `REMOTE_CODE_PACKAGES`)."""
    from transformers.dynamic_module_utils import get_imports

    problems = []
    for name in files:
        for module in get_imports(os.path.join(folder, name)):
            if module not in sys.stdlib_module_names and module not in REMOTE_CODE_PACKAGES:
                problems.append(f"{name} imports {module!r}")
    if problems:
        raise PublishError(
            f"The remote code in {folder!r} would not import on users' machines: {'; '.join(problems)}. Remote-code "
            f"files may import only the standard library, {', '.join(REMOTE_CODE_PACKAGES)} and each other (with "
            f"single-dot relative imports)."
        )


def check_checkpoint(folder):
    """Checks that `folder` is a complete ViFT checkpoint and returns `(config_dict, file_names)`: the names (relative
    paths) of the files to publish from it. Raises `PublishError` listing what is missing."""
    if not os.path.isdir(folder):
        raise PublishError(f"The checkpoint folder {folder!r} does not exist.")
    config = read_json(os.path.join(folder, "config.json"), "The model config (config.json)")
    if config.get("model_type") != "vift":
        raise PublishError(
            f"{folder}/config.json has model_type {config.get('model_type')!r}, not 'vift'. Convert LLaVA/Bunny "
            f"checkpoints first with `python -m hub.convert_llava`."
        )
    auto_map = config.get("auto_map") or {}
    needed = {"AutoConfig", "AutoModel"}
    if not needed <= set(auto_map):
        raise PublishError(
            f"{folder}/config.json has no auto_map for {sorted(needed - set(auto_map))}: users could not load it with "
            f"trust_remote_code. Re-save it with `import modeling_vift` done first (save_pretrained writes the "
            f"auto_map)."
        )
    problems = []
    names = _list_files(folder)
    safetensors = [n for n in names if re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors", n)]
    if "model.safetensors.index.json" in names:
        index = read_json(os.path.join(folder, "model.safetensors.index.json"), "The weights index")
        shards = sorted(set((index.get("weight_map") or {}).values()))
        absent = [s for s in shards if s not in names]
        if not shards or absent:
            problems.append(f"weight shards listed in model.safetensors.index.json are missing: {absent[:5] or 'all'}")
    elif "model.safetensors" not in safetensors:
        bins = [n for n in names if n.endswith(".bin") and n.startswith("pytorch_model")]
        problems.append(
            "no safetensors weights (model.safetensors or model.safetensors.index.json + shards)"
            + (" — the folder has PyTorch .bin weights: re-save with model.save_pretrained(...)" if bins else "")
        )
    processor_path = os.path.join(folder, "processor_config.json")
    processor = read_json(processor_path, "The processor config (processor_config.json)") if os.path.exists(processor_path) else None
    if processor is None:
        problems.append("processor_config.json (save the processor with processor.save_pretrained(folder))")
    if not {"tokenizer_config.json"} <= set(names) or not ({"tokenizer.json", "tokenizer.model", "vocab.json"} & set(names)):
        problems.append("tokenizer files (tokenizer_config.json and tokenizer.json / tokenizer.model / vocab.json)")
    has_template = "chat_template.jinja" in names or "chat_template.json" in names or (processor or {}).get("chat_template")
    if not has_template:
        problems.append("a chat template (chat_template.jinja; ViFTProcessor.save_pretrained writes it)")
    if problems:
        raise PublishError(f"The checkpoint {folder!r} is incomplete; missing: " + "; ".join(problems) + ".")
    code = remote_code_files(folder, [auto_map, (processor or {}).get("auto_map") or {}])
    check_remote_code_imports(folder, code)
    keep = [n for n in names if any(re.fullmatch(p, n) for p in _MODEL_FILE_PATTERNS)]
    return config, sorted(set(keep) | set(code))


def _list_files(folder):
    names = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        for name in files:
            names.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
    return sorted(names)


# --------------------------------------------------------------------------------------------------- generated files


def build_generation_config(config, existing=None, tokenizer=None, fusion_by_default=False):
    """A `GenerationConfig` carrying the fusion defaults (`fusion_alpha`, `fusion_beta`, `fusion_layers`) of the model
    config (values already in `existing` win), with bos/eos/pad ids from the text config or the tokenizer."""
    from transformers import GenerationConfig

    bookkeeping = ("transformers_version", "_from_model_config")
    existing = {k: v for k, v in dict(existing or {}).items() if k not in bookkeeping}
    generation = GenerationConfig(**existing)
    text_config = config["text_config"] if isinstance(config, dict) else config.text_config.to_dict()
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(generation, attr, None) is None:
            value = text_config.get(attr)
            if value is None and tokenizer is not None:
                value = getattr(tokenizer, attr, None)
            if value is not None:
                setattr(generation, attr, value)
    get = (lambda k: config[k]) if isinstance(config, dict) else (lambda k: getattr(config, k))
    defaults = fusion_setting(get("fusion_alpha"), get("fusion_beta"), get("fusion_layers"), text_config.get("num_hidden_layers"))
    for name, value in defaults.items():
        if getattr(generation, name, None) is None:
            setattr(generation, name, value)
    if fusion_by_default:
        generation.fusion = True
    return generation


def _base_models_from_config(config):
    found = []
    for key in ("text_config", "vision_config"):
        name = (config.get(key) or {}).get("_name_or_path") or ""
        if _is_hub_id(name):
            found.append(name)
    return found


def usage_snippet(repo_id, image_size):
    return textwrap.dedent(
        f"""\
        from PIL import Image
        from transformers import AutoModel, AutoProcessor

        model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True, dtype="auto")
        processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)

        image = Image.new("RGB", ({image_size}, {image_size}), (30, 144, 255))  # or Image.open("photo.jpg")
        messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "Describe the image."}}]}}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        # return_text_only=True also returns the prompt without the image, used by fused generation.
        inputs = processor(images=[image], text=prompt, return_tensors="pt", return_text_only=True).to(model.device)
        prompt_length = inputs["input_ids"].shape[1]

        # Plain generation.
        output = model.generate(**inputs, max_new_tokens=64, do_sample=False)
        print(processor.decode(output[0, prompt_length:], skip_special_tokens=True))

        # ViFT's ability-fused generation (defaults for alpha, beta and the layers come from generation_config.json).
        output = model.generate(**inputs, fusion=True, max_new_tokens=64, do_sample=False)
        print(processor.decode(output[0, prompt_length:], skip_special_tokens=True))
        """
    )


def parts_table(config, generation=None, base_models=None):
    """The model's parts as a Markdown table (from its config dict; fusion defaults from `generation` first)."""
    text, vision = config["text_config"], config["vision_config"]
    generation = generation or {}
    alpha = generation.get("fusion_alpha", config.get("fusion_alpha"))
    beta = generation.get("fusion_beta", config.get("fusion_beta"))
    start, end = generation.get("fusion_layers", config.get("fusion_layers"))
    rows = [
        "| part | |",
        "|---|---|",
        f"| vision tower | `{vision.get('model_type')}`, {vision.get('image_size')} px images, patch "
        f"{vision.get('patch_size')}, features of hidden layer {config.get('vision_feature_layer')}, "
        f"{config.get('image_seq_length')} tokens per image |",
        f"| projector | {config.get('projector_depth')} linear layer(s), `{config.get('projector_hidden_act')}` |",
        f"| language model | `{text.get('model_type')}`, {text.get('num_hidden_layers')} layers, hidden size "
        f"{text.get('hidden_size')} |",
    ]
    if base_models is not None:
        rows.append(f"| base models | {', '.join(f'[{b}](https://huggingface.co/{b})' for b in base_models)} |")
    rows.append(f"| fusion defaults | alpha {alpha}, beta {beta}, layers [{start}, {end}) |")
    if config.get("vpgc_layer") is not None:
        rows.append(f"| VPG-C | at decoder layer {config['vpgc_layer']} |")
    return "\n".join(rows)


def render_model_card(config, repo_id, base_models, license="apache-2.0", datasets=(), tags=(), generation=None):
    """The model card: YAML metadata, what the model is, the usage snippet, the fusion defaults, data and citation.

    huggingface_hub's `ModelCardData` writes the metadata; the body is ours because its values (towers, fusion
    defaults, usage) come from this model's config, which no library card template knows."""
    from huggingface_hub import ModelCardData

    metadata = ModelCardData(
        license=license,
        base_model=list(base_models),
        pipeline_tag="image-text-to-text",
        library_name="transformers",
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *tags])),
        datasets=list(datasets) or None,
    )
    vision = config["vision_config"]
    name = repo_id.split("/")[1]
    data_lines = "\n".join(f"- [{d}](https://huggingface.co/datasets/{d})" for d in datasets) or "- not stated"
    body = f"""
# {name}

A vision-language model in the layout of [ViFT]({PAPER}) (visual instruction-free fine-tuning): a vision tower, an
MLP projector and a decoder language model, trained on image captions and text-only instructions. Its `generate`
also offers ViFT's **ability-fused inference**: the question runs once as text only and once with the image, and
the hidden states of the text-only run are fused into those of the multimodal run during the prefill.

{parts_table(config, generation, base_models)}

The model code ships with the weights, so no package needs installing: load it with `trust_remote_code=True`
(transformers >= 5).

## Security: remote code

`trust_remote_code=True` runs this repository's Python files on your machine. Pin the exact revision you reviewed,
so that a later push cannot change the code you run: `from_pretrained("{repo_id}", trust_remote_code=True,
revision="<commit hash>")` (the hash is on the repository's "Files and versions" page). What the code does: it
builds the model from transformers' own Auto classes (the vision tower and the language model), defines the projector,
the processor and fused generation, and imports only torch, transformers and its sibling files. What it does not do:
it downloads nothing besides what `from_pretrained` fetches, opens no network connection, writes no files and runs no
subprocess.

## Usage

```python
{usage_snippet(repo_id, vision.get('image_size') or 384).rstrip()}
```

`fusion_alpha`, `fusion_beta` and `fusion_layers=(start, end)` can be passed to `generate` to override the defaults
above. Fused generation steers, at the input of each decoder layer in `[start, end)` and during the prefill only,
the last n positions of the multimodal prompt by `alpha * H(text-only) - beta * H(multimodal)` (n = length of the
text-only prompt); decoding steps see the change through the KV cache.

## Training data

{data_lines}

## Citation

```bibtex
@article{{liu2025vift,
  title   = {{Do we Really Need Visual Instructions? Towards Visual Instruction-Free Fine-tuning for Large Vision-Language Models}},
  author  = {{Liu, Zikang and Zhou, Kun and Zhao, Wayne Xin and Gao, Dawei and Li, Yaliang and Wen, Ji-Rong}},
  journal = {{arXiv preprint arXiv:2502.11427}},
  year    = {{2025}}
}}
```
"""
    return f"---\n{metadata.to_yaml()}\n---\n{body}"


def render_training_card(config, folder, stage, started_from, vision_tower=None, step=None, adapter=False):
    """The card of a folder a training recipe writes: the final model (`step=None`), a checkpoint, or a LoRA
    checkpoint (`adapter=True`: adapters on the language model plus the full projector). It says what the folder
    holds, where the run started and how to load it; `hub.push_model` replaces it with the publishing card."""
    from huggingface_hub import ModelCardData

    hub_ids = [name for name in (started_from, vision_tower) if name and _is_hub_id(name)]
    metadata = ModelCardData(
        base_model=hub_ids or None,
        pipeline_tag="image-text-to-text",
        library_name="peft" if adapter else "transformers",
        tags=[*DEFAULT_TAGS, f"vift-stage-{stage}"],
    )
    when = "at the end of training" if step is None else f"at step {step}"
    what = "the final model" if step is None else f"the checkpoint {when}"
    if adapter:
        what = (f"LoRA adapters on the language model, with the fully trained projector, {when} (the recipes' "
                f"output folder holds the merged model)")
    origin = f"`{started_from}`" if not vision_tower else f"the vision tower `{vision_tower}` and the language model " \
        f"`{started_from}` (fresh projector)"
    if adapter and vision_tower:
        load = ("The adapters apply to the model the run built from the two towers; load the run's merged output "
                "folder instead.")
    elif adapter:
        load = textwrap.dedent(f"""\
            ```python
            from peft import PeftModel
            from transformers import AutoModelForImageTextToText

            base = AutoModelForImageTextToText.from_pretrained("{started_from}", trust_remote_code=True)
            model = PeftModel.from_pretrained(base, "{folder}")
            ```""")
    else:
        load = textwrap.dedent(f"""\
            ```python
            from transformers import AutoModelForImageTextToText, AutoProcessor

            model = AutoModelForImageTextToText.from_pretrained("{folder}", trust_remote_code=True)
            processor = AutoProcessor.from_pretrained("{folder}", trust_remote_code=True)
            ```""")
    publish = (f"`python -m hub.push_model --checkpoint {folder} --repo_id <org>/<name> --dry_run` checks the folder "
               f"and shows the model card written for the Hub (base models, usage, fusion defaults, remote-code "
               f"security note) in place of this one.")
    if adapter:
        publish = "Publish the merged model of the run's output folder (`hub.push_model` takes whole models only)."
    body = f"""
# {os.path.basename(os.path.normpath(folder))}

ViFT training output ([ViFT]({PAPER}), stage {stage}): {what}, trained from {origin}.

{parts_table(config)}

## Loading

{load}

## Publishing

{publish}
"""
    return f"---\n{metadata.to_yaml()}\n---\n{body}"


def _is_hub_id(name):
    """Whether `name` reads as a Hub repo id rather than a local path."""
    return name.count("/") == 1 and not os.path.exists(name) and not name.startswith((".", "/", "~"))


# --------------------------------------------------------------------------------------------------- planning


def plan_model_upload(checkpoint, repo_id, base_models=None, license="apache-2.0", datasets=(), tags=(),
                      fusion_by_default=False):
    """Returns `(files, card_text, left_out)` for publishing `checkpoint` as `repo_id`; raises `PublishError`."""
    check_repo_id(repo_id, "model")
    for dataset in datasets:
        check_repo_id(dataset, "dataset")
    config, names = check_checkpoint(checkpoint)
    base_models = list(base_models or _base_models_from_config(config))
    if not base_models:
        raise PublishError(
            "The model card needs its base models (the language model and the vision tower) and the config does not "
            "name them: pass --base_model with both, e.g. --base_model Qwen/Qwen2.5-7B-Instruct "
            "google/siglip-so400m-patch14-384."
        )
    for base in base_models:
        check_repo_id(base, "model")
    existing_path = os.path.join(checkpoint, "generation_config.json")
    existing = read_json(existing_path, "generation_config.json") if os.path.exists(existing_path) else None
    generation = build_generation_config(config, existing, fusion_by_default=fusion_by_default).to_diff_dict()
    generation_bytes = (json.dumps(generation, indent=2, sort_keys=True) + "\n").encode()
    card = render_model_card(config, repo_id, base_models, license, datasets, tags, generation)

    files = [
        PlannedFile(n, os.path.getsize(os.path.join(checkpoint, n)), "checkpoint", source=os.path.join(checkpoint, n))
        for n in names if n not in _GENERATED
    ]
    files.append(PlannedFile("generation_config.json", len(generation_bytes), "generated: fusion defaults",
                             content=generation_bytes))
    files.append(PlannedFile("README.md", len(card.encode()), "generated: model card", content=card.encode()))
    left_out = sorted(set(_list_files(checkpoint)) - set(names) - set(_GENERATED))
    return files, card, left_out


# --------------------------------------------------------------------------------------------------- verification

_VERIFY_SCRIPT = r"""
import inspect, json, sys

import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

folder = sys.argv[1]
model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype="auto").eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
size = model.config.vision_config.image_size
image = Image.new("RGB", (size, size), (30, 144, 255))
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=[image], text=prompt, return_tensors="pt", return_text_only=True)
length = inputs["input_ids"].shape[1]
result = {"model_class": type(model).__module__ + "." + type(model).__name__,
          "processor_class": type(processor).__module__ + "." + type(processor).__name__}
with torch.no_grad():
    plain = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    result["new_tokens"] = int(plain.shape[1] - length)
    if "fusion" in inspect.signature(model.generate).parameters:
        fused = model.generate(**inputs, fusion=True, max_new_tokens=4, do_sample=False)
        result["fused_new_tokens"] = int(fused.shape[1] - length)
print("VIFT_VERIFY_RESULT " + json.dumps(result))
"""


def verify_folder(folder, timeout=1800):
    """Loads `folder` with `trust_remote_code=True` in a fresh Python process (offline, with the installed vift package
    hidden) and generates with it, plainly and fused. Returns the result dict; raises `PublishError` if it fails."""
    with tempfile.TemporaryDirectory() as cwd:
        try:
            done = run_python_without_vift(_VERIFY_SCRIPT, cwd, args=[os.path.abspath(folder)], timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PublishError(
                f"Loading and generating with {folder!r} took longer than {timeout} s; not uploading."
            ) from None
    lines = [l for l in done.stdout.splitlines() if l.startswith("VIFT_VERIFY_RESULT ")]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise PublishError(
            f"The folder does not load and generate with trust_remote_code=True in a fresh process, so it is not "
            f"uploaded. Fix the error below (often a remote-code file that imports something users do not have, or a "
            f"file missing from the folder):\n{tail}"
        )
    result = json.loads(lines[-1][len("VIFT_VERIFY_RESULT "):])
    if result.get("new_tokens", 0) < 1:
        raise PublishError(f"The folder loads but generated no token ({result}); not uploading.")
    return result


# --------------------------------------------------------------------------------------------------- push


def upload_failure_message(err, repo_id):
    """What went wrong in an upload, and what to do, in words (the folder itself was verified before)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        hint = "log in with `hf auth login` or pass --token with a token that has write access to this namespace"
    elif status == 404:
        hint = "check the namespace of --repo_id (your user name or an organisation you belong to)"
    else:
        hint = "check the network connection (HF_HUB_OFFLINE must not be set) and run the command again"
    return (f"The upload to {repo_id} failed ({type(err).__name__}{f', HTTP {status}' if status else ''}: {text}). "
            f"The folder passed the checks and the load test; {hint}.")


def push_model(
    checkpoint,
    repo_id,
    *,
    base_models=None,
    license="apache-2.0",
    datasets=(),
    tags=(),
    private=False,
    revision=None,
    commit_message=None,
    token=None,
    dry_run=False,
    local_dir=None,
    fusion_by_default=False,
    verify_timeout=1800,
    api=None,
    log=print,
):
    """Publishes a ViFT checkpoint folder as `repo_id` (see the module docstring for the steps). With `dry_run` it
    prints the exact file plan and card and uploads nothing; with `local_dir` the repository's files are also laid
    out there. `api` defaults to `HfApi(token=token)`. Returns the upload's result (None for a dry run)."""
    files, card, left_out = plan_model_upload(
        checkpoint, repo_id, base_models, license, datasets, tags, fusion_by_default
    )
    if local_dir and os.path.isdir(local_dir):
        stray = sorted(set(_list_files(local_dir)) - {f.path_in_repo for f in files})
        if stray:
            raise PublishError(
                f"--local_dir {local_dir!r} holds files that are not part of this repository ({stray[:5]}): give an "
                f"empty or new folder, so that it shows exactly what is uploaded."
            )
    log(format_plan(files, repo_id, "model", private, revision, left_out))
    if dry_run:
        log("--- README.md ---\n" + card)
    staging = local_dir or tempfile.mkdtemp(prefix=".vift-publish-", dir=os.path.dirname(os.path.abspath(checkpoint)))
    try:
        materialize(files, staging, link=local_dir is None)
        log("Verifying in a fresh process that the folder loads with trust_remote_code and generates ...")
        result = verify_folder(staging, timeout=verify_timeout)
        log(f"Verified: {result['model_class']} generated {result['new_tokens']} token(s)"
            + (f", fused {result['fused_new_tokens']}" if "fused_new_tokens" in result else "") + ".")
        if dry_run:  # everything but the upload, so that an offline user can check a folder
            log("Dry run: verified, nothing uploaded" + (f"; the repository's files are laid out in {local_dir}." if local_dir else "."))
            return None
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
        message = commit_message or f"Upload ViFT model ({len(files)} files)"
        try:
            outcome = upload_to_hub(api, staging, files, repo_id, "model", private, revision, message)
        except Exception as err:  # network, authentication, permissions: one clear line instead of a traceback
            raise PublishError(upload_failure_message(err, repo_id)) from err
        log(f"Uploaded to https://huggingface.co/{repo_id}" + (f" (revision {revision})" if revision else ""))
        return outcome
    finally:
        if local_dir is None:
            shutil.rmtree(staging, ignore_errors=True)


__all__ = [
    "PublishError",
    "build_generation_config",
    "check_checkpoint",
    "check_repo_id",
    "plan_model_upload",
    "push_model",
    "render_model_card",
    "render_training_card",
    "upload_failure_message",
    "upload_to_hub",
    "usage_snippet",
    "verify_folder",
]
