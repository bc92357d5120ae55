"""Training ViFT with TRL's `SFTTrainer`: stage set-up (what is trained, at which learning rate), the trainer
subclass for what TRL has no hook for, and the `main` the recipes in `recipes/` call.

- Stage 1 (alignment): only the projector is trained (vision tower and language model frozen), "plain" template.
- Stage 2 (ability-specific fine-tuning): language model + projector + vision tower, with the language model at
  `learning_rate` and the projector / vision tower at their own learning rates (the authors: 1e-5 and 2e-6); or, with
  `use_peft`, LoRA on the language model only and the projector fully trained.

TRL refuses packing for datasets with images, so the recipes hand `SFTTrainer` an already packed dataset
(`dataset_kwargs.skip_prepare_dataset`, `remove_unused_columns=False`) and the vision-aware collator of `packing.py`.
`ViFTSFTTrainer` adds parameter groups with separate learning rates and the report of skipped samples.

Not part of the remote-code bundle.
"""

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser

from .data import MixtureConfig, SkipReport, build_training_data
from .distributed import parameter_layout, save_fsdp2_model, unshard_fsdp2_lm_head
from .packing import (
    PACKED_SDPA,
    SKIPS_KEY,
    ViFTDataCollator,
    fill_ratio,
    merge_skips,
    packed_rows_dataset,
    register_packed_sdpa,
)


logger = logging.getLogger(__name__)

LM_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
REPORT_FILE = "vift_data_report.json"


@dataclass
class ViFTScriptArguments:
    """Data and stage options of the ViFT recipes (next to TRL's `SFTConfig` and `ModelConfig`).

    `SFTConfig.packing` switches on ViFT's vision-aware packing (rows of `max_length` tokens, padding-free);
    `SFTConfig.padding_free` without packing concatenates unpacked samples the same way."""

    dataset_mixture: dict | str | None = field(
        default=None,
        metadata={"help": "Mixture YAML path, or an inline mapping {seed, num_samples, sources: [...]} (see data.py)."},
    )
    vision_tower_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Build ViFT from this vision tower and the LM `model_name_or_path` (a fresh projector). "
                  "Leave unset to load `model_name_or_path` as a ViFT checkpoint (e.g. the stage-1 output)."},
    )
    image_token: str = field(default="<image>", metadata={"help": "Image placeholder added to the LM tokenizer."})
    template: str | None = field(
        default=None, metadata={"help": "'plain' (image then caption) or 'chat'; defaults: stage 1 plain, stage 2 chat."}
    )
    pad_to_square: bool | None = field(
        default=None, metadata={"help": "Pad images to square with the mean colour (defaults: stage 1 no, stage 2 yes)."}
    )
    overlong: str = field(
        default="truncate",
        metadata={"help": "Samples longer than max_length: 'truncate' the text or 'drop' them. A sample whose images "
                  "do not fit is always dropped (images are never cut)."},
    )
    max_images_per_row: int | None = field(default=8, metadata={"help": "Cap on images per packed row."})
    packing_split_turns: bool = field(
        default=False,
        metadata={"help": "Packing: let multi-turn text-only conversations be cut after an assistant turn to fill "
                  "rows (every assistant token keeps its loss once; a later piece loses the earlier turns as "
                  "context). Lifts the fill of caption-heavy mixes; samples with images are never cut."},
    )
    packing_split_target_fill: float = field(
        default=0.97,
        metadata={"help": "With packing_split_turns: cut nothing when whole samples already fill this share of the "
                  "row slots."},
    )
    strict_images: bool = field(
        default=False, metadata={"help": "Fail on the first bad record or missing/unreadable image instead of skipping."}
    )
    check_image_files: bool = field(
        default=True, metadata={"help": "Check that image files exist while tokenising (skips them before packing)."}
    )
    train_vision_tower: bool = field(default=True, metadata={"help": "Stage 2 (full): also train the vision tower."})
    projector_learning_rate: float | None = field(
        default=None, metadata={"help": "Stage 2: projector learning rate (default: learning_rate)."}
    )
    vision_tower_learning_rate: float | None = field(
        default=None, metadata={"help": "Stage 2: vision tower learning rate (default: learning_rate)."}
    )
    vpgc_layer: int | None = field(
        default=None,
        metadata={"help": "VPG-C stage: switch VPG-C on at this decoder layer when the checkpoint has none (its "
                  "weights start at zero, an exact no-op)."},
    )
    vpgc_num_heads: int = field(default=4, metadata={"help": "VPG-C stage: attention heads of a new VPG-C module."})
    vpgc_hidden_size: int | None = field(
        default=None, metadata={"help": "VPG-C stage: width of a new VPG-C module (default: the vision hidden size)."}
    )
    loss_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Compute the LM head and loss this many target tokens at a time with the model's own "
                  "chunked loss (no [tokens x vocab] logits at once). Unset: TRL's fused LM head (also chunked, "
                  "in 4096-token x 32768-column tiles, Triton-fused on GPU)."},
    )
    always_run_vision: bool = field(
        default=True,
        metadata={"help": "Give text-only batches a zero-loss image so the vision tower runs on every rank "
                  "(required by FSDP / ZeRO-3, and by DDP without find_unused_parameters)."},
    )


# transformers 5.24 renamed `gradient_checkpointing*` to `activation_checkpointing*` (the old names warn); 5.17-5.23
# know only the old names.
HAS_ACTIVATION_CHECKPOINTING = "activation_checkpointing" in {f.name for f in dataclasses.fields(TrainingArguments)}
CHECKPOINTING_NAMES = (("activation_checkpointing", "gradient_checkpointing"),
                       ("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs"))


@dataclass
class ViFTSFTConfig(SFTConfig):
    """TRL's `SFTConfig` with one spelling of checkpointing for every supported transformers: the recipes' YAML say
    `activation_checkpointing` (and `activation_checkpointing_kwargs`), which this class passes on under the name the
    running transformers has. Left unset, checkpointing is on (TRL's default). `gradient_checkpointing*` still works
    (transformers >= 5.24 warns that it is deprecated)."""

    if HAS_ACTIVATION_CHECKPOINTING:
        # TRL's default (True) would count as "set" and make transformers warn about the old name on every run.
        gradient_checkpointing: bool | None = field(
            default=None, metadata={"help": "Deprecated name of `activation_checkpointing` (transformers >= 5.24)."}
        )
    else:
        activation_checkpointing: bool | None = field(
            default=None, metadata={"help": "Trade compute for memory: recompute activations in the backward pass "
                                    "(passed on as `gradient_checkpointing` before transformers 5.24; default: on)."}
        )
        activation_checkpointing_kwargs: dict | str | None = field(
            default=None, metadata={"help": "Keyword arguments of `gradient_checkpointing_enable()`, e.g. "
                                    "{\"use_reentrant\": false} (passed on as `gradient_checkpointing_kwargs`)."}
        )

    def __post_init__(self):
        # The old name set away from its default next to a different new one would otherwise be dropped silently.
        old_default = None if HAS_ACTIVATION_CHECKPOINTING else True
        if self.activation_checkpointing is not None and self.gradient_checkpointing not in (
                None, old_default, self.activation_checkpointing):
            raise ValueError(
                f"activation_checkpointing={self.activation_checkpointing} and gradient_checkpointing="
                f"{self.gradient_checkpointing} disagree: set activation_checkpointing only (gradient_checkpointing is "
                f"its deprecated name), e.g. --activation_checkpointing {str(self.gradient_checkpointing).lower()}."
            )
        if HAS_ACTIVATION_CHECKPOINTING:
            if self.activation_checkpointing is None and self.gradient_checkpointing is None:
                self.activation_checkpointing = True
        else:
            for new, old in CHECKPOINTING_NAMES:
                if getattr(self, new) is not None:
                    setattr(self, old, getattr(self, new))
        super().__post_init__()
        if not HAS_ACTIVATION_CHECKPOINTING:
            for new, old in CHECKPOINTING_NAMES:
                setattr(self, new, getattr(self, old))  # one value under both names, as transformers >= 5.24 keeps


def make_parser():
    return TrlParser((ViFTScriptArguments, ViFTSFTConfig, ModelConfig))


# ----------------------------------------------------------------------------------------------------------------------
# Model and stage
# ----------------------------------------------------------------------------------------------------------------------


def _dtype(name):
    if name in (None, "auto"):
        return name
    if isinstance(name, torch.dtype):
        return name
    if name not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"dtype must be one of auto, bfloat16, float16, float32; got {name!r}.")
    return getattr(torch, name)


def load_stage_model_and_processor(script_args, model_args, stage):
    """A ViFT model and processor: from a ViFT checkpoint, or from a vision tower and a language model."""
    from .. import ViFTForConditionalGeneration, ViFTProcessor

    register_packed_sdpa()  # so that attn_implementation="vift_packed_sdpa" names a registered implementation
    if model_args.model_name_or_path is None:
        raise ValueError("Set `model_name_or_path` (a ViFT checkpoint, or the language model with "
                         "`vision_tower_name_or_path`).")
    pad_to_square = script_args.pad_to_square if script_args.pad_to_square is not None else stage != 1
    dtype = _dtype(model_args.dtype)
    if script_args.vision_tower_name_or_path:
        model = ViFTForConditionalGeneration.from_components(
            script_args.vision_tower_name_or_path, model_args.model_name_or_path, image_token=script_args.image_token,
            dtype=None if dtype == "auto" else dtype,
        )
        processor = ViFTProcessor.from_components(
            script_args.vision_tower_name_or_path, model_args.model_name_or_path, image_token=script_args.image_token,
            pad_to_square=pad_to_square,
        )
    else:
        from ..publishing.upload import check_model_location

        check_model_location(model_args.model_name_or_path)
        kwargs = {"revision": model_args.model_revision}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if getattr(script_args, "vpgc_layer", None) is not None:
            from .. import ViFTConfig

            config = ViFTConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
            config = ViFTConfig.from_dict({
                **config.to_dict(), "vpgc_layer": script_args.vpgc_layer,
                "vpgc_num_heads": script_args.vpgc_num_heads, "vpgc_hidden_size": script_args.vpgc_hidden_size,
            })
            kwargs["config"] = config
        model = ViFTForConditionalGeneration.from_pretrained(model_args.model_name_or_path, **kwargs)
        processor = ViFTProcessor.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
        processor.pad_to_square = pad_to_square
    if model_args.attn_implementation:
        model.set_attn_implementation(model_args.attn_implementation)
    if processor.image_token_id != model.config.image_token_id:
        raise ValueError(
            f"The processor's image token id ({processor.image_token_id}) differs from the model's "
            f"config.image_token_id ({model.config.image_token_id}): use the processor saved with the model."
        )
    return model, processor


def attn_uses_seq_lens(implementation):
    """Whether an attention implementation attends packed samples by their boundaries (`cu_seq_lens_q`)."""
    return implementation == PACKED_SDPA or implementation.startswith("flash_attention")


def configure_stage(model, stage, use_lora=False, train_vision_tower=True):
    """Sets `requires_grad` for a stage: stage 1 trains the projector only; stage 2 trains the language model,
    the projector and (if `train_vision_tower`) the vision tower, less what its forward never uses
    (`unused_vision_parameters`). With LoRA, PEFT freezes the base weights itself and
    the vision tower stays frozen. Stage "vpgc" trains the VPG-C module only. Returns the number of trainable
    parameters."""
    base = model.model
    if stage == "vpgc":
        if base.vpgc is None:
            raise ValueError("The VPG-C stage needs a model with VPG-C: set `vpgc_layer` (e.g. the middle layer).")
        if use_lora:
            raise ValueError("The VPG-C stage trains the VPG-C module only; LoRA (use_peft) does not apply.")
        model.requires_grad_(False)
        base.vpgc.requires_grad_(True)
    elif stage == 1:
        model.requires_grad_(False)
        base.multi_modal_projector.requires_grad_(True)
    elif stage == 2:
        model.requires_grad_(True)
        if use_lora or not train_vision_tower:
            base.vision_tower.requires_grad_(False)
        else:
            unused = unused_vision_parameters(model)
            for name, parameter in base.vision_tower.named_parameters():
                if name in unused:
                    parameter.requires_grad_(False)
    else:
        raise ValueError(f"stage must be 1, 2 or 'vpgc', got {stage!r}.")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def unused_vision_parameters(model):
    """Names (within the vision tower) of the tower's parameters the forward never uses: the encoder layers after
    `vision_feature_layer` (ViFT reads that hidden state, not the tower's output) and what acts only on the tower's
    output (`post_layernorm`, the pooling `head`). Left trainable they never get a gradient, the optimizer keeps no
    state for them, and a sharded FSDP2 checkpoint then cannot be resumed."""
    base = model.model
    tower = base.vision_tower
    layers = getattr(getattr(getattr(tower, "vision_model", tower), "encoder", None), "layers", None)
    if layers is None:
        return set()
    first_unused = base.config.vision_feature_layer % (len(layers) + 1)  # hidden_states[k] is the output of layer k-1
    prefixes = tuple(f"encoder.layers.{i}." for i in range(first_unused, len(layers))) + ("post_layernorm.", "head.")
    return {name for name, _ in tower.named_parameters()
            if name.removeprefix("vision_model.").startswith(prefixes)}


def lm_lora_config(model_args):
    """LoRA on the language model only (never the vision tower), with the projector fully trained and saved."""
    from peft import LoraConfig

    targets = model_args.lora_target_modules or list(LM_LORA_TARGETS)
    if isinstance(targets, str):
        targets = [targets]
    if targets == ["all-linear"]:
        targets = list(LM_LORA_TARGETS)
    pattern = r".*\.language_model\..*\.(" + "|".join(targets) + r")"
    modules_to_save = ["multi_modal_projector", *(model_args.lora_modules_to_save or [])]
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=pattern,
        modules_to_save=modules_to_save,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        task_type=model_args.lora_task_type,
    )


def parameter_part(name):
    """`vision_tower`, `multi_modal_projector` or `language_model` (everything else: LM layers, embeddings, head)."""
    for part in ("vision_tower", "multi_modal_projector"):
        if f".{part}." in f".{name}." or name.startswith(f"{part}."):
            return part
    return "language_model"


# ----------------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------------


def prepare_sft_config(args):
    """Makes `SFTConfig` hand the ViFT dataset and collator through untouched: TRL must not tokenise, pack, pad or
    drop columns. Returns `(packing, padding_free)` as the user asked for them (ViFT implements both)."""
    packing, padding_free = bool(args.packing), bool(args.padding_free or args.packing)
    if packing and args.packing_strategy != "bfd":
        raise ValueError(f"ViFT packs with best-fit decreasing only; packing_strategy={args.packing_strategy!r} "
                         f"is not supported (use 'bfd').")
    if args.assistant_only_loss or args.completion_only_loss:
        raise ValueError("assistant_only_loss / completion_only_loss are TRL's own label masks; ViFT always builds "
                         "assistant-only labels (caption-only for the plain template). Leave both unset.")
    args.packing = False
    args.padding_free = False
    args.remove_unused_columns = False
    args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    return packing, padding_free


class ViFTSFTTrainer(SFTTrainer):
    """`SFTTrainer` with per-part learning rates (`learning_rates={"vision_tower": lr, "multi_modal_projector": lr}`,
    the rest at `args.learning_rate`) and a report of the samples the collator skipped (missing or unreadable
    images, each file counted once however often it is loaded), logged as `skipped_samples` and gathered across
    ranks by `skip_report()`."""

    def __init__(self, *args, learning_rates=None, data_report=None, card=None, loss_chunk_size=None, **kwargs):
        self.learning_rates = dict(learning_rates or {})
        self.loss_chunk_size = loss_chunk_size
        unknown = set(self.learning_rates) - {"vision_tower", "multi_modal_projector", "language_model"}
        if unknown:
            raise ValueError(f"learning_rates keys must be vision_tower, multi_modal_projector or language_model; "
                             f"got {sorted(unknown)}.")
        self.data_report = data_report or SkipReport()
        self.card = dict(card or {})  # `write_training_card`'s stage / started_from / vision_tower for saved folders
        self.failed_images = {}  # "source/reason" -> the images that failed while training (each counted once)
        training_args = kwargs.get("args")
        if training_args is not None and (training_args.remove_unused_columns or not (
                training_args.dataset_kwargs or {}).get("skip_prepare_dataset")):
            raise ValueError("ViFTSFTTrainer takes a dataset built by modeling_vift.training.packing: call "
                             "modeling_vift.training.prepare_sft_config(args) first (it sets remove_unused_columns="
                             "False and dataset_kwargs.skip_prepare_dataset=True).")
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        if self.optimizer is not None or not self.learning_rates:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups = {}
        for name, param in opt_model.named_parameters():
            if not param.requires_grad:
                continue
            part = parameter_part(name)
            lr = self.learning_rates.get(part, self.args.learning_rate)
            key = (part, name in decay)
            if key not in groups:
                groups[key] = {"params": [], "lr": lr, "weight_decay": self.args.weight_decay if key[1] else 0.0,
                               "name": f"{part}{'' if key[1] else '_no_decay'}"}
            groups[key]["params"].append(param)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs = {k: v for k, v in optimizer_kwargs.items() if k != "lr"}
        # The language model's groups first: the Trainer logs the learning rate of the first group.
        order = {"language_model": 0, "multi_modal_projector": 1, "vision_tower": 2}
        ordered = [groups[key] for key in sorted(groups, key=lambda k: (order[k[0]], not k[1]))]
        self.optimizer = optimizer_cls(ordered, lr=self.args.learning_rate, **optimizer_kwargs)
        for group in self.optimizer.param_groups:
            logger.info("param group %s: %d tensors, lr %g", group["name"], len(group["params"]), group["lr"])
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        skips = inputs.pop(SKIPS_KEY, None)
        if skips and model.training:
            merge_skips(self.failed_images, skips)
        if model.training and self.is_fsdp_enabled:
            unshard_fsdp2_lm_head(model)
        if self.loss_chunk_size:
            # The model's own chunked loss (through the model's forward, so FSDP/DDP wrappers see the call),
            # scaled as TRL scales its fused-head loss.
            outputs = model(**inputs, use_cache=False, loss_chunk_size=self.loss_chunk_size,
                            num_items_in_batch=num_items_in_batch)
            loss = outputs.loss
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def log(self, logs, start_time=None):
        if "loss" in logs:
            logs["skipped_samples"] = sum(len(images) for images in self.failed_images.values())
        super().log(logs, start_time)

    def create_model_card(self, *args, **kwargs):
        """No TRL card: its draft names no base model ("a fine-tuned version of [None]"); `save_model` writes ViFT's
        card into every folder it saves instead."""

    def save_model(self, output_dir=None, _internal_call=False):
        """Saves as the Trainer does (checkpoints included), then writes ViFT's card over any other (PEFT's template
        for adapters)."""
        super().save_model(output_dir, _internal_call=_internal_call)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save and os.path.isdir(output_dir):
            from accelerate.utils import is_peft_model
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            is_checkpoint = os.path.basename(os.path.normpath(output_dir)).startswith(f"{PREFIX_CHECKPOINT_DIR}-")
            write_training_card(output_dir, self.model.config, step=self.state.global_step if is_checkpoint else None,
                                adapter=is_peft_model(self.accelerator.unwrap_model(self.model)), **self.card)

    def skip_report(self):
        """The data-preparation report plus the samples skipped while training, summed over all ranks."""
        from accelerate.utils import gather_object

        report = SkipReport().merge(self.data_report)
        failed = {}
        for rank_failed in gather_object([{key: sorted(images) for key, images in self.failed_images.items()}]):
            merge_skips(failed, rank_failed)  # an image that failed on two ranks is one image
        for key, images in failed.items():
            report.skipped[key] += len(images)
        return report


# ----------------------------------------------------------------------------------------------------------------------
# Recipe entry point
# ----------------------------------------------------------------------------------------------------------------------


def build_trainer(stage, script_args, training_args, model_args):
    """Everything up to a ready `ViFTSFTTrainer` (used by `main` and by tests)."""
    if script_args.dataset_mixture is None:
        raise ValueError("Set `dataset_mixture` (a mixture YAML path or an inline mapping with `sources`).")
    use_lora = bool(model_args.use_peft)
    if stage == 1 and use_lora:
        raise ValueError("Stage 1 trains the projector only; LoRA (use_peft) applies to stage 2.")
    packing, padding_free = prepare_sft_config(training_args)
    if padding_free and model_args.attn_implementation is None:
        model_args.attn_implementation = PACKED_SDPA
        logger.info("Padding-free batches: attention runs sample by sample (attn_implementation=%s).", PACKED_SDPA)
    model, processor = load_stage_model_and_processor(script_args, model_args, stage)
    template = script_args.template or ("plain" if stage == 1 else "chat")
    mixture = MixtureConfig.from_value(script_args.dataset_mixture)

    with training_args.main_process_first(desc="ViFT data preparation"):
        data = build_training_data(
            mixture, processor, max_length=training_args.max_length, template=template,
            overlong=script_args.overlong, strict=script_args.strict_images,
            check_image_files=script_args.check_image_files,
            max_images_per_sample=script_args.max_images_per_row if packing else None,
            num_proc=training_args.dataset_num_proc, seed=training_args.seed, log=logger.info,
        )
    logger.info(data.report.format("ViFT data preparation"))
    split_turns = packing and script_args.packing_split_turns
    train_dataset = packed_rows_dataset(data, training_args.max_length, packing, script_args.max_images_per_row,
                                        split_turns=split_turns,
                                        split_target_fill=script_args.packing_split_target_fill)
    if packing:
        logger.info("Packed %d samples into %d rows of %d tokens (fill %.4f).", len(data), len(train_dataset),
                    training_args.max_length, fill_ratio(train_dataset["num_tokens"], training_args.max_length))
    if split_turns:
        pieces = sum(len(r) for r in train_dataset["rows"])
        logger.info("packing_split_turns: %d pieces for %d samples (%d cuts after assistant turns).", pieces,
                    len(data), pieces - len(data))
    collator = ViFTDataCollator(
        processor, data, padding_free=padding_free, strict_images=script_args.strict_images,
        always_run_vision=script_args.always_run_vision,
        pad_to_multiple_of=training_args.pad_to_multiple_of if isinstance(training_args.pad_to_multiple_of, int) else None,
        return_seq_lens=padding_free and attn_uses_seq_lens(model.config._attn_implementation),
    )

    if training_args.use_liger_kernel:
        apply_liger_to_language_model(model, training_args.liger_kernel_config)
        training_args.use_liger_kernel = False  # done here: the Trainer's own call would find no kernels for "vift"
    trainable = configure_stage(model, stage, use_lora=use_lora, train_vision_tower=script_args.train_vision_tower)
    logger.info("Stage %s: %d trainable parameters before PEFT.", stage, trainable)
    learning_rates = {}
    if stage == 2:
        if script_args.projector_learning_rate is not None:
            learning_rates["multi_modal_projector"] = script_args.projector_learning_rate
        if script_args.vision_tower_learning_rate is not None and not use_lora:
            learning_rates["vision_tower"] = script_args.vision_tower_learning_rate
    return ViFTSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=processor,
        peft_config=lm_lora_config(model_args) if use_lora else None,
        learning_rates=learning_rates,
        data_report=data.report,
        card={"stage": stage, "started_from": model_args.model_name_or_path,
              "vision_tower": script_args.vision_tower_name_or_path},
        loss_chunk_size=script_args.loss_chunk_size,
    )


def write_training_card(folder, config, stage=None, started_from=None, vision_tower=None, step=None, adapter=False):
    """Writes ViFT's card for a saved training folder (`publishing.model.render_training_card`) as its README.md."""
    from ..publishing.model import render_training_card

    started_from = started_from or getattr(config, "_name_or_path", None) or "an unnamed model"
    card = render_training_card(config.to_dict(), folder, "?" if stage is None else stage, started_from,
                                vision_tower=vision_tower, step=step, adapter=adapter)
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write(card)


def apply_liger_to_language_model(model, kernel_config=None):
    """`use_liger_kernel: true` for a ViFT model: Liger patches models by `config.model_type` and has no kernels for
    "vift" (transformers' Trainer would apply nothing), so its layer kernels (RMSNorm, RoPE, SwiGLU) go onto the
    language model (e.g. "qwen2"). Its fused linear cross-entropy is left off: TRL's fused LM head (or
    `loss_chunk_size`) computes the loss. Needs liger-kernel, hence Triton and a GPU."""
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError as error:
        raise ImportError(
            f"use_liger_kernel: true needs liger-kernel, which is not importable here ({error}). It runs Triton "
            f"kernels, so it needs a CUDA GPU: `pip install liger-kernel` there, or set use_liger_kernel: false "
            f"(TRL's fused LM head already keeps the full logits out of memory)."
        ) from None
    config = {k: v for k, v in (kernel_config or {}).items() if k not in ("fused_linear_cross_entropy", "cross_entropy")}
    _apply_liger_kernel_to_instance(model=model.model.language_model, fused_linear_cross_entropy=False,
                                    cross_entropy=False, **config)


def save_final(trainer, output_dir):
    """Saves the trained model with its processor and remote code; a LoRA model is merged first, so the folder
    loads with `trust_remote_code=True` like any ViFT checkpoint (the adapters stay in the checkpoint-* folders)."""
    from accelerate.utils import is_peft_model

    model = trainer.model
    if is_peft_model(model):
        # The fused LM head is an instance attribute of the base model: drop it before saving the merged weights.
        merged = trainer.accelerator.unwrap_model(model).merge_and_unload()
        merged.__dict__.pop("forward", None)
        if trainer.accelerator.is_main_process:
            merged.save_pretrained(output_dir)
            trainer.processing_class.save_pretrained(output_dir)
            write_training_card(output_dir, merged.config, **trainer.card)
        trainer.accelerator.wait_for_everyone()
    elif trainer.accelerator.is_fsdp2:
        save_fsdp2_model(trainer, output_dir)
    else:
        trainer.save_model(output_dir)


def main(stage, script_args, training_args, model_args):
    """Runs one ViFT training stage and writes the model, the processor and the skip report to `output_dir`."""
    import transformers

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the dataloader workers fork after tokenising
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    trainer = build_trainer(stage, script_args, training_args, model_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    accelerator = trainer.accelerator
    logger.info("[rank %d/%d] parameter layout: %s", accelerator.process_index, accelerator.num_processes,
                json.dumps(parameter_layout(trainer.model, trainer.optimizer)))
    report = trainer.skip_report()
    save_final(trainer, training_args.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.state.save_to_json(os.path.join(training_args.output_dir, "trainer_state.json"))
        trainer.accelerator.print(report.format(f"ViFT stage {stage} skip report"))
        with open(os.path.join(training_args.output_dir, REPORT_FILE), "w") as f:
            json.dump(report.to_dict(), f, indent=2)
        trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    print(f"[rank {accelerator.process_index}/{accelerator.num_processes}] ViFT stage {stage} finished.", flush=True)
    if hasattr(trainer, "end"):
        trainer.end()
    return trainer


def run(stage, args=None):
    """Parses `--config recipe.yaml` plus command-line overrides and runs the stage."""
    script_args, training_args, model_args = make_parser().parse_args_and_config(args)
    return main(stage, script_args, training_args, model_args)


__all__ = [
    "ViFTSFTConfig", "ViFTSFTTrainer", "ViFTScriptArguments", "apply_liger_to_language_model", "build_trainer",
    "configure_stage", "lm_lora_config", "unused_vision_parameters",
    "load_stage_model_and_processor", "main", "make_parser", "parameter_part", "prepare_sft_config", "run", "save_final",
    "write_training_card",
]
