"""Convert existing vision-language checkpoints into ViFT folders (`python -m hub.convert_llava`).

Two source layouts are understood:

- **Bunny** (the authors' training code, a fork of BAAI-DCAI/Bunny): a causal-LM folder whose `config.json` is the
  language model's config plus `mm_vision_tower`, `mm_projector_type`, `mm_hidden_size`, `image_aspect_ratio`, ...
  (`model_type` `bunny-qwen2`, `bunny-llama`, and `bunny-qwen`, the older name of Bunny's Qwen class). Its state dict holds the language model
  (`model.embed_tokens.*`, `model.layers.*`, `model.norm.*`, `lm_head.*`), the projector `model.mm_projector.*`
  (an `nn.Sequential` of Linear, GELU, Linear, ... so the linear layers sit at even indices) and, when the vision
  tower was trained (`unfreeze_vision_tower`), the tower under `model.vision_tower.vision_tower.*`. As Bunny's loader
  does, the stored tower is used only when `unfreeze_vision_tower` is true; otherwise the tower comes from
  `mm_vision_tower` (or `--vision_tower`). Bunny reads features from hidden layer -2, drops the CLS token of CLIP
  towers and keeps every SigLIP token; `image_aspect_ratio: pad` pads images to square. A stage-1 output
  (`mm_projector.bin` alone) takes the language model from `--language_model`. The loader also resizes the
  embeddings to `len(tokenizer)`: the converted model has exactly those rows plus the image token's. The prompt is
  Bunny's conversation mode (`bunny_prompts`), chosen from `model_type` or `--conv_mode`; the processor tokenizes as
  `tokenizer_image_token` does (the tokenizer's own BOS) and converts images with `Image.convert("RGB")`.
- **llava-hf** (`LlavaForConditionalGeneration`), in the transformers 5 key layout (`model.language_model.*`,
  `model.vision_tower.*`, `model.multi_modal_projector.*`, `lm_head.*`) or the older one (`language_model.model.*`,
  `language_model.lm_head.*`, `vision_tower.*`, `multi_modal_projector.*`). The processor tokenizes as
  `LlavaProcessor` does (`add_special_tokens=True`: a Llama tokenizer's BOS) and lets the image processor convert
  images to RGB, as `LlavaProcessor` does.

Weights are streamed tensor by tensor from the source files into new safetensors shards, so memory stays near one
output shard. Every check (files, config fields, tensor names and shapes) runs before anything is written, and the
output folder appears in one rename at the end: an interrupted conversion leaves no half-written ViFT folder.

Not part of the remote-code bundle.
"""

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field

import torch

from ..publishing.upload import read_json
from ..remote_code.configuration_vift import (
    ViFTConfig,
    add_image_token,
    compute_image_seq_length,
    tower_has_cls_token,
    vision_tower_config,
)
from ..remote_code.modeling_vift import ViFTForConditionalGeneration, add_auto_model_entry
from ..remote_code.processing_vift import ViFTProcessor, build_chat_template
from .bunny_prompts import BUNNY_MODEL_TYPES, bunny_chat_template


class ConversionError(ValueError):
    """A source checkpoint that cannot be converted; the message says what is wrong and what to do."""


SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"

# Bunny's language-model families that map onto a transformers model type.
BUNNY_TEXT_MODEL_TYPES = {k: text for k, (text, _) in BUNNY_MODEL_TYPES.items() if text is not None}
_BUNNY_ONLY_KEYS = (
    "mm_vision_tower", "mm_projector_type", "mm_hidden_size", "mm_projector_lr", "use_mm_proj", "image_aspect_ratio",
    "tokenizer_padding_side", "tokenizer_model_max_length", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter",
    "unfreeze_vision_tower", "use_s2", "continuous_training", "architectures", "auto_map", "_name_or_path",
    "transformers_version", "model_type",
)
# Buffers that old checkpoints saved and current models recompute; dropped when the target model does not hold them.
_RECOMPUTED_BUFFERS = re.compile(r"(rotary_emb\.inv_freq|embeddings\.position_ids)$")


# --------------------------------------------------------------------------------------------------- file access


def _read_json(path):
    return read_json(path, os.path.basename(path), error=ConversionError)


def weight_files(folder, what="checkpoint"):
    """The weight files of a transformers-style folder: the shards of an index, or the single weights file.
    Raises `ConversionError` when there are none or when an index lists shards that are missing."""
    if not os.path.isdir(folder):
        raise ConversionError(f"The {what} folder {folder!r} does not exist.")
    for index_name in (SAFE_INDEX, BIN_INDEX):
        index_path = os.path.join(folder, index_name)
        if os.path.exists(index_path):
            weight_map = _read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConversionError(f"{index_path} has no `weight_map`: the index is damaged; re-save the {what}.")
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not os.path.exists(os.path.join(folder, s))]
            if missing:
                raise ConversionError(
                    f"The {what} in {folder!r} is incomplete: {index_name} lists {len(shards)} shard(s) but "
                    f"{len(missing)} are missing ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}). "
                    f"Download or copy the missing files, then run again."
                )
            return [os.path.join(folder, s) for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.exists(os.path.join(folder, name)):
            return [os.path.join(folder, name)]
    present = sorted(os.listdir(folder))
    raise ConversionError(
        f"No weights found in the {what} folder {folder!r}: expected model.safetensors, {SAFE_INDEX} (+ shards), "
        f"pytorch_model.bin or {BIN_INDEX} (+ shards). The folder holds: {present[:12]}."
    )


def tensor_shapes(path):
    """`{name: shape}` of a safetensors or PyTorch weights file, without reading the tensors' data."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    state = _load_bin(path)
    return {name: tuple(t.shape) for name, t in state.items()}


def _load_bin(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - reported with the file name
        raise ConversionError(f"Cannot read the PyTorch weights file {path!r}: {type(e).__name__}: {e}") from None


def read_tensor(path, name, _cache={}):
    """One tensor of a weights file (PyTorch files are memory-mapped once and kept for the next reads)."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return f.get_tensor(name)
    if _cache.get("path") != path:
        _cache.clear()
        _cache.update(path=path, state=_load_bin(path))
    return _cache["state"][name]


# --------------------------------------------------------------------------------------------------- plans


@dataclass
class WeightSource:
    """Weight files plus a renaming from their tensor names to ViFT's (None = not used)."""

    label: str
    files: list
    rename: object


@dataclass
class ConversionPlan:
    """Everything a conversion needs, gathered and checked before anything is written."""

    layout: str
    config: ViFTConfig
    sources: list
    tokenizer: object
    image_processor: object
    chat_template: str | None = None
    pad_to_square: bool = False
    add_special_tokens: bool = True
    rgb_conversion: str = "composite_white"
    shrink_vocab_to_tokenizer: bool = False
    generation_config: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def detect_layout(source):
    """`"bunny"` or `"llava"` from the source folder's config.json."""
    config = _read_json(os.path.join(source, "config.json"))
    model_type = str(config.get("model_type", ""))
    if model_type == "llava":
        return "llava"
    if model_type.startswith("bunny") or "mm_projector_type" in config or "mm_vision_tower" in config:
        return "bunny"
    if model_type == "vift":
        raise ConversionError(f"{source!r} is already a ViFT checkpoint (model_type 'vift'); nothing to convert.")
    raise ConversionError(
        f"Cannot tell the layout of {source!r}: config.json has model_type {model_type!r}. Supported sources are "
        f"llava-hf LlavaForConditionalGeneration checkpoints (model_type 'llava') and the authors' Bunny checkpoints "
        f"(model_type {' / '.join(sorted(BUNNY_TEXT_MODEL_TYPES))}, with mm_vision_tower and mm_projector_type)."
    )


def _generation_defaults(folder):
    path = os.path.join(folder, "generation_config.json")
    return _read_json(path) if os.path.exists(path) else {}


def plan_llava(source, chat_template=None, **config_overrides):
    """The plan for a llava-hf `LlavaForConditionalGeneration` folder."""
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    from ..remote_code.processing_vift import (
        AutoImageProcessor,  # the import that works without torchvision on transformers 5.17
    )

    raw_config = _read_json(os.path.join(source, "config.json"))
    files = weight_files(source)
    llava = AutoConfig.from_pretrained(source)
    vision_config = vision_tower_config(llava.vision_config)
    layer = llava.vision_feature_layer
    if not isinstance(layer, int):
        raise ConversionError(
            f"vision_feature_layer={layer!r}: this checkpoint concatenates several vision layers, which ViFT does not "
            f"support (it projects one layer). Only single-layer LLaVA checkpoints can be converted."
        )
    strategy = llava.vision_feature_select_strategy
    image_seq_length = compute_image_seq_length(vision_config, strategy)
    if strategy == "default" and not tower_has_cls_token(vision_config):
        raise ConversionError(
            f"vision_feature_select_strategy='default' with a {vision_config.model_type} tower: LLaVA drops the first "
            f"position as if it were a CLS token, but this tower has none, and ViFT keeps every patch. Such a "
            f"checkpoint cannot be converted exactly."
        )
    # AutoConfig fills in 576 when config.json does not say: only a value written in the file is checked.
    declared = raw_config.get("image_seq_length")
    if declared is not None and int(declared) != image_seq_length:
        raise ConversionError(
            f"The LLaVA config says one image is {declared} tokens, but its vision tower "
            f"({vision_config.image_size}px, patch {vision_config.patch_size}, strategy {strategy!r}) gives "
            f"{image_seq_length}: the checkpoint is "
            f"inconsistent and cannot be converted exactly."
        )
    image_token_id = getattr(llava, "image_token_id", None)
    if image_token_id is None:
        image_token_id = getattr(llava, "image_token_index", None)

    try:
        processor = AutoProcessor.from_pretrained(source)
        tokenizer, image_processor = processor.tokenizer, processor.image_processor
        source_template = getattr(processor, "chat_template", None)
        image_token = getattr(processor, "image_token", "<image>")
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        tokenizer = AutoTokenizer.from_pretrained(source)
        image_processor = AutoImageProcessor.from_pretrained(source)
        source_template, image_token = None, "<image>"
    notes = []
    template = chat_template or source_template
    if template is None and getattr(tokenizer, "chat_template", None) is None:
        notes.append("The source has no chat template: the processor uses ChatML; pass --chat_template to set one.")

    config = ViFTConfig(
        vision_config=vision_config.to_dict(),
        text_config=llava.text_config.to_dict(),
        image_token_id=image_token_id,
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
        projector_hidden_act=llava.projector_hidden_act,
        projector_depth=2,
        multimodal_projector_bias=getattr(llava, "multimodal_projector_bias", True),
        image_seq_length=image_seq_length,
        **config_overrides,
    )

    def rename(name):
        for old, new in (
            ("language_model.model.", "model.language_model."),
            ("language_model.lm_head.", "lm_head."),
            ("vision_tower.", "model.vision_tower."),
            ("multi_modal_projector.", "model.multi_modal_projector."),
        ):
            if name.startswith(old):
                return new + name[len(old):]
        return name

    return ConversionPlan(
        layout="llava",
        config=config,
        sources=[WeightSource("llava checkpoint", files, rename)],
        tokenizer=tokenizer,
        image_processor=image_processor,
        chat_template=template,
        pad_to_square=False,
        add_special_tokens=True,
        rgb_conversion="image_processor",
        generation_config=_generation_defaults(source),
        notes=notes + ([] if image_token == "<image>" else [f"Image token {image_token!r} replaced by '<image>'."]),
    )


def plan_bunny(source, vision_tower=None, language_model=None, chat_template=None, conv_mode=None, **config_overrides):
    """The plan for an authors' Bunny checkpoint folder. `vision_tower` overrides `mm_vision_tower` (needed when the
    checkpoint does not hold the tower's weights and that path is not reachable); `language_model` gives the base LM
    when the checkpoint holds only the projector (`mm_projector.bin`, stage-1 output). `conv_mode` names Bunny's
    conversation mode (default: the one of `model_type`, `plain` for a projector-only checkpoint)."""
    from transformers import AutoConfig, AutoTokenizer

    from ..remote_code.processing_vift import (
        AutoImageProcessor,  # the import that works without torchvision on transformers 5.17
    )

    bunny = _read_json(os.path.join(source, "config.json"))
    model_type = bunny.get("model_type", "")
    text_type = BUNNY_TEXT_MODEL_TYPES.get(model_type)
    if text_type is None:
        known = "" if model_type in BUNNY_MODEL_TYPES else f" (Bunny's model types are {sorted(BUNNY_MODEL_TYPES)})"
        raise ConversionError(
            f"Bunny model_type {model_type!r} is not supported{known}: ViFT converts {sorted(BUNNY_TEXT_MODEL_TYPES)} "
            f"(Bunny's other language models use their own modeling code, whose weights do not map onto transformers classes)."
        )
    if chat_template is not None and conv_mode is not None:
        raise ConversionError("Pass --chat_template or --conv_mode, not both.")
    projector_type = bunny.get("mm_projector_type", "mlp2x_gelu")
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if projector_type == "linear":
        depth = 1
    elif match:
        depth = int(match.group(1))
    else:
        raise ConversionError(
            f"mm_projector_type={projector_type!r} is not supported: ViFT's projector is 'linear' or 'mlp<N>x_gelu' "
            f"(the authors use 'mlp2x_gelu')."
        )
    tower_path = vision_tower or bunny.get("mm_vision_tower")
    if not tower_path:
        raise ConversionError(f"{source}/config.json has no `mm_vision_tower`; pass --vision_tower PATH_OR_ID.")
    try:
        vision_config = vision_tower_config(AutoConfig.from_pretrained(tower_path))
        image_processor = AutoImageProcessor.from_pretrained(tower_path)
    except (OSError, ValueError) as e:
        raise ConversionError(
            f"Cannot load the vision tower config / image processor from {tower_path!r} ({type(e).__name__}: {e}). "
            f"Pass --vision_tower with a local copy of the tower the checkpoint was trained with (e.g. a download of "
            f"google/siglip-so400m-patch14-384)."
        ) from None
    if vision_config.model_type not in ("siglip_vision_model", "clip_vision_model"):
        raise ConversionError(
            f"Vision tower type {vision_config.model_type!r} is not supported; Bunny checkpoints with SigLIP or CLIP "
            f"towers can be converted."
        )
    if bunny.get("use_s2"):
        raise ConversionError("This checkpoint uses Bunny's multi-scale S2 tower, which ViFT does not implement.")
    mm_hidden = bunny.get("mm_hidden_size")
    if mm_hidden is not None and int(mm_hidden) != vision_config.hidden_size:
        raise ConversionError(
            f"config.json says the projector takes {mm_hidden}-wide features but the vision tower {tower_path!r} is "
            f"{vision_config.hidden_size} wide: pass the tower the checkpoint was trained with (--vision_tower)."
        )

    text_config = {k: v for k, v in bunny.items() if k not in _BUNNY_ONLY_KEYS}
    text_config["model_type"] = text_type
    text_config.pop("dtype", None)
    text_config.pop("torch_dtype", None)

    files = weight_files(source) if _has_weights(source) else []
    projector_only = os.path.join(source, "mm_projector.bin")
    sources, notes = [], []
    names = set()
    for file in files:
        names.update(tensor_shapes(file))
    stored_tower = any(n.startswith("model.vision_tower.vision_tower.") for n in names)
    # Bunny's loader builds the tower from mm_vision_tower and loads the stored one only when it was trained.
    use_stored_tower = bool(bunny.get("unfreeze_vision_tower"))
    if use_stored_tower and not stored_tower:
        raise ConversionError(
            f"{source}/config.json says unfreeze_vision_tower=true but the checkpoint holds no vision tower weights "
            f"(model.vision_tower.vision_tower.*), which Bunny's loader requires: the checkpoint is incomplete."
        )
    if stored_tower and not use_stored_tower:
        notes.append("The checkpoint stores vision tower weights but unfreeze_vision_tower is false: as Bunny's loader "
                     "does, the tower is taken from mm_vision_tower instead.")
    rename = _bunny_rename if use_stored_tower else _bunny_rename_without_tower
    if files:
        sources.append(WeightSource("bunny checkpoint", files, rename))
    elif os.path.exists(projector_only):
        sources.append(WeightSource("bunny projector (mm_projector.bin)", [projector_only], rename))
    else:
        weight_files(source)  # raises the "no weights" error
    if not use_stored_tower:
        sources.append(WeightSource(f"vision tower {tower_path}", _tower_weight_files(tower_path), _tower_rename))
    has_language_model = any(n.startswith("model.layers.") for n in names)
    if not has_language_model:
        if language_model is None:
            raise ConversionError(
                f"The checkpoint in {source!r} holds no language-model weights (a projector-only stage-1 output?): "
                f"pass --language_model with the base LM folder it was trained on."
            )
        sources.append(WeightSource(f"language model {language_model}", weight_files(language_model, "language model"),
                                    _base_lm_rename))
    tokenizer_source = source if _has_tokenizer(source) else language_model
    if tokenizer_source is None:
        raise ConversionError(
            f"No tokenizer in {source!r} (tokenizer.json / tokenizer_config.json): pass --language_model with the base "
            f"LM folder, whose tokenizer will be used."
        )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    if chat_template is None:
        conv_mode = conv_mode or (BUNNY_MODEL_TYPES[model_type][1] if has_language_model else "plain")
        try:
            chat_template = build_chat_template(bunny_chat_template(conv_mode))
        except ValueError as e:
            raise ConversionError(str(e)) from None
        notes.append(f"Prompts use Bunny's {conv_mode!r} conversation mode (--conv_mode to choose another).")
    config = ViFTConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        projector_depth=depth,
        multimodal_projector_bias=True,
        **config_overrides,
    )
    return ConversionPlan(
        layout="bunny",
        config=config,
        sources=sources,
        tokenizer=tokenizer,
        image_processor=image_processor,
        chat_template=chat_template,
        pad_to_square=bunny.get("image_aspect_ratio") == "pad",
        add_special_tokens=True,  # tokenizer_image_token calls tokenizer(chunk): the tokenizer's own BOS
        rgb_conversion="pil",  # the authors' evaluation: Image.open(path).convert("RGB")
        shrink_vocab_to_tokenizer=True,  # the loader's model.resize_token_embeddings(len(tokenizer))
        generation_config=_generation_defaults(source),
        notes=notes,
    )


def _has_weights(folder):
    names = (SAFE_INDEX, BIN_INDEX, "model.safetensors", "pytorch_model.bin")
    return any(os.path.exists(os.path.join(folder, n)) for n in names)


def _has_tokenizer(folder):
    return any(os.path.exists(os.path.join(folder, n)) for n in ("tokenizer.json", "tokenizer_config.json"))


def _tower_weight_files(tower_path):
    if not os.path.isdir(tower_path):
        from huggingface_hub import snapshot_download

        try:
            tower_path = snapshot_download(tower_path, allow_patterns=["*.json", "*.safetensors", "*.bin"])
        except Exception as e:  # noqa: BLE001 - any download failure gets the same advice
            raise ConversionError(
                f"The checkpoint does not hold the vision tower's weights and {tower_path!r} cannot be fetched "
                f"({type(e).__name__}). Pass --vision_tower with a local copy of that tower."
            ) from None
    return weight_files(tower_path, "vision tower")


def _bunny_rename_without_tower(name):
    return None if name.startswith("model.vision_tower.") else _bunny_rename(name)


def _base_lm_rename(name):
    # The base causal LM of a stage-1 checkpoint: `model.*` and `lm_head.*`, as in a full Bunny checkpoint.
    return _bunny_rename(name) if name.startswith(("model.", "lm_head.")) else None


def _bunny_rename(name):
    if name.startswith("model.vision_tower.vision_tower."):
        return "model.vision_tower." + name[len("model.vision_tower.vision_tower."):]
    match = re.fullmatch(r"model\.mm_projector\.(\d+)\.(weight|bias)", name)
    if match:
        return f"model.multi_modal_projector.linear_{int(match.group(1)) // 2 + 1}.{match.group(2)}"
    match = re.fullmatch(r"model\.mm_projector\.(weight|bias)", name)  # 'linear' projector: a bare nn.Linear
    if match:
        return f"model.multi_modal_projector.linear_1.{match.group(1)}"
    if name.startswith("model."):
        return "model.language_model." + name[len("model."):]
    return name  # lm_head.*


_DUAL_ENCODER_ONLY = re.compile(r"^(text_model\.|logit_scale$|logit_bias$|text_projection\.|visual_projection\.)")


def _tower_rename(name):
    # A tower folder may be a dual encoder (SiglipModel / CLIPModel): only its vision half is used.
    return None if _DUAL_ENCODER_ONLY.match(name) else "model.vision_tower." + name


def _match_expected(name, expected):
    """`name`, or its spelling in this transformers version: vision towers saved by transformers 4 (and dual encoders)
    nest their weights under `vision_model.`, which recent SigLIP/CLIP vision models no longer do (or the reverse)."""
    if name in expected or not name.startswith("model.vision_tower."):
        return name
    rest = name[len("model.vision_tower."):]
    if rest.startswith("vision_model."):
        alternative = "model.vision_tower." + rest[len("vision_model."):]
    else:
        alternative = "model.vision_tower.vision_model." + rest
    return alternative if alternative in expected else name


# --------------------------------------------------------------------------------------------------- conversion


def build_plan(source, layout="auto", vision_tower=None, language_model=None, chat_template=None, conv_mode=None,
               **config_overrides):
    layout = detect_layout(source) if layout == "auto" else layout
    if layout == "llava":
        if vision_tower or language_model or conv_mode:
            raise ConversionError("--vision_tower / --language_model / --conv_mode apply to Bunny checkpoints only.")
        return plan_llava(source, chat_template=chat_template, **config_overrides)
    if layout == "bunny":
        return plan_bunny(source, vision_tower, language_model, chat_template=chat_template, conv_mode=conv_mode,
                          **config_overrides)
    raise ConversionError(f"layout must be 'auto', 'bunny' or 'llava', got {layout!r}.")


def _expected_tensors(config):
    with torch.device("meta"):
        model = ViFTForConditionalGeneration(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return model, shapes


_VOCAB_TENSORS = ("model.language_model.embed_tokens.weight", "lm_head.weight")


def resolve_tensors(plan, expected):
    """Maps every expected ViFT tensor to (file, source name); raises `ConversionError` on missing, unexpected or
    mis-shaped tensors. Earlier sources win (a checkpoint's trained tower over the tower's original weights)."""
    found, unexpected, bad_shapes = {}, [], []
    for source in plan.sources:
        for file in source.files:
            for name, shape in tensor_shapes(file).items():
                new = source.rename(name)
                if new is None:
                    continue
                new = _match_expected(new, expected)
                if new in found:
                    continue
                if new not in expected:
                    tied_head = new == "lm_head.weight" and plan.config.tie_word_embeddings
                    if not _RECOMPUTED_BUFFERS.search(new) and not tied_head:
                        unexpected.append(f"{name} ({source.label})")
                    continue
                want = expected[new]
                fewer_rows_ok = shape[0] <= want[0] or plan.shrink_vocab_to_tokenizer  # padded / cut when written
                rows_ok = new in _VOCAB_TENSORS and shape[1:] == want[1:] and fewer_rows_ok
                if shape != want and not rows_ok:
                    bad_shapes.append(f"{name} -> {new}: {shape} in the source, {want} expected")
                found[new] = (file, name, shape)
    missing = sorted(set(expected) - set(found))
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) of the ViFT model have no source: {missing[:8]}")
    if unexpected:
        problems.append(f"{len(unexpected)} source tensor(s) have no place in the ViFT model: {unexpected[:8]}")
    if bad_shapes:
        problems.append(f"{len(bad_shapes)} tensor(s) have the wrong shape: {bad_shapes[:8]}")
    if problems:
        raise ConversionError(
            f"The {plan.layout} checkpoint does not match the ViFT model built from its config:\n  - "
            + "\n  - ".join(problems)
            + "\nCheck that the config.json belongs to these weights (and, for Bunny, that --vision_tower is the tower "
            "it was trained with); a checkpoint with missing shards must be completed first."
        )
    return found


def _parse_size(size):
    from transformers.utils.hub import convert_file_size_to_int

    return convert_file_size_to_int(size)


def _write_shards(plan, found, directory, dtype, max_shard_size):
    """Streams the tensors into `model-XXXXX-of-YYYYY.safetensors` shards (or one `model.safetensors`)."""
    from safetensors.torch import save_file

    limit = _parse_size(max_shard_size)
    vocab = plan.config.text_config.vocab_size
    shards, current, current_size, total_size = [], {}, 0, 0

    def flush():
        nonlocal current, current_size
        if current:
            path = os.path.join(directory, f"shard-{len(shards)}.tmp")
            save_file(current, path, metadata={"format": "pt"})
            shards.append((path, list(current)))
            current, current_size = {}, 0

    by_file = {}
    for new, (file, name, _) in found.items():
        by_file.setdefault(file, []).append((name, new))
    for file, names in by_file.items():
        for name, new in names:
            tensor = read_tensor(file, name)
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            if new in _VOCAB_TENSORS and tensor.shape[0] > vocab:
                tensor = tensor[:vocab]  # Bunny's loader: resize_token_embeddings(len(tokenizer))
            if new in _VOCAB_TENSORS and tensor.shape[0] < vocab:
                # The tokenizer gained the image token: new rows start at the mean of the existing ones.
                extra = tensor.float().mean(0, keepdim=True).to(tensor.dtype).expand(vocab - tensor.shape[0], -1)
                tensor = torch.cat([tensor, extra])
            tensor = tensor.contiguous()
            size = tensor.numel() * tensor.element_size()
            if current and current_size + size > limit:
                flush()
            current[new] = tensor
            current_size += size
            total_size += size
    flush()

    if len(shards) == 1:
        os.replace(shards[0][0], os.path.join(directory, "model.safetensors"))
        return
    weight_map = {}
    for i, (path, names) in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(path, os.path.join(directory, final))
        weight_map.update({n: final for n in names})
    with open(os.path.join(directory, SAFE_INDEX), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)


def _source_dtype(found):
    for file, name, _ in found.values():
        tensor = read_tensor(file, name)
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def convert_checkpoint(
    source,
    output_dir,
    layout="auto",
    vision_tower=None,
    language_model=None,
    dtype=None,
    max_shard_size="5GB",
    chat_template=None,
    overwrite=False,
    conv_mode=None,
    **config_overrides,
):
    """Converts a Bunny or llava-hf checkpoint folder into a ViFT folder (weights, config with `auto_map`, remote
    code, processor with chat template, generation config with the fusion defaults) and returns the plan.

    `dtype` (`torch.dtype`, optional) casts floating tensors (default: kept as stored). `config_overrides` go to
    `ViFTConfig` (e.g. `fusion_layers=[14, 28]`, `fusion_alpha=...`). Raises `ConversionError` before writing anything
    when the source is incomplete or does not match its config."""
    from ..publishing.model import build_generation_config

    if os.path.exists(output_dir) and os.listdir(output_dir) and not overwrite:
        raise ConversionError(
            f"The output folder {output_dir!r} is not empty; pass overwrite=True (--overwrite) or choose another."
        )
    if chat_template is not None and os.path.isfile(chat_template):
        with open(chat_template, encoding="utf-8") as f:
            chat_template = f.read()
    plan = build_plan(source, layout, vision_tower, language_model, chat_template, conv_mode, **config_overrides)

    # The image token: LLaVA tokenizers hold it; Bunny's (a plain LM tokenizer) gets it added here.
    source_has_image_token = "<image>" in plan.tokenizer.get_vocab()
    image_token_id = add_image_token(plan.tokenizer, "<image>")
    config = plan.config
    if config.image_token_id is None:
        config.image_token_id = image_token_id
    elif config.image_token_id != image_token_id:
        raise ConversionError(
            f"config image_token_id={config.image_token_id} but the tokenizer maps '<image>' to {image_token_id}."
        )
    if plan.shrink_vocab_to_tokenizer:
        config.text_config.vocab_size = len(plan.tokenizer)
        if not source_has_image_token:  # the source model has no such token: it never generates it
            plan.generation_config = {**plan.generation_config, "suppress_tokens": [image_token_id]}
    else:
        config.text_config.vocab_size = max(config.text_config.vocab_size, len(plan.tokenizer))

    model, expected = _expected_tensors(config)
    found = resolve_tensors(plan, expected)
    processor = ViFTProcessor(
        image_processor=plan.image_processor,
        tokenizer=plan.tokenizer,
        chat_template=plan.chat_template,
        image_token="<image>",
        image_seq_length=config.image_seq_length,
        pad_to_square=plan.pad_to_square,
        add_special_tokens=plan.add_special_tokens,
        rgb_conversion=plan.rgb_conversion,
    )

    parent = os.path.dirname(os.path.abspath(output_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".vift-convert-", dir=parent)
    try:
        stored_dtype = dtype or _source_dtype(found)
        _write_shards(plan, found, staging, dtype, max_shard_size)
        config.dtype = stored_dtype
        config.architectures = [ViFTForConditionalGeneration.__name__]
        save_remote_code_config(model, staging)
        processor.save_pretrained(staging)
        build_generation_config(config, plan.generation_config, plan.tokenizer).save_pretrained(staging)
        if os.path.exists(output_dir):
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return plan


def save_remote_code_config(model, directory):
    """Writes config.json with its `auto_map` and copies the remote-code files, as `save_pretrained` does, for a
    model whose weights are written separately."""
    from transformers.dynamic_module_utils import custom_object_save

    custom_object_save(model, directory, config=model.config)
    add_auto_model_entry(model)  # as ViFTForConditionalGeneration.save_pretrained does
    model.config.save_pretrained(directory)


@torch.no_grad()
def compare_with_llava(source, converted, num_images=1, seed=0, text=None):
    """Max |logits difference| between the llava-hf source and the converted ViFT model, each fed by its own processor
    (`LlavaProcessor` from the source folder, `ViFTProcessor` from the converted one) on the same random images and
    prompt; both models in float32. Raises `ValueError` when the two processors give different input ids or pixel
    values: the models would then see different inputs, whatever their weights."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    llava = LlavaForConditionalGeneration.from_pretrained(source, dtype=torch.float32).eval()
    vift = ViFTForConditionalGeneration.from_pretrained(converted, dtype=torch.float32).eval()
    llava_processor = AutoProcessor.from_pretrained(source)
    vift_processor = ViFTProcessor.from_pretrained(converted)
    text = text or "USER: " + "<image>\n" * num_images + "Describe the image. ASSISTANT:"
    images = _random_images(num_images, vift.config.vision_config.image_size, seed) or None
    expected = llava_processor(text=text, images=images, return_tensors="pt")
    got = vift_processor(text=text, images=images, return_tensors="pt")
    if not torch.equal(expected["input_ids"], got["input_ids"]):
        raise ValueError(
            f"The converted processor tokenizes the prompt differently from the source's LlavaProcessor "
            f"({got['input_ids'].shape[-1]} ids against {expected['input_ids'].shape[-1]}; first ids "
            f"{got['input_ids'][0, :6].tolist()} against {expected['input_ids'][0, :6].tolist()}): check "
            f"add_special_tokens in the converted processor_config.json."
        )
    if images and not torch.equal(expected["pixel_values"], got["pixel_values"]):
        raise ValueError("The converted processor gives different pixel values from the source's LlavaProcessor.")
    a = llava(**expected).logits
    b = vift(**got).logits
    vocab = min(a.shape[-1], b.shape[-1])
    return float((a[..., :vocab] - b[..., :vocab]).abs().max())


def _random_images(count, size, seed):
    """Random RGBA images whose alpha varies, so that the RGB conversion of the two pipelines is compared too."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size + 5, size, 4), dtype=np.uint8), "RGBA") for _ in range(count)]


__all__ = ["ConversionError", "build_plan", "compare_with_llava", "convert_checkpoint", "detect_layout", "weight_files"]
