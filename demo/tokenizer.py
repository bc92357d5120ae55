"""The demo's tokenizer: a byte-level BPE trained locally with `tokenizers` on the world's training texts.

It has ChatML special tokens and chat template (as Qwen2 models use) and the `<image>` placeholder, so the
processor built on it renders multimodal chats exactly like a real ViFT checkpoint. Byte-level BPE encodes any
text; a vocabulary a little larger than the world's word list makes every world word a single token.
"""

from modeling_vift.testing_utils import CHATML_TEMPLATE, tiny_tokenizer


def build_tokenizer(texts, vocab_size=512):
    """Trains the BPE on `texts` (a list of strings): the tests' tiny tokenizer, with the ChatML template."""
    if not texts:
        raise ValueError("build_tokenizer needs a non-empty list of training texts.")
    return tiny_tokenizer(corpus=texts, vocab_size=vocab_size, chat_template=CHATML_TEMPLATE)


def unknown_words(tokenizer, texts):
    """World words the tokenizer splits into several pieces (a sign the vocabulary is too small)."""
    words = {w for t in texts for w in t.replace(".", " ").replace(",", " ").replace("?", " ").split()}
    return sorted(w for w in words if len(tokenizer.encode(" " + w, add_special_tokens=False)) > 1)
