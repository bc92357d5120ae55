"""Bunny's conversation modes as chat templates, and which mode and language model each Bunny `model_type` has.

Bunny (and the authors' fork that trained ViFT) builds prompts from a named conversation mode (`--conv-mode` /
`--version`), not from the tokenizer's chat template. The facts below (system prompts, role names, separators) are
those of `bunny/conversation.py` in BAAI-DCAI/Bunny and in simplelifetime/ViFT (which adds `qwen2`); the templates
are written here to render the same strings:

- "two" style (`bunny`, `phi3`, `minicpm`, `llama`): ``SYSTEM + " "``, then ``"USER: " + text + " "`` and
  ``"ASSISTANT: " + text + END`` per turn, and ``"ASSISTANT:"`` (no space) as the generation prompt. END is the
  mode's second separator (`<|endoftext|>`, `</s>`, `<|end_of_text|>`).
- `qwen2`: ``"<|im_start|>system\\n" + SYSTEM + "<|im_end|>\\n"``, then ``"<|im_start|>ROLE\\n" + text +
  "<|im_end|>\\n"`` per turn and ``"<|im_start|>assistant\\n"`` as the generation prompt.
- `plain` (stage-1 pre-training): no system prompt, each turn's text followed by a newline.

An image item renders as `<image>` + newline where it stands in the message: the authors' evaluation writes
``"<image>\\n" + question`` as the user text. A leading `system` message replaces the mode's system prompt. BOS is not
part of any template: Bunny's `tokenizer_image_token` lets the tokenizer add it (Llama-3 does, Qwen2 does not), and the
converted processor tokenizes with `add_special_tokens=True` to do the same.

Not part of the remote-code bundle.
"""

BUNNY_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
QWEN2_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# mode -> (style, system prompt, end of an assistant turn)
CONVERSATION_MODES = {
    "bunny": ("two", BUNNY_SYSTEM, "<|endoftext|>"),
    "phi3": ("two", BUNNY_SYSTEM, "<|endoftext|>"),
    "minicpm": ("two", BUNNY_SYSTEM, "</s>"),
    "llama": ("two", BUNNY_SYSTEM, "<|end_of_text|>"),
    "qwen2": ("qwen2", QWEN2_SYSTEM, "<|im_end|>\n"),
    "plain": ("plain", "", "\n"),
}

# Bunny model_type -> (transformers model type of its language model or None when its weights cannot be converted,
# the conversation mode its authors evaluate it with). `bunny-qwen` is the name Bunny's Qwen class registered before
# it became `bunny-qwen2`; upstream Bunny's Qwen1.5 models use the `bunny` mode, the ViFT authors' Qwen2.5 models
# `qwen2` (pass --conv_mode bunny for an upstream Bunny-v1.0-2B-zh style checkpoint).
BUNNY_MODEL_TYPES = {
    "bunny-qwen2": ("qwen2", "qwen2"),
    "bunny-qwen": ("qwen2", "bunny"),
    "bunny-llama": ("llama", "llama"),
    "bunny-phi": (None, "bunny"),
    "bunny-phi3": (None, "phi3"),
    "bunny-stablelm": (None, "bunny"),
    "bunny-minicpm": (None, "minicpm"),
}


def _quote(text):
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def bunny_chat_template(mode):
    """The jinja chat template (over string contents) that renders Bunny's conversation mode `mode`."""
    if mode not in CONVERSATION_MODES:
        raise ValueError(f"Unknown Bunny conversation mode {mode!r}: expected one of {sorted(CONVERSATION_MODES)}.")
    style, system, end = CONVERSATION_MODES[mode]
    if style == "two":
        head = "{{ system + ' ' }}"
        user, assistant, prompt = "'USER: ' + m['content'] + ' '", f"'ASSISTANT: ' + m['content'] + {_quote(end)}", "'ASSISTANT:'"
    elif style == "qwen2":
        head = "{{ '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}"
        user = "'<|im_start|>user\\n' + m['content'] + '<|im_end|>\\n'"
        assistant = "'<|im_start|>assistant\\n' + m['content'] + '<|im_end|>\\n'"
        prompt = "'<|im_start|>assistant\\n'"
    else:
        head, user, assistant, prompt = "{{ system }}", "m['content'] + '\\n'", f"m['content'] + {_quote(end)}", "''"
    return (
        f"{{%- set system = {_quote(system)} -%}}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = messages[0]['content'] -%}{%- set messages = messages[1:] -%}"
        "{%- endif -%}"
        f"{head}"
        "{%- for m in messages -%}"
        f"{{%- if m['role'] == 'user' -%}}{{{{ {user} }}}}"
        f"{{%- elif m['role'] == 'assistant' -%}}{{{{ {assistant} }}}}"
        f"{{%- else -%}}{{{{ raise_exception('Bunny conversation mode {mode} has user and assistant turns "
        "(and one leading system message), got role ' ~ m['role']) }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{ {prompt} }}}}{{%- endif -%}}"
    )


__all__ = ["BUNNY_MODEL_TYPES", "CONVERSATION_MODES", "bunny_chat_template"]
