"""ViFT: a LLaVA-style vision-language model whose `generate` can fuse the hidden states of the text-only
prompt into those of the multimodal prompt ("ability-fused inference", Liu et al. 2025, arXiv 2502.11427).

Layout follows transformers' `models/llava`: `ViFTModel` (vision tower, projector, language model; the image
features are merged into the token embeddings here) and `ViFTForConditionalGeneration` (LM head, loss,
`GenerationMixin`). The towers are built with `AutoModel.from_config`; no backbone code is copied.

This file is part of the remote-code bundle: it imports only torch, transformers and its siblings.
"""

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.utils import torch_compilable_check

from .configuration_vift import (
    ViFTConfig,
    add_image_token,
    check_vision_feature_layer,
    check_vpgc_layer,
    vision_tower_config,
)
from .fusion_vift import decoder_layers, derive_text_only_prompt, explain_fusion, fused_generate
from .vpgc_vift import ViFTVisualPromptCompleter, ZeroInitLinear, apply_vpgc, instruction_columns, sample_ids


# The KV cache's name is owned by transformers: `past_key_values` up to 5.23, `cache` from 5.24 on (in every output
# class and forward argument). vift's outputs subclass transformers' own, so they carry the running version's
# field; CACHE_NAME is that name, used to hand the cache to the language model and to read it back.
CACHE_NAME = "cache" if "cache" in {field.name for field in fields(CausalLMOutputWithPast)} else "past_key_values"


def take_cache(past_key_values, kwargs):
    """The cache a caller passed under either name (`generate` passes `cache` from transformers 5.24 on)."""
    cache = kwargs.pop("cache", None)
    if cache is not None and past_key_values is not None:
        raise ValueError("Pass the KV cache once: as `cache` or as `past_key_values`, not both.")
    return past_key_values if cache is None else cache


def cache_of(outputs):
    """The KV cache of a model output, whichever name the running transformers gives it."""
    return getattr(outputs, CACHE_NAME, None)


def nothing_cached(cache, new_tokens):
    """Whether a forward starts at the beginning of its sequences (no token of them cached), i.e. it is a prompt's
    forward. A dynamic cache's length is a Python int; a static cache keeps its length on the device, so there a
    one-token forward (a decoding step) counts as cached and only longer forwards read the length back, once."""
    if cache is None:
        return True
    seen = cache.get_seq_length()
    if not isinstance(seen, torch.Tensor):
        return seen == 0
    if new_tokens == 1 or torch.compiler.is_compiling():
        return False
    return bool(seen == 0)


def supported_positions(text_config):
    """The longest sequence the language model supports, or None for no bound.

    `max_position_embeddings`, stretched by a RoPE scaling that extends the context (linear, YaRN, LongRoPE,
    Llama 3: `factor` x the original length); dynamic NTK scaling rescales as the sequence grows, so it has no bound.
    Reads `rope_parameters` (transformers 5) or the older `rope_scaling`, flat or per layer type."""
    max_positions = getattr(text_config, "max_position_embeddings", None)
    if not max_positions:
        return None
    rope = getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None) or {}
    per_layer_type = not ("rope_type" in rope or "type" in rope)
    bound = max_positions
    for params in [v for v in rope.values() if isinstance(v, dict)] if per_layer_type else [rope]:
        kind = params.get("rope_type", params.get("type", "default"))
        if kind == "dynamic":
            return None
        if kind != "default" and params.get("factor"):
            original = params.get("original_max_position_embeddings") or max_positions
            bound = max(bound, int(params["factor"] * original))
    return bound


def resolve_return_dict(config, return_dict):
    return getattr(config, "return_dict", True) if return_dict is None else return_dict


@dataclass
class ViFTModelOutputWithPast(BaseModelOutputWithPast):
    """transformers' `BaseModelOutputWithPast` plus the projected image features
    (`(num_images, image_seq_length, hidden)`)."""

    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class ViFTCausalLMOutputWithPast(CausalLMOutputWithPast):
    """transformers' `CausalLMOutputWithPast` (loss, logits, cache, hidden states, attentions) plus the projected
    image features."""

    image_hidden_states: torch.FloatTensor | None = None


class ViFTMultiModalProjector(nn.Module):
    """`projector_depth` linear layers with the activation between them (depth 2 = the authors' `mlp2x_gelu`).

    Parameter names `linear_1`, `linear_2`, ... match LLaVA's for depth 2, so llava-hf checkpoints map 1:1.
    """

    def __init__(self, config: ViFTConfig):
        super().__init__()
        self.depth = config.projector_depth
        in_features = config.vision_config.hidden_size
        out_features = config.text_config.hidden_size
        for i in range(self.depth):
            layer = nn.Linear(in_features if i == 0 else out_features, out_features, bias=config.multimodal_projector_bias)
            setattr(self, f"linear_{i + 1}", layer)
        self.act = ACT2FN[config.projector_hidden_act]

    def forward(self, image_features):
        hidden_states = self.linear_1(image_features)
        for i in range(2, self.depth + 1):
            hidden_states = getattr(self, f"linear_{i}")(self.act(hidden_states))
        return hidden_states


class ViFTPreTrainedModel(PreTrainedModel):
    config_class = ViFTConfig
    config: ViFTConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _no_split_modules = ["ViFTMultiModalProjector", "ViFTVisualPromptCompleter"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def _init_weights(self, module):
        if isinstance(module, ViFTMultiModalProjector):
            std = getattr(self.config.text_config, "initializer_range", 0.02)
            for i in range(1, module.depth + 1):
                linear = getattr(module, f"linear_{i}")
                nn.init.normal_(linear.weight, mean=0.0, std=std)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
        elif isinstance(module, ZeroInitLinear):  # VPG-C's guidance and output projections: an exact no-op at start
            module.reset_parameters()
        else:
            super()._init_weights(module)

    def initialize_weights(self):
        """transformers' weight initialisation, with every transformers tower (vision tower, language model)
        initialised first by its own `initialize_weights`, as it would be on its own. (For custom-code models
        transformers marks a module without direct parameters as initialised, so CLIP / SigLIP attention would
        otherwise get the generic Linear init instead of their own, e.g. when a checkpoint misses those keys.)
        Weights already loaded are kept: both passes skip what is marked initialised."""
        for module in self.modules():
            if module is not self and isinstance(module, PreTrainedModel) and not module.is_custom_code():
                module.initialize_weights()
        super().initialize_weights()


class ViFTModel(ViFTPreTrainedModel):
    """Vision tower + projector + language model, without the LM head."""

    def __init__(self, config: ViFTConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = ViFTMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.vpgc = None
        self._vpgc_step = None
        if config.vpgc_layer is not None:
            # Checked again: the attribute may have been set on the config after its own check.
            layers = decoder_layers(self.language_model)
            config.vpgc_layer = check_vpgc_layer(config.vpgc_layer, len(layers))
            self.vpgc = ViFTVisualPromptCompleter(config)
            # A permanent hook whose per-forward state is set by `forward`: gradient checkpointing re-runs the layer
            # during backward and must see the same VPG-C step as the forward did.
            layer = layers[config.vpgc_layer]
            layer.register_forward_pre_hook(self._vpgc_pre_hook, with_kwargs=True)
        self.post_init()

    def _vpgc_pre_hook(self, module, args, kwargs):
        step = self._vpgc_step
        if step is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[:2] != step["image_mask"].shape:
            return None  # not the forward the step was prepared for (e.g. a decoding step)
        updated = apply_vpgc(self.vpgc, hidden, step["image_mask"], step["patch_features"], step["instruction_cols"])
        return ((updated,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": updated})

    def get_image_features(
        self, pixel_values, vision_feature_layer=None, vision_feature_select_strategy=None, output_hidden_states=None,
        output_attentions=None, return_dict=None, **kwargs,
    ):
        """Runs the vision tower and the projector, as transformers' `get_image_features` contract says: returns a
        `BaseModelOutputWithPooling` whose `pooler_output` holds the projected features `(num_images, tokens, hidden)`,
        `last_hidden_state` the tower's last hidden state, and `hidden_states` / `attentions` the tower's when asked
        for (`output_hidden_states` / `output_attentions`); a tuple of those with `return_dict=False`."""
        tower_outputs, patch_features = self._vision_tower_outputs(
            pixel_values, vision_feature_layer, vision_feature_select_strategy, output_attentions=output_attentions,
            **kwargs,
        )
        if output_hidden_states is None:
            output_hidden_states = getattr(self.config, "output_hidden_states", False)
        outputs = BaseModelOutputWithPooling(
            last_hidden_state=tower_outputs.last_hidden_state,
            pooler_output=self.multi_modal_projector(patch_features),
            hidden_states=tower_outputs.hidden_states if output_hidden_states else None,
            attentions=tower_outputs.attentions if output_attentions else None,
        )
        return outputs if resolve_return_dict(self.config, return_dict) else outputs.to_tuple()

    def get_patch_features(self, pixel_values, vision_feature_layer=None, vision_feature_select_strategy=None):
        """The vision tower's selected patch features, before the projector: `(num_images, tokens, vision_hidden)`."""
        return self._vision_tower_outputs(pixel_values, vision_feature_layer, vision_feature_select_strategy)[1]

    def _vision_tower_outputs(self, pixel_values, vision_feature_layer=None, vision_feature_select_strategy=None, **kwargs):
        """The vision tower's outputs and its selected patch features."""
        vision_feature_layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        check_vision_feature_layer(vision_feature_layer, self.config.vision_config.num_hidden_layers)
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must have shape (num_images, channels, height, width), got {tuple(pixel_values.shape)}."
            )
        vision_config = self.config.vision_config
        expected = (getattr(vision_config, "num_channels", 3), vision_config.image_size, vision_config.image_size)
        if tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values hold images of shape {tuple(pixel_values.shape[1:])} but the vision tower takes "
                f"{expected} (channels, height, width): prepare images with the model's processor."
            )
        tower_dtype = next(self.vision_tower.parameters()).dtype
        kwargs = {name: value for name, value in kwargs.items() if value is not None}
        outputs = self.vision_tower(pixel_values.to(tower_dtype), output_hidden_states=True, return_dict=True, **kwargs)
        features = outputs.hidden_states[vision_feature_layer]
        patches = (self.config.vision_config.image_size // self.config.vision_config.patch_size) ** 2
        if strategy == "default" and features.shape[1] == patches + 1:
            features = features[:, 1:]
        return outputs, features

    def get_placeholder_mask(self, input_ids, inputs_embeds, image_features):
        """Boolean mask of the `<image>` positions; checks there is exactly one per image feature vector."""
        if self.config.image_token_id is None:
            raise ValueError("config.image_token_id is None: the model cannot tell where images go in the prompt.")
        if input_ids is None:
            image_embed = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == image_embed).all(-1)
        else:
            mask = input_ids == self.config.image_token_id
        n_tokens = mask.sum()
        n_images, tokens_per_image = image_features.shape[:2]
        # One check per forward that carries images (compile-friendly; the message is built only on failure).
        torch_compilable_check(
            n_tokens == n_images * tokens_per_image,
            lambda: (
                f"The prompts hold {int(n_tokens)} image tokens but {n_images} image(s) of {tokens_per_image} tokens "
                f"each were given ({n_images * tokens_per_image} tokens expected). Each <image> placeholder must be "
                f"expanded to {tokens_per_image} tokens (ViFTProcessor does this) and the number of placeholders must "
                f"equal the number of images."
            ),
        )
        return mask

    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        vision_feature_layer=None,
        vision_feature_select_strategy=None,
        image_features=None,
        image_patch_features=None,
        instruction_labels=None,
        vpgc_prompt_length=None,
        cache=None,
        **kwargs,
    ):
        r"""
        image_features (`torch.Tensor`, *optional*): projected image features, instead of `pixel_values`.
        image_patch_features (`torch.Tensor`, *optional*): the vision tower's patch features behind `image_features`
            (VPG-C re-attends them; needed with `image_features` when `config.vpgc_layer` is set).
        instruction_labels (`torch.LongTensor`, *optional*): the training labels, from which VPG-C finds each
            sample's last instruction token (the token before its first answer token).
        vpgc_prompt_length (`int`, *optional*): set by `generate`: the columns of the (left-padded) prompt. VPG-C's
            guidance then comes from the prompt's last token also in forwards that recompute generated tokens
            (`use_cache=False`), as in the cached prefill.

        Image tokens in a prompt without `pixel_values` (or `image_features`) are refused with a ValueError: the
        model would otherwise read the placeholder's embedding as if it were the image. The check applies to the
        prompt's forward (nothing cached yet); tokens after a cached prefix, e.g. drafts in assisted decoding, are
        embedded as text. The prompt's checks (token ids, image tokens, length) run once per prompt forward, never in
        decoding steps, which `generate` bounds up front.
        """
        past_key_values = take_cache(past_key_values, {"cache": cache})
        return_dict = resolve_return_dict(self.config, kwargs.pop("return_dict", None))
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if pixel_values is not None and image_features is not None:
            raise ValueError("Pass pixel_values or image_features, not both.")
        if pixel_values is not None and pixel_values.shape[0] == 0:
            pixel_values = None  # a collated batch without images
        is_prompt = nothing_cached(past_key_values, (input_ids if inputs_embeds is None else inputs_embeds).shape[1])
        if inputs_embeds is None:
            if is_prompt:
                self._check_token_ids(input_ids)
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if is_prompt:
            self._check_length(inputs_embeds, position_ids)

        self._vpgc_step = None
        if pixel_values is not None:
            image_patch_features = self.get_patch_features(pixel_values, vision_feature_layer, vision_feature_select_strategy)
            image_features = self.multi_modal_projector(image_patch_features)
        if image_features is not None:
            image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1), image_features)
            if self.vpgc is not None:
                self._vpgc_step = self._prepare_vpgc_step(
                    mask, image_patch_features, position_ids, attention_mask, instruction_labels, vpgc_prompt_length
                )
        elif input_ids is not None and self.config.image_token_id is not None and is_prompt:
            image_tokens = input_ids == self.config.image_token_id
            torch_compilable_check(
                ~image_tokens.any(),
                lambda: (
                    f"The prompts hold {int(image_tokens.sum())} image tokens but no pixel_values were given: pass "
                    f"the images as pixel_values (the processor returns them), or remove the image placeholders."
                ),
            )

        if attention_mask is None and past_key_values is None and position_ids is not None:
            # Padding-free packed rows: transformers derives the block-diagonal mask from position_ids only when
            # neither a mask nor a cache is given, so never let the language model create a cache here.
            kwargs["use_cache"] = False
        elif self.training and past_key_values is None:
            kwargs.setdefault("use_cache", False)  # training never reads a cache: don't build one

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **{**kwargs, CACHE_NAME: past_key_values, "return_dict": True},
        )
        output = ViFTModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            **{CACHE_NAME: cache_of(outputs)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )
        return output if return_dict else output.to_tuple()

    def _prepare_vpgc_step(self, image_mask, patch_features, position_ids, attention_mask, labels, prompt_length=None):
        if patch_features is None:
            raise ValueError(
                "VPG-C (config.vpgc_layer) re-attends the vision tower's patch features: pass pixel_values, or "
                "image_patch_features together with image_features."
            )
        segments = sample_ids(position_ids, attention_mask, image_mask.shape).to(image_mask.device)
        # A 2D padding mask tells real tokens apart; a 4D or per-layer-type mask (static caches) is left-padded input
        # from `generate`, whose last column is real.
        padding_mask = attention_mask if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2 else None
        if prompt_length is not None and image_mask.shape[1] > prompt_length:
            # A forward over the prompt and generated tokens (generation without a cache): the guidance stays at the
            # prompt's last token, where the cached prefill takes it, instead of moving to the newest token.
            padding_mask = (torch.ones_like(image_mask) if padding_mask is None else padding_mask.bool()).clone()
            padding_mask[:, prompt_length:] = False
        columns = instruction_columns(image_mask, segments, labels, padding_mask)
        return {"image_mask": image_mask, "patch_features": patch_features, "instruction_cols": columns}

    def _check_token_ids(self, input_ids):
        if input_ids.numel() == 0:
            return
        num_embeddings = self.get_input_embeddings().num_embeddings

        def message():
            low, high = int(input_ids.min()), int(input_ids.max())
            image_hint = ""
            if self.config.image_token_id is not None and self.config.image_token_id >= num_embeddings:
                image_hint = (
                    f" The image token id {self.config.image_token_id} itself is outside the embeddings: the tokenizer "
                    f"gained the image token but the model was not resized; call "
                    f"model.resize_token_embeddings(len(tokenizer)) or build with from_components."
                )
            return (
                f"input_ids hold ids in [{low}, {high}] but the language model has {num_embeddings} token embeddings "
                f"(valid ids: 0..{num_embeddings - 1}): the tokenizer does not match the model.{image_hint}"
            )

        # One vectorised check per prompt forward; the message (and its reads) only on failure.
        torch_compilable_check(((input_ids >= 0) & (input_ids < num_embeddings)).all(), message)

    def _check_length(self, inputs_embeds, position_ids):
        """Refuses a prompt longer than the language model supports (see `supported_positions`)."""
        max_positions = supported_positions(self.config.text_config)
        if max_positions is None:
            return

        def message(longest):
            return (
                f"The sequence is {longest} tokens long but the language model supports at most {max_positions} "
                f"positions (text_config.max_position_embeddings, with its RoPE scaling): shorten the prompt or "
                f"lower max_new_tokens."
            )

        if position_ids is None or not position_ids.numel():
            if inputs_embeds.shape[1] > max_positions:
                raise ValueError(message(inputs_embeds.shape[1]))
            return
        longest = position_ids.max() + 1  # packed rows restart their positions; explicit positions may be offset
        torch_compilable_check(longest <= max_positions, lambda: message(int(longest)))


def _chunk_nll_sum(lm_head, hidden, targets):
    return torch.nn.functional.cross_entropy(lm_head(hidden).float(), targets, reduction="sum")


def chunked_lm_loss(hidden_states, lm_head, shift_labels, chunk_size, num_items_in_batch=None):
    """The causal LM loss of `hidden_states` ([batch, seq, hidden]) against `shift_labels` (already shifted, -100 =
    ignored), as transformers' loss computes it (float32 cross-entropy, summed, divided by `num_items_in_batch` or
    by the number of targets), with the LM head applied to `chunk_size` target tokens at a time under activation
    checkpointing: only one chunk's logits exist at a time, in forward and in backward."""
    if chunk_size <= 0:
        raise ValueError(f"loss_chunk_size must be a positive number of tokens, got {chunk_size}.")
    from torch.utils.checkpoint import checkpoint

    targets = shift_labels.reshape(-1).to(hidden_states.device)
    keep = targets != -100
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])[keep]
    targets = targets[keep]
    total = hidden_states.sum() * 0.0  # keeps the graph (and a float loss) when no token is a target
    for start in range(0, targets.numel(), chunk_size):
        total = total + checkpoint(_chunk_nll_sum, lm_head, hidden[start:start + chunk_size],
                                   targets[start:start + chunk_size], use_reentrant=False)
    denominator = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
    if torch.is_tensor(denominator):
        denominator = denominator.to(total.device)
    return total.float() / denominator


class ViFTForConditionalGeneration(ViFTPreTrainedModel, GenerationMixin):
    """ViFT with a language-modelling head; `generate` supports ViFT's fused inference (`fusion=True`)."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # As Llava and the decoder LMs declare: the LM head split by vocabulary, its logits gathered on every rank.
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: ViFTConfig):
        super().__init__(config)
        self.model = ViFTModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs):
        if getattr(self, "_auto_class", None) is not None:
            add_auto_model_entry(self)
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_components(cls, vision_model, language_model, image_token="<image>", dtype=None, **config_overrides):
        """Builds a ViFT model from a pretrained vision tower and a pretrained decoder LM (Hub ids or local paths,
        e.g. `"google/siglip-so400m-patch14-384"` and `"Qwen/Qwen2.5-7B-Instruct"`).

        The towers keep their pretrained weights; the projector is freshly initialised; `image_token` is added to
        the language model's tokenizer (as `ViFTProcessor.from_components` does) and the embeddings are resized
        when the tokenizer outgrows them. `config_overrides` go to `ViFTConfig` (e.g. `fusion_layers=[0, 28]`).
        """
        load_kwargs = {"dtype": dtype} if dtype is not None else {}
        vision_config = vision_tower_config(AutoConfig.from_pretrained(vision_model))
        vision_class = AutoModel._model_mapping[type(vision_config)]
        vision = vision_class.from_pretrained(vision_model, **load_kwargs)
        causal_lm = AutoModelForCausalLM.from_pretrained(language_model, **load_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(language_model)
        image_token_id = add_image_token(tokenizer, image_token)

        config = ViFTConfig(
            vision_config=vision.config.to_dict(),
            text_config=causal_lm.config.to_dict(),
            image_token_id=image_token_id,
            **config_overrides,
        )
        with torch.device("meta"):
            model = cls(config)
        model.model.vision_tower = vision
        model.model.language_model = causal_lm.get_decoder()
        # One config object per tower, as in a model built from its config: the towers' attention layers read
        # their own config, and `set_attn_implementation` changes (and checks) a sub-config through the sub-model
        # that holds it; a copy would be set unchecked ("undefined behavior") and would not reach the layers.
        config.vision_config = vision.config
        config.text_config = causal_lm.config
        model.lm_head = causal_lm.get_output_embeddings()
        projector = ViFTMultiModalProjector(config).to(dtype=next(causal_lm.parameters()).dtype)
        model._init_weights(projector)
        model.model.multi_modal_projector = projector
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        model.config.text_config.vocab_size = model.get_input_embeddings().num_embeddings
        # The LM's generation defaults (its end-of-turn tokens above all) carry over.
        model.generation_config = causal_lm.generation_config
        return model

    @property
    def language_model(self):
        return self.model.language_model

    @property
    def vision_tower(self):
        return self.model.vision_tower

    @property
    def multi_modal_projector(self):
        return self.model.multi_modal_projector

    def get_image_features(self, pixel_values, vision_feature_layer=None, vision_feature_select_strategy=None, **kwargs):
        return self.model.get_image_features(pixel_values, vision_feature_layer, vision_feature_select_strategy, **kwargs)

    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        logits_to_keep=0,
        vision_feature_layer=None,
        vision_feature_select_strategy=None,
        image_features=None,
        cache=None,
        loss_chunk_size=None,
        **kwargs,
    ):
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Targets for the causal LM loss (-100 = ignored). In padding-free packed rows (`attention_mask=None`,
            `position_ids` restarting at 0 per sample) no label is predicted across a sample boundary.
        loss_chunk_size (`int`, *optional*):
            With `labels`: compute the LM head and the loss `loss_chunk_size` target tokens at a time (recomputed in
            backward), so the `[tokens x vocab]` logits never exist at once; the output then has no `logits`.
        The processor's `text_input_ids` / `text_attention_mask` (used only by fused generation) are ignored here.
        """
        kwargs.pop("text_input_ids", None)
        kwargs.pop("text_attention_mask", None)
        past_key_values = take_cache(past_key_values, {"cache": cache})
        return_dict = resolve_return_dict(self.config, kwargs.pop("return_dict", None))
        if self.model.vpgc is not None and labels is not None:
            kwargs["instruction_labels"] = labels
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            image_features=image_features,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        chunked = bool(loss_chunk_size) and labels is not None
        logits = None
        if not chunked:
            slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(hidden_states[:, slice_indices, :])

        loss = None
        if labels is not None:
            if self.config.image_token_id is not None:
                # image placeholders are inputs, never targets (TRL's generic collator leaves them in the labels)
                labels = labels.masked_fill(labels == self.config.image_token_id, -100)
            if attention_mask is None and position_ids is not None and "shift_labels" not in kwargs:
                kwargs["shift_labels"] = packed_shift_labels(labels, position_ids)
            if chunked:
                shift_labels = kwargs.get("shift_labels")
                if shift_labels is None:
                    shift_labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
                loss = chunked_lm_loss(hidden_states, self.lm_head, shift_labels, int(loss_chunk_size),
                                       kwargs.get("num_items_in_batch"))
            else:
                loss = self.loss_function(
                    logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
                )

        output = ViFTCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_NAME: cache_of(outputs)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
        )
        return output if return_dict else output.to_tuple()

    def prepare_inputs_for_generation(
        self, *args, pixel_values=None, image_features=None, image_patch_features=None, is_first_iteration=False,
        vpgc_prompt_length=None, **kwargs,
    ):
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if vpgc_prompt_length is not None:
            model_inputs["vpgc_prompt_length"] = vpgc_prompt_length
        # Images enter every forward that still sees the prompt's image tokens uncached: the prefill, every forward
        # without a cache, and the first forward of an assistant model (which `generate` runs with
        # is_first_iteration=False). Later forwards read the images from the KV cache.
        input_ids = args[0] if args else kwargs.get("input_ids")
        fed = model_inputs.get("input_ids")
        sees_whole_sequence = fed is not None and input_ids is not None and fed.shape[-1] == input_ids.shape[-1]
        keep = is_first_iteration or not kwargs.get("use_cache", True) or sees_whole_sequence
        image_inputs = {
            "pixel_values": pixel_values, "image_features": image_features, "image_patch_features": image_patch_features
        }
        for name, value in image_inputs.items():
            if keep:
                model_inputs[name] = value
            else:
                model_inputs.pop(name, None)
        return model_inputs

    def generate(
        self,
        inputs=None,
        fusion=None,
        fusion_alpha=None,
        fusion_beta=None,
        fusion_layers=None,
        fusion_alignment=None,
        text_input_ids=None,
        text_attention_mask=None,
        **kwargs,
    ):
        r"""
        `GenerationMixin.generate`, plus ViFT's ability-fused inference with `fusion=True`.

        fusion (`bool`, *optional*): fuse the text-only prompt's hidden states into the multimodal prompt's
            (defaults to `generation_config.fusion`, else `False`). Rows without images generate as usual.
        fusion_alpha, fusion_beta (`float`, *optional*), fusion_layers (`(start, end)`, *optional*): at the input
            of each decoder layer l in [start, end), during prefill only, the last n positions of the multimodal
            prompt get `+ alpha * H_l(q) - beta * H_l(v,q)` (n = length of the text-only prompt q). Defaults come
            from the generation config, else the model config.
        fusion_alignment (`str`, *optional*): `"right"` (the authors' algorithm above, the default) or `"token"`:
            each token of q steers the position of the same text token in the multimodal prompt (image tokens are
            left alone), for prompts with images between pieces of text. Defaults as for the weights.
        text_input_ids, text_attention_mask (`torch.LongTensor`, *optional*): the text-only prompts q (the processor
            returns them with `return_text_only=True`: the same chat template with the images removed). Without
            them, q is derived by dropping the image tokens from `input_ids`. Ignored when fusion is off.
        """
        if fusion is None:
            fusion = bool(getattr(self.generation_config, "fusion", False))
        if inputs is not None:
            kwargs["input_ids"] = inputs
        self._check_generation_length(kwargs)
        if self.model.vpgc is not None and kwargs.get("input_ids") is not None:
            kwargs["vpgc_prompt_length"] = kwargs["input_ids"].shape[1]
        if not fusion:
            return super().generate(**kwargs)
        return fused_generate(
            self,
            super().generate,
            text_input_ids=text_input_ids,
            text_attention_mask=text_attention_mask,
            fusion_alpha=fusion_alpha,
            fusion_beta=fusion_beta,
            fusion_layers=fusion_layers,
            fusion_alignment=fusion_alignment,
            **kwargs,
        )

    def _check_generation_length(self, kwargs):
        """Refuses, before any work, a generation that would run past the language model's maximum positions."""
        prompt = kwargs.get("input_ids")
        if prompt is None:
            prompt = kwargs.get("inputs_embeds")
        max_positions = supported_positions(self.config.text_config)
        if prompt is None or not max_positions:
            return
        config = kwargs.get("generation_config") or self.generation_config
        new_tokens = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
        total = prompt.shape[1] + new_tokens if new_tokens is not None else kwargs.get("max_length", config.max_length)
        if total is not None and total > max_positions:
            raise ValueError(
                f"The prompt has {prompt.shape[1]} tokens and generation may reach {total} tokens, but the language "
                f"model supports at most {max_positions} positions (text_config.max_position_embeddings, with its RoPE "
                f"scaling): shorten the prompt or lower max_new_tokens to {max(max_positions - prompt.shape[1], 0)} "
                f"or fewer."
            )

    def explain_fusion(self, input_ids, attention_mask=None, text_input_ids=None, text_attention_mask=None, tokenizer=None,
                       fusion_alignment="right"):
        """For each prompt, the multimodal positions that fused generation steers and the text-only tokens they are
        aligned with (see `fusion_vift.explain_fusion`), for `fusion_alignment` ("right" or "token"; None gives
        both: `{"right": rows, "token": rows}`). Without `text_input_ids`, q is derived as `generate` does."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if text_input_ids is None:
            pad = self.generation_config.pad_token_id
            text_input_ids, text_attention_mask = derive_text_only_prompt(
                input_ids, attention_mask, self.config.image_token_id, 0 if pad is None else int(pad)
            )
        return explain_fusion(
            input_ids, attention_mask, text_input_ids, text_attention_mask, tokenizer, self.config.image_token_id,
            fusion_alignment,
        )


def add_auto_model_entry(model):
    """Maps `AutoModel` to the model's own class in `model.config.auto_map`: `register_for_auto_class` records one auto
    class per class, and AutoModel must load the generating model too."""
    module = type(model).__module__.rsplit(".", 1)[-1]
    model.config.auto_map = {**(getattr(model.config, "auto_map", None) or {}), "AutoModel": f"{module}.{type(model).__name__}"}


def packed_shift_labels(labels, position_ids):
    """Next-token targets for padding-free packed rows: the target of a sample's last token (the next sample's
    first token) is ignored, so no loss crosses a sample boundary."""
    shift_labels = F.pad(labels[..., 1:], (0, 1), value=-100)
    next_starts_sample = F.pad(position_ids[..., 1:] == 0, (0, 1), value=True)
    return shift_labels.masked_fill(next_starts_sample, -100)


__all__ = ["ViFTForConditionalGeneration", "ViFTModel", "ViFTPreTrainedModel"]
