"""ViFT model configuration.

A composite config in the style of transformers' `LlavaConfig`: a `vision_config` (any transformers vision
tower, e.g. SigLIP or CLIP) and a `text_config` (any transformers decoder LM, e.g. Qwen2 or Llama), plus the
projector settings and the defaults of ViFT's ability-fused inference.

This file is part of the remote-code bundle: it imports only transformers and its siblings.
"""

import math
import os
import re

import transformers
from transformers import AddedToken, AutoConfig, PretrainedConfig


# The transformers releases this bundle is proven on by CI's version matrix (oldest, the lock, newest):
# `>= SUPPORTED_TRANSFORMERS[0]` and `< SUPPORTED_TRANSFORMERS[1]`. setup.py declares the same range.
SUPPORTED_TRANSFORMERS = ("5.17.0", "5.25.0")
# Set to 1 to load under a transformers outside that range anyway (a warning instead of the error): for testing
# a new release before it is supported.
ALLOW_UNTESTED_ENV = "VIFT_ALLOW_UNTESTED_TRANSFORMERS"


def _release(version):
    """`"5.24.0"` -> `(5, 24, 0)`; pre-releases and local labels count as their release (`"5.25.0.dev0"` -> 5.25.0)."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if match is None:
        raise ValueError(f"Cannot read the transformers version {version!r}.")
    return tuple(int(part or 0) for part in match.groups())


def check_transformers_version(version=None):
    """Raises `ImportError` when the installed transformers lies outside the range this bundle supports.

    The remote-code files run under whatever transformers the user has; outside the proven range they would fail
    later and obscurely (transformers renames arguments and output fields between minor releases), so they refuse
    to load instead, naming both versions.
    """
    version = transformers.__version__ if version is None else version
    oldest, first_unsupported = SUPPORTED_TRANSFORMERS
    if _release(oldest) <= _release(version) < _release(first_unsupported):
        return
    message = (
        f"ViFT's model code supports transformers >={oldest},<{first_unsupported}, but transformers {version} is "
        f"installed. Install a supported release (pip install 'transformers>={oldest},<{first_unsupported}'), or "
        f"upgrade vift / the model's code files if a newer one supports transformers {version}."
    )
    if os.environ.get(ALLOW_UNTESTED_ENV) == "1":
        transformers.logging.get_logger(__name__).warning(
            message + f" Loading anyway because {ALLOW_UNTESTED_ENV}=1."
        )
        return
    raise ImportError(message + f" (Set {ALLOW_UNTESTED_ENV}=1 to try it anyway.)")


check_transformers_version()


# Vision towers whose hidden states start with a CLS token (dropped by the "default" feature strategy).
_TOWERS_WITH_CLS_TOKEN = ("clip_vision_model", "clip", "dinov2", "vit")


def _as_sub_config(value, default_model_type, name):
    if value is None:
        value = {"model_type": default_model_type}
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", default_model_type)
        return AutoConfig.for_model(model_type, **value)
    if isinstance(value, PretrainedConfig):
        return value
    raise TypeError(f"`{name}` must be a dict or a PretrainedConfig, got {type(value).__name__}.")


class ViFTConfig(PretrainedConfig):
    r"""
    Configuration of a [`ViFTForConditionalGeneration`].

    Args:
        vision_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the vision tower (default: a SigLIP vision config).
        text_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the language model (default: a Qwen2 config).
        image_token_id (`int`, *optional*):
            Id of the `<image>` placeholder token in the tokenizer.
        vision_feature_layer (`int`, *optional*, defaults to -2):
            Index into the vision tower's `hidden_states` whose patch features are projected (the authors use the
            second-to-last layer of SigLIP).
        vision_feature_select_strategy (`str`, *optional*, defaults to `"default"`):
            `"default"` drops the CLS token of towers that emit one (CLIP), `"full"` keeps every position.
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation between the projector's linear layers.
        projector_depth (`int`, *optional*, defaults to 2):
            Number of linear layers of the projector (2 = the authors' `mlp2x_gelu`).
        multimodal_projector_bias (`bool`, *optional*, defaults to `True`):
            Whether the projector's linear layers have a bias.
        fusion_alpha (`float`, *optional*, defaults to 0.5):
            Weight of the text-only prompt's hidden states in fused generation.
        fusion_beta (`float`, *optional*, defaults to 0.5):
            Weight subtracted of the multimodal prompt's own hidden states in fused generation.
        image_seq_length (`int`, *optional*):
            Number of `<image>` tokens one image expands to; derived from the vision config when not given.
        vpgc_layer (`int`, *optional*):
            Decoder layer at whose input VPG-C (instruction-guided residual visual re-attention, from the Cheetah
            work) re-attends each image's patch features. `None` (default) = off.
        vpgc_hidden_size (`int`, *optional*):
            Width of VPG-C's cross-attention (default: the vision tower's hidden size).
        vpgc_num_heads (`int`, *optional*, defaults to 4):
            Attention heads of VPG-C's cross-attention.
        fusion_layers (`list[int]` of length 2, *optional*):
            Half-open range `[start, end)` of decoder layers whose inputs are steered during fused generation.
            Defaults to the upper half of the language model's layers.
        fusion_alignment (`str`, *optional*, defaults to `"right"`):
            How the text-only prompt's positions are paired with the multimodal prompt's in fused generation:
            `"right"` (the authors' algorithm: the last n positions, right-aligned) or `"token"` (each text-only
            token steers the position of the same text token in the multimodal prompt; image tokens are left alone).
    """

    model_type = "vift"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}

    def __init__(
        self,
        vision_config=None,
        text_config=None,
        image_token_id=None,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        projector_depth=2,
        multimodal_projector_bias=True,
        fusion_alpha=0.5,
        fusion_beta=0.5,
        fusion_layers=None,
        fusion_alignment="right",
        image_seq_length=None,
        vpgc_layer=None,
        vpgc_hidden_size=None,
        vpgc_num_heads=4,
        tie_word_embeddings=None,
        **kwargs,
    ):
        self.vision_config = vision_tower_config(_as_sub_config(vision_config, "siglip_vision_model", "vision_config"))
        self.text_config = _as_sub_config(text_config, "qwen2", "text_config")
        self.image_token_id = image_token_id
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.projector_hidden_act = projector_hidden_act
        self.projector_depth = int(projector_depth)
        self.multimodal_projector_bias = multimodal_projector_bias
        self.fusion_alpha = float(fusion_alpha)
        self.fusion_beta = float(fusion_beta)
        self.fusion_alignment = check_fusion_alignment(fusion_alignment) or "right"

        if vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy must be 'default' or 'full', got {vision_feature_select_strategy!r}."
            )
        if self.projector_depth < 1:
            raise ValueError(f"projector_depth must be >= 1, got {projector_depth}.")

        self.vision_feature_layer = check_vision_feature_layer(vision_feature_layer, self.vision_config.num_hidden_layers)

        self.image_seq_length = int(image_seq_length) if image_seq_length else self.default_image_seq_length()

        num_text_layers = self.text_config.num_hidden_layers
        if fusion_layers is None:
            fusion_layers = [num_text_layers // 2, num_text_layers]
        self.fusion_layers = list(check_fusion_layers(fusion_layers, num_text_layers))
        self.vpgc_layer = check_vpgc_layer(vpgc_layer, num_text_layers)
        self.vpgc_hidden_size = vpgc_hidden_size
        self.vpgc_num_heads = int(vpgc_num_heads)
        check_fusion_weights(self.fusion_alpha, self.fusion_beta)

        if tie_word_embeddings is None:
            tie_word_embeddings = getattr(self.text_config, "tie_word_embeddings", False)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def default_image_seq_length(self):
        return compute_image_seq_length(self.vision_config, self.vision_feature_select_strategy)


def vision_tower_config(config):
    """The vision tower's own config from a tower config or a dual-encoder config (SiglipConfig, CLIPConfig)."""
    return getattr(config, "vision_config", None) or config


def compute_image_seq_length(vision_config, vision_feature_select_strategy="default"):
    """Tokens one image expands to: one per patch, plus the CLS token of towers that emit one when it is kept."""
    vision_config = vision_tower_config(vision_config)
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    has_cls = tower_has_cls_token(vision_config)
    return patches + int(has_cls and vision_feature_select_strategy == "full")


def tower_has_cls_token(vision_config):
    """Whether the vision tower emits a CLS token before its patch tokens (CLIP, DINOv2, ViT; SigLIP does not)."""
    return vision_tower_config(vision_config).model_type in _TOWERS_WITH_CLS_TOKEN


def add_image_token(tokenizer, image_token="<image>"):
    """Adds `image_token` to the tokenizer as a special token (if missing) and returns its id."""
    if image_token not in tokenizer.get_vocab():
        # `add_tokens(..., special_tokens=True)` keeps the tokenizer's own special tokens (the keyword that says so for
        # `add_special_tokens` was renamed in transformers 5); the token is never split and skipped on decoding.
        tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(image_token)


def check_fusion_weights(fusion_alpha, fusion_beta):
    """Validates the fusion weights (each a finite number, or None for "the default") and returns them as floats."""
    checked = []
    for name, value in (("fusion_alpha", fusion_alpha), ("fusion_beta", fusion_beta)):
        if value is None:
            checked.append(None)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"{name} must be a finite number, got {value!r}: pass a real number such as 0.5.")
        checked.append(number)
    return tuple(checked)


def check_vision_feature_layer(vision_feature_layer, num_layers):
    """Returns `vision_feature_layer` if it indexes the `num_layers + 1` hidden states of the vision tower, else raises."""
    if not -(num_layers + 1) <= vision_feature_layer <= num_layers:
        raise ValueError(
            f"vision_feature_layer={vision_feature_layer} is out of range: the vision tower has {num_layers} layers, so "
            f"its hidden_states hold {num_layers + 1} entries and the index must lie in [{-(num_layers + 1)}, "
            f"{num_layers}]."
        )
    return vision_feature_layer


def check_vpgc_layer(vpgc_layer, num_layers):
    """Returns `vpgc_layer` as an int (or None: VPG-C off) if it names one of the `num_layers` decoder layers, else
    raises."""
    if vpgc_layer is None:
        return None
    remedy = f"use an index in [0, {num_layers - 1}] (the Cheetah work uses a middle layer), or None for off."
    try:
        layer = int(vpgc_layer)
        whole = not isinstance(vpgc_layer, bool) and layer == float(vpgc_layer)
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise ValueError(f"vpgc_layer must be a whole decoder layer index, got {vpgc_layer!r}: {remedy}")
    if not 0 <= layer < num_layers:
        raise ValueError(
            f"vpgc_layer={vpgc_layer!r} is out of range for a language model with {num_layers} layers: {remedy}"
        )
    return layer


def check_fusion_layers(fusion_layers, num_layers=None):
    """Validates a half-open `[start, end)` layer range against a model of `num_layers` decoder layers (with
    `num_layers=None`, only that it is a pair of integers with 0 <= start < end)."""
    try:
        start, end = (int(x) for x in fusion_layers)
    except (TypeError, ValueError):
        raise ValueError(f"fusion_layers must be a pair [start, end), got {fusion_layers!r}.") from None
    if num_layers is None:
        if not 0 <= start < end:
            raise ValueError(f"fusion_layers=[{start}, {end}) is invalid: it must satisfy 0 <= start < end.")
        return start, end
    if not 0 <= start < end <= num_layers:
        raise ValueError(
            f"fusion_layers=[{start}, {end}) is invalid for a language model with {num_layers} layers: "
            f"it must satisfy 0 <= start < end <= {num_layers}."
        )
    return start, end


# How fused generation pairs the text-only prompt's positions with the multimodal prompt's (see fusion_vift.py).
FUSION_ALIGNMENTS = ("right", "token")


def check_fusion_alignment(fusion_alignment):
    """Validates a fusion alignment name (`"right"`, `"token"`, or None for "the default") and returns it."""
    if fusion_alignment is None or fusion_alignment in FUSION_ALIGNMENTS:
        return fusion_alignment
    raise ValueError(
        f"fusion_alignment must be one of {list(FUSION_ALIGNMENTS)}, got {fusion_alignment!r}: 'right' is the authors' "
        f"right alignment of the whole text-only prompt, 'token' pairs each text token with its own copy."
    )


def fusion_setting(fusion_alpha, fusion_beta, fusion_layers, num_layers, fusion_alignment=None):
    """The fusion defaults as stored in `config.json` and `generation_config.json` (the keys fused `generate` reads),
    validated: the one way every writer of fusion defaults spells them. `fusion_alignment` is written only when
    given (None leaves the stored alignment as it is)."""
    alpha, beta = check_fusion_weights(fusion_alpha, fusion_beta)
    setting = {"fusion_alpha": alpha, "fusion_beta": beta, "fusion_layers": list(check_fusion_layers(fusion_layers, num_layers))}
    if fusion_alignment is not None:
        setting["fusion_alignment"] = check_fusion_alignment(fusion_alignment)
    return setting


__all__ = [
    "SUPPORTED_TRANSFORMERS",
    "FUSION_ALIGNMENTS",
    "ViFTConfig",
    "add_image_token",
    "check_fusion_alignment",
    "check_fusion_layers",
    "check_fusion_weights",
    "check_transformers_version",
    "check_vision_feature_layer",
    "compute_image_seq_length",
    "fusion_setting",
    "tower_has_cls_token",
]
