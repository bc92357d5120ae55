"""Answers one visual question with a saved ViFT folder, loading it the way a user would: through remote code only.

```bash
python demo/answer.py --folder demo_output/vift-demo --image demo_output/data/images/test_06000.png \
    --question "How many shapes are there? Answer with one word."
```

Only transformers and PIL are imported here (never `modeling_vift`): the model, processor and fused generation come
from the code files saved next to the weights (`trust_remote_code=True`). It prints plain and fused answers; the fused
one uses the alpha/beta/layers/alignment saved in the folder's config (the demo writes the values it tuned).
"""

import json
import sys
from dataclasses import dataclass, field


@dataclass
class AnswerArguments:
    folder: str = field(metadata={"help": "a saved ViFT model + processor folder"})
    image: list[str] = field(metadata={"help": "image file(s), in the order of the question"})
    question: str = field(metadata={"help": "the question about the image(s)"})
    max_new_tokens: int = 100
    json: bool = field(default=False, metadata={"help": "print one JSON line instead of text"})


def main(argv=None):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(AnswerArguments).parse_args_into_dataclasses(argv)

    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(args.folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(args.folder, trust_remote_code=True)
    images = [Image.open(path).convert("RGB") for path in args.image]
    content = []
    for i in range(len(images)):
        if len(images) > 1:
            content.append({"type": "text", "text": f"Image {i + 1}: "})
        content.append({"type": "image"})
    content.append({"type": "text", "text": args.question})
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(images=images, text=prompt, return_tensors="pt", return_text_only=True)
    length = inputs["input_ids"].shape[1]
    tokenizer = processor.tokenizer
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    with torch.no_grad():
        plain = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                               pixel_values=inputs["pixel_values"], **common)
        fused = model.generate(**inputs, fusion=True, **common)
    result = {
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "loaded_through_remote_code": "modeling_vift" not in sys.modules,
        "question": args.question,
        "plain": tokenizer.decode(plain[0, length:], skip_special_tokens=True).strip(),
        "fused": tokenizer.decode(fused[0, length:], skip_special_tokens=True).strip(),
        "fusion": {"alpha": model.config.fusion_alpha, "beta": model.config.fusion_beta,
                   "layers": list(model.config.fusion_layers),
                   "alignment": getattr(model.config, "fusion_alignment", "right")},
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return result


if __name__ == "__main__":
    main()
