"""Convert an existing checkpoint (the authors' Bunny format, or llava-hf LlavaForConditionalGeneration) into a ViFT
folder that loads with trust_remote_code and supports fused generation.

    python -m hub.convert_llava --source SOURCE --output OUTPUT [--layout auto|bunny|llava] \
        [--vision_tower PATH_OR_ID] [--language_model PATH] [--conv_mode MODE] [--dtype bfloat16] \
        [--max_shard_size 5GB] [--chat_template FILE] [--fusion_layers START END] [--fusion_alpha A] [--fusion_beta B] \
        [--compare] [--overwrite]

Bunny checkpoints whose state dict lacks the vision tower (it was frozen) take it from `mm_vision_tower` in their
config, or from `--vision_tower`; projector-only stage-1 outputs (mm_projector.bin) need `--language_model`.
Bunny prompts follow Bunny's conversation mode: by default the one of the checkpoint's model_type (bunny-qwen2: qwen2,
bunny-llama: llama, a projector-only checkpoint: plain); `--conv_mode` chooses another (bunny, phi3, minicpm, llama,
qwen2, plain). `--compare` (llava only) loads source and result in float32 (memory for both), feeds each its own
processor's ids and pixels for the same prompt and random RGBA images, and prints the largest logits difference.
"""

import sys
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import HfArgumentParser

from modeling_vift.conversion import ConversionError, compare_with_llava, convert_checkpoint
from modeling_vift.conversion.llava import detect_layout


@dataclass
class ConvertArguments:
    source: str = field(metadata={"help": "the checkpoint folder to convert"})
    output: str = field(metadata={"help": "the ViFT folder to write (must not exist or be empty)"})
    layout: Literal["auto", "bunny", "llava"] = "auto"
    vision_tower: str | None = field(default=None, metadata={"help": "Bunny: the vision tower folder or Hub id"})
    language_model: str | None = field(
        default=None, metadata={"help": "Bunny: the base LM folder (projector-only sources)"}
    )
    conv_mode: str | None = field(
        default=None, metadata={"help": "Bunny: the conversation mode of the prompts (default: from model_type)"}
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = field(
        default=None, metadata={"help": "cast the weights (default: keep the stored dtype)"}
    )
    max_shard_size: str = "5GB"
    chat_template: str | None = field(default=None, metadata={"help": "a jinja file (or string) for the processor"})
    fusion_layers: list[int] | None = field(default=None, metadata={"help": "START END"})
    fusion_alpha: float | None = None
    fusion_beta: float | None = None
    compare: bool = field(default=False, metadata={"help": "llava: print max |logits difference| to the source"})
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty OUTPUT folder"})


def main(argv=None):
    (args,) = HfArgumentParser(ConvertArguments).parse_args_into_dataclasses(argv)
    overrides = {k: v for k, v in (("fusion_layers", args.fusion_layers), ("fusion_alpha", args.fusion_alpha),
                                   ("fusion_beta", args.fusion_beta)) if v is not None}
    try:
        if args.compare and (args.layout if args.layout != "auto" else detect_layout(args.source)) != "llava":
            raise ConversionError(
                "--compare needs the source's transformers model class, which llava-hf sources have and Bunny sources "
                "do not: drop --compare (the tests check Bunny conversions against a reference implementation)."
            )
        plan = convert_checkpoint(
            args.source,
            args.output,
            layout=args.layout,
            vision_tower=args.vision_tower,
            language_model=args.language_model,
            dtype=getattr(torch, args.dtype) if args.dtype else None,
            max_shard_size=args.max_shard_size,
            chat_template=args.chat_template,
            overwrite=args.overwrite,
            conv_mode=args.conv_mode,
            **overrides,
        )
    except (ConversionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in plan.notes:
        print(f"note: {note}")
    print(f"Converted the {plan.layout} checkpoint {args.source} into {args.output}.")
    if args.compare:
        print(f"max |logits difference| to the source: {compare_with_llava(args.source, args.output):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
