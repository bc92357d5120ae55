"""Set-up check: build a tiny ViFT from tiny pretrained-style towers, save it, reload it as remote code in a fresh
process that cannot import `modeling_vift`, and generate there.

    python -m demo.quickstart [--output_dir demo_output/quickstart]

The towers are random toy models built in code (no download), so the generated words are noise; what the demo
shows is that the steps a user takes with real towers work end to end: `from_components`, `save_pretrained`,
`from_pretrained(..., trust_remote_code=True)` without this package, and identical greedy tokens on both sides.
"""

import json
import os
import sys
import time
from dataclasses import dataclass, field

import torch

from modeling_vift import ViFTForConditionalGeneration, ViFTProcessor
from modeling_vift.publishing.fresh_process import run_python_without_vift
from modeling_vift.testing_utils import random_images, save_tiny_towers


MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image in detail"}]}]
MAX_NEW_TOKENS = 12

# Runs in the fresh process: only torch, transformers and the files saved next to the weights are available.
RELOAD_SCRIPT = r'''
import json, sys
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

try:
    import modeling_vift  # noqa: F401
    sys.exit("modeling_vift is importable here: the reload would not prove anything")
except ImportError:
    print("  fresh process: `import modeling_vift` fails, as on a machine without this package")

folder, messages, max_new_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
print(f"  loaded {type(model).__module__}.{type(model).__name__} and {type(processor).__name__} from remote code")
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=[Image.open(folder + "/example.png")], text=prompt, return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
print("TOKENS " + json.dumps(output[0, inputs["input_ids"].shape[1]:].tolist()))
'''


@dataclass
class QuickstartArguments:
    output_dir: str = field(default=os.path.join("demo_output", "quickstart"), metadata={"help": "folder for everything written"})


def main(argv=None):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(QuickstartArguments).parse_args_into_dataclasses(argv)
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()

    print(f"1. saving tiny pretrained-style towers (SigLIP vision tower, Qwen2 causal LM) under {out}")
    vision_dir, text_dir = save_tiny_towers(out, "siglip", "qwen2")

    print("2. building ViFT with from_components(vision, language_model)")
    model = ViFTForConditionalGeneration.from_components(vision_dir, text_dir).eval()
    processor = ViFTProcessor.from_components(vision_dir, text_dir)
    config = model.config
    print(f"   image token {processor.image_token!r} -> id {config.image_token_id} (model) / {processor.image_token_id} "
          f"(processor); vocabulary {config.text_config.vocab_size}; {config.image_seq_length} tokens per image; "
          f"vision feature layer {config.vision_feature_layer}; projector depth {config.projector_depth}; "
          f"fusion layers {config.fusion_layers}; {sum(p.numel() for p in model.parameters()):,} parameters")

    image = random_images(1, seed=0)[0]
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    inputs = processor(images=[image], text=prompt, return_tensors="pt")
    local = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    print(f"3. greedy generation in this process: {local.tolist()}")

    folder = os.path.join(out, "tiny-vift")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    image.save(os.path.join(folder, "example.png"))
    code_files = sorted(f for f in os.listdir(folder) if f.endswith(".py"))
    auto_map = json.load(open(os.path.join(folder, "config.json")))["auto_map"]
    print(f"4. saved model + processor to {folder}: remote code {code_files}; auto_map {sorted(auto_map)}")

    print("5. reloading with trust_remote_code=True in a fresh Python process")
    work = os.path.join(out, "fresh-process")
    os.makedirs(work, exist_ok=True)
    proc = run_python_without_vift(RELOAD_SCRIPT, cwd=work, args=(folder, json.dumps(MESSAGES), MAX_NEW_TOKENS))
    lines = proc.stdout.splitlines()
    for line in lines:
        if not line.startswith("TOKENS "):
            print(line)
    tokens = [json.loads(line[len("TOKENS "):]) for line in lines if line.startswith("TOKENS ")]
    if proc.returncode != 0 or not tokens:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"the fresh process failed (exit code {proc.returncode})")
    print(f"   greedy generation there:           {tokens[0]}")
    if tokens[0] != local.tolist():
        raise SystemExit("the reloaded model generated different tokens: the remote-code round trip is broken")
    text = processor.decode(torch.tensor(tokens[0]), skip_special_tokens=True)
    print(f"6. identical tokens on both sides (decoded, random toy weights: {text!r})")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
