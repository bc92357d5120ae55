"""The demo's tokenizer: a byte-level BPE trained locally with `tokenizers` on the world's training texts.

It has ChatML special tokens and chat template (as Qwen2 models use) and the `<image>` placeholder, so the
processor built on it renders multimodal chats exactly like a real ViFT checkpoint. Byte-level BPE encodes any
text; a vocabulary a little larger than the world's word list makes every world word a single token.
"""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast


IMAGE_TOKEN = "<image>"
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def build_tokenizer(texts, vocab_size=512):
    """Trains the BPE on `texts` (a list of strings) and wraps it in a `PreTrainedTokenizerFast`."""
    if not texts:
        raise ValueError("build_tokenizer needs a non-empty list of training texts.")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, IM_START, IM_END, IMAGE_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[IMAGE_TOKEN],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def unknown_words(tokenizer, texts):
    """World words the tokenizer splits into several pieces (a sign the vocabulary is too small)."""
    words = {w for t in texts for w in t.replace(".", " ").replace(",", " ").replace("?", " ").split()}
    return sorted(w for w in words if len(tokenizer.encode(" " + w, add_special_tokens=False)) > 1)
