"""Convert an existing checkpoint (the authors' Bunny format, or llava-hf LlavaForConditionalGeneration) into a ViFT
folder that loads with trust_remote_code and supports fused generation.

    python -m hub.convert_llava SOURCE OUTPUT [--layout auto|bunny|llava] [--vision-tower PATH_OR_ID] \
        [--language-model PATH] [--dtype bfloat16] [--max-shard-size 5GB] [--chat-template FILE] \
        [--fusion-layers START END] [--fusion-alpha A] [--fusion-beta B] [--compare] [--overwrite]

Bunny checkpoints whose state dict lacks the vision tower (it was frozen) take it from `mm_vision_tower` in their
config, or from `--vision-tower`; projector-only stage-1 outputs (mm_projector.bin) need `--language-model`.
`--compare` (llava only) loads source and result in float32 (memory for both) and prints the largest logits
difference on a random input.
"""

import argparse
import sys

import torch

from modeling_vift.conversion import ConversionError, compare_with_llava, convert_checkpoint
from modeling_vift.conversion.llava import detect_layout


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hub.convert_llava", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="the checkpoint folder to convert")
    parser.add_argument("output", help="the ViFT folder to write (must not exist or be empty)")
    parser.add_argument("--layout", choices=["auto", "bunny", "llava"], default="auto")
    parser.add_argument("--vision-tower", default=None, help="Bunny: the vision tower folder or Hub id")
    parser.add_argument("--language-model", default=None, help="Bunny: the base LM folder (projector-only sources)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="cast the weights (default: keep the stored dtype)")
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument("--chat-template", default=None, help="a jinja file (or string) for the processor")
    parser.add_argument("--fusion-layers", type=int, nargs=2, default=None, metavar=("START", "END"))
    parser.add_argument("--fusion-alpha", type=float, default=None)
    parser.add_argument("--fusion-beta", type=float, default=None)
    parser.add_argument("--compare", action="store_true", help="llava: print max |logits difference| to the source")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT folder")
    args = parser.parse_args(argv)
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
