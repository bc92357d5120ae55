"""ViFT processor: an image processor and a tokenizer, with a chat template.

`<image>` placeholders in the text (or `{"type": "image"}` items of chat messages) expand to
`image_seq_length` image tokens; the number of placeholders must equal the number of images. With
`return_text_only=True` the processor also returns the same prompts with the images removed
(`text_input_ids`, `text_attention_mask`): the text-only prompt q of ViFT's fused inference.

This file is part of the remote-code bundle: it imports only torch, transformers and its siblings.
"""

import re

from transformers import AutoConfig, AutoTokenizer, ProcessorMixin

# From its module: transformers 5.17 without torchvision exports a placeholder at the top level that refuses to load
# any image processor (the PIL ones included).
from transformers.models.auto.image_processing_auto import AutoImageProcessor
from transformers.processing_utils import ProcessingKwargs
from transformers.utils import is_vision_available

from .configuration_vift import add_image_token, compute_image_seq_length


# Pillow is transformers' optional "vision" backend; the guard keeps it out of the packages transformers requires
# before loading this file as remote code (text-only use works without it).
if is_vision_available():
    from PIL import Image


def _require_pillow():
    if not is_vision_available():
        raise ImportError("ViFTProcessor needs Pillow to process images: pip install pillow.")


# Prepended to the language model's own chat template: turns list-of-items message contents into strings,
# an image item becoming the image token followed by a newline (the LLaVA/Bunny layout), so the model's
# native template renders multimodal conversations unchanged.
_FLATTEN_CONTENT_PREFIX = (
    "{%- set _vift = namespace(messages=[]) -%}"
    "{%- for _m in messages -%}"
    "{%- if _m['content'] is string or _m['content'] is none -%}"
    "{%- set _vift.messages = _vift.messages + [_m] -%}"
    "{%- else -%}"
    "{%- set _vift_text = namespace(value='') -%}"
    "{%- for _item in _m['content'] -%}"
    "{%- if _item['type'] == 'image' -%}{%- set _vift_text.value = _vift_text.value + '<image>\n' -%}"
    "{%- elif _item['type'] == 'text' -%}{%- set _vift_text.value = _vift_text.value + _item['text'] -%}"
    "{%- else -%}{{ raise_exception('ViFT chat messages take content items of type \\'image\\' or \\'text\\', got '"
    " ~ _item['type'] ~ ': convert other media to images or text first.') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set _vift.messages = _vift.messages + [{'role': _m['role'], 'content': _vift_text.value}] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = _vift.messages -%}"
)

# Used when the tokenizer has no chat template of its own (ChatML, as Qwen2 uses); the tiny test and demo tokenizers
# carry it too.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def build_chat_template(text_template, image_token="<image>"):
    """The processor's chat template: the LM's template (or ChatML) behind the content-flattening prefix."""
    prefix = _FLATTEN_CONTENT_PREFIX.replace("<image>", image_token)
    return prefix + (text_template or CHATML_TEMPLATE)


def pad_image_to_square(image, fill):
    """Pads a PIL image to a square with colour `fill` (the authors' stage-2 `pad` aspect-ratio setting)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def to_rgb(image):
    """Converts a PIL image of any mode (RGBA, LA, P, L, CMYK, I;16, I, F, ...) to RGB.

    Transparent images are composited on white. Integer and float greyscale images are scaled to 0..255 from the
    range their values use: 16-bit modes by 1/256; `I` and `F` by their largest value (`F` in 0..1 by 255)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16"):
        image = image.convert("I")
        scale = 1 / 256
    elif image.mode in ("I", "F"):
        high = max(image.getextrema()[1], 0)
        if image.mode == "F" and high <= 1.0:
            scale = 255.0
        elif high <= 255:
            scale = 1.0
        elif high <= 65535:
            scale = 1 / 256
        else:
            scale = 255 / high
    else:
        return image.convert("RGB")
    return image.convert("F").point(lambda v: v * scale).convert("L").convert("RGB")


def check_messages(messages):
    """Raises a ValueError naming the first malformed message: each needs a `role` and a `content` that is a string
    or a list of `{"type": "image"}` / `{"type": "text", "text": str}` items."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"A conversation must be a non-empty list of messages, got {type(messages).__name__}.")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"Message {i} must be a dict with 'role' and 'content', got {message!r:.200}.")
        content = message["content"]
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, (list, tuple)):
            raise ValueError(
                f"Message {i} content must be a string or a list of items, got {type(content).__name__}."
            )
        for j, item in enumerate(content):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text" and isinstance(item.get("text"), str):
                continue
            if kind == "image":
                continue
            raise ValueError(
                f"Message {i}, content item {j} is {item!r:.200}: ViFT takes {{'type': 'image'}} (optionally with an "
                f"'image' (a PIL image), 'path' or 'url') and {{'type': 'text', 'text': str}} items. Convert other "
                f"media to images or text."
            )


def load_chat_image(item):
    """The image of a `{"type": "image"}` chat item: its `image` (a PIL image, or a path or URL string), `path` or
    `url`, read as transformers' processors read them; None when the item names no image."""
    source = next((item[key] for key in ("image", "path", "url") if item.get(key) is not None), None)
    if not isinstance(source, str):
        return source
    from transformers.image_utils import load_image

    try:
        return load_image(source)
    except Exception as error:  # a missing file, an unreachable URL, an unreadable image: say which
        raise ValueError(
            f"Could not load the chat image {source!r} ({type(error).__name__}: {str(error)[:200]}): give an existing "
            f"local file, a URL reachable from this machine, or a PIL image under 'image'."
        ) from error


RGB_CONVERSIONS = ("composite_white", "pil", "image_processor")


class ChatPrompt(str):
    """A prompt rendered by `ViFTProcessor.apply_chat_template`: an ordinary string that also carries `text_only`,
    the same conversation rendered without its images. Only the renderer knows which newlines an image item added
    (`{"type": "image"}` renders as the placeholder plus a newline) and which are the caller's text (a placeholder
    written inside a string, as DEMON contexts are), so the text-only prompt is rendered, not derived from the text."""

    def __new__(cls, text, text_only):
        prompt = super().__new__(cls, text)
        prompt.text_only = str(text_only)
        return prompt

    def __reduce__(self):
        # Pickled as a plain string: this class may live in a remote-code module that the unpickling process cannot
        # import (transformers_modules.*). A pickled prompt loses `text_only` (strip_images then uses the plain rule).
        return (str, (str(self),))


class ViFTProcessorKwargs(ProcessingKwargs, total=False):
    # `_defaults` rather than the processor's class attributes: transformers 5.17 reads only `_defaults`.
    # Pixel values are tensors even when the caller asks for lists (the model takes nothing else). The text defaults
    # (`add_special_tokens`: the processor's setting; `padding`: only for several texts) are set per call in `__call__`.
    _defaults = {"images_kwargs": {"return_tensors": "pt"}}


class ViFTProcessor(ProcessorMixin):
    r"""
    Processor of ViFT models.

    Args:
        image_processor: the vision tower's image processor (e.g. `SiglipImageProcessor`).
        tokenizer: the language model's tokenizer; it must know `image_token` as a single token.
        chat_template (`str`, *optional*): jinja chat template; `from_components` builds one from the tokenizer's.
        image_token (`str`, defaults to `"<image>"`): the placeholder for one image in the text.
        image_seq_length (`int`): number of image tokens one image expands to (the model config's value).
        pad_to_square (`bool`, defaults to `False`): pad images to a square with the image processor's mean
            colour before resizing (the authors' stage-2 setting).
        add_special_tokens (`bool`, defaults to `False`): what `__call__` (and `apply_chat_template(tokenize=True)`)
            passes to the tokenizer when the caller does not say. `False` suits models trained with the ViFT recipes;
            converted checkpoints set `True`, as their own pipelines tokenize (`LlavaProcessor`, Bunny's
            `tokenizer_image_token`): a Llama tokenizer then prepends its BOS, a Qwen2 tokenizer adds nothing.
        rgb_conversion (`str`, defaults to `"composite_white"`): how non-RGB images become RGB.
            `"composite_white"`: transparent pixels are composited on white (see `to_rgb`);
            `"pil"`: `PIL.Image.convert("RGB")`, which drops the alpha channel (the authors' Bunny evaluation);
            `"image_processor"`: images go to the image processor unchanged and it converts them (what
            `LlavaProcessor` does; the result follows the installed transformers: 5.17 drops alpha, 5.24 composites).
    """

    valid_processor_kwargs = ViFTProcessorKwargs

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_token="<image>",
        image_seq_length=None,
        pad_to_square=False,
        add_special_tokens=False,
        rgb_conversion="composite_white",
        **kwargs,
    ):
        if tokenizer is None or image_processor is None:
            raise ValueError("ViFTProcessor needs both an image_processor and a tokenizer.")
        self.image_token = image_token
        self.image_seq_length = image_seq_length
        self.pad_to_square = bool(pad_to_square)
        self.add_special_tokens = bool(add_special_tokens)
        if rgb_conversion not in RGB_CONVERSIONS:
            raise ValueError(f"rgb_conversion={rgb_conversion!r}: expected one of {RGB_CONVERSIONS}.")
        self.rgb_conversion = rgb_conversion
        self.image_token_id = self._lookup_image_token_id(tokenizer, image_token)
        if chat_template is None:
            chat_template = build_chat_template(getattr(tokenizer, "chat_template", None), image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        if self.image_seq_length is None:
            self.image_seq_length = self._default_image_seq_length()

    @classmethod
    def from_components(cls, vision_model, language_model, image_token="<image>", pad_to_square=False,
                        vision_feature_select_strategy="default", **kwargs):
        """Builds the processor of `ViFTForConditionalGeneration.from_components(vision_model, language_model)`:
        the vision tower's image processor, the LM's tokenizer with `image_token` added, and a chat template made
        from the LM's own (images render as `<image>` + newline)."""
        image_processor = AutoImageProcessor.from_pretrained(vision_model)
        tokenizer = AutoTokenizer.from_pretrained(language_model)
        add_image_token(tokenizer, image_token)
        image_seq_length = compute_image_seq_length(AutoConfig.from_pretrained(vision_model), vision_feature_select_strategy)
        return cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            image_token=image_token,
            image_seq_length=image_seq_length,
            pad_to_square=pad_to_square,
            **kwargs,
        )

    @staticmethod
    def _lookup_image_token_id(tokenizer, image_token):
        ids = tokenizer.encode(image_token, add_special_tokens=False)
        token_id = tokenizer.convert_tokens_to_ids(image_token)
        unk = getattr(tokenizer, "unk_token_id", None)
        if len(ids) != 1 or token_id is None or (unk is not None and token_id == unk):
            raise ValueError(
                f"The tokenizer does not know the image token {image_token!r} as a single token (it encodes to "
                f"{len(ids)} ids: {ids[:8]}). Add it with tokenizer.add_special_tokens("
                f"{{'additional_special_tokens': [{image_token!r}]}}) and resize the model's embeddings, or build "
                f"both with ViFTForConditionalGeneration.from_components / ViFTProcessor.from_components."
            )
        return token_id

    def _default_image_seq_length(self):
        size = getattr(self.image_processor, "size", None) or {}
        patch = getattr(self.image_processor, "patch_size", None)
        if patch is None or "height" not in size:
            raise ValueError(
                "image_seq_length was not given and cannot be derived from the image processor: pass the model "
                "config's `image_seq_length` (ViFTProcessor.from_components does this)."
            )
        return (size["height"] // patch) * (size["width"] // patch)

    # ------------------------------------------------------------------ images

    def _mean_fill(self):
        mean = getattr(self.image_processor, "image_mean", None)
        mean = (0.5, 0.5, 0.5) if mean is None else mean
        mean = [mean] * 3 if isinstance(mean, (int, float)) else list(mean)
        return tuple(int(255 * m) for m in mean)

    def prepare_images(self, images, pad_to_square=None):
        """Flattens nested image lists, converts every image to RGB and pads it to square if asked."""
        pad = self.pad_to_square if pad_to_square is None else pad_to_square
        flat = []

        def visit(item):
            if item is None:
                return
            if isinstance(item, (list, tuple)):
                for sub in item:
                    visit(sub)
                return
            _require_pillow()
            if not isinstance(item, Image.Image):
                raise ValueError(
                    f"ViFTProcessor takes PIL images (or nested lists of them); got {type(item).__name__}. "
                    f"Open files with PIL.Image.open and pass the image objects."
                )
            if self.rgb_conversion == "pil":
                image = item.convert("RGB")
            elif self.rgb_conversion == "image_processor" and not pad:
                image = item
            else:
                image = to_rgb(item)
            flat.append(pad_image_to_square(image, self._mean_fill()) if pad else image)

        visit(images)
        return flat

    # ------------------------------------------------------------------ text

    def replace_image_token(self, image_inputs, image_idx, **kwargs):
        """What one `<image>` placeholder expands to: `image_seq_length` image tokens (every image has as many)."""
        return self.image_token * self.image_seq_length

    def strip_images(self, text):
        """The text-only prompt: the same text without its images. A prompt rendered by `apply_chat_template` carries
        its exact text-only rendering (each image item dropped with the newline it added; a placeholder written in
        the text dropped alone, its neighbours kept). A plain string cannot tell which newline a placeholder added:
        each placeholder is dropped with one newline right after it, the `<image>\n` layout of LLaVA-style data."""
        text_only = getattr(text, "text_only", None)
        if text_only is not None:
            return text_only
        return re.sub(re.escape(self.image_token) + r"\n?", "", text)

    def _without_images(self, conversation):
        """The conversation with its images removed: image items dropped, placeholders in text dropped alone."""
        def strip(text):
            return text.replace(self.image_token, "")

        messages = []
        for message in conversation:
            content = message["content"]
            if isinstance(content, str):
                content = strip(content)
            elif content is not None:
                content = [
                    {**item, "text": strip(item["text"])} if item["type"] == "text" else item
                    for item in content if item["type"] != "image"
                ]
            messages.append({**message, "content": content})
        return messages

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """Refuses a call without text, and placeholder and image counts that differ (naming both)."""
        if text is None:
            raise ValueError("ViFTProcessor needs `text`; use processor.image_processor for images alone.")
        texts = [text] if isinstance(text, str) else list(text)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("`text` must be a string or a list of strings.")
        n_placeholders = [t.count(self.image_token) for t in texts]
        n_images = len(images) if images is not None else 0
        if sum(n_placeholders) != n_images:
            raise ValueError(
                f"The text holds {sum(n_placeholders)} {self.image_token} placeholder(s) (per sample: {n_placeholders}) "
                f"but {n_images} image(s) were given: the two numbers must be equal."
            )
        super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def __call__(self, images=None, text=None, return_text_only=False, pad_to_square=None, **kwargs):
        """
        `ProcessorMixin.__call__` (every tokenizer and image-processor option, flat or per modality) over RGB images,
        padded to square if asked. `text` is a string or a list; `images` a PIL image, a list, or a list of
        per-sample lists, in order of appearance. Several texts are padded to the longest unless `padding` says
        otherwise. With `return_text_only=True` it also returns `text_input_ids` / `text_attention_mask`: the prompts
        with their images removed. Truncation that cuts through image tokens raises.
        """
        images = self.prepare_images(images, pad_to_square) or None
        text_kwargs = kwargs.get("text_kwargs") or {}
        if "add_special_tokens" not in kwargs and "add_special_tokens" not in text_kwargs:
            kwargs["add_special_tokens"] = self.add_special_tokens  # the processor's setting, unless the call says
        if "padding" not in kwargs and "padding" not in text_kwargs:
            # several texts pad to the longest; one text needs no padding (nor a tokenizer with a pad token)
            kwargs["padding"] = not isinstance(text, str) and len(text) > 1
        inputs = super().__call__(images=images, text=text, **kwargs)
        if return_text_only:
            texts = [text] if isinstance(text, str) else list(text)
            text_only = super().__call__(text=[self.strip_images(t) for t in texts], **kwargs)
            inputs["text_input_ids"] = text_only["input_ids"]
            inputs["text_attention_mask"] = text_only["attention_mask"]
        return inputs

    # ------------------------------------------------------------------ chat

    def apply_chat_template(self, conversation, chat_template=None, tokenize=False, add_generation_prompt=False, **kwargs):
        """Renders chat messages (string contents, or lists of `{"type": "text"}` / `{"type": "image"}` items)
        with the processor's template, as `ChatPrompt` strings that also carry their text-only rendering. With
        `tokenize=True` the images are taken from the image items (`image`, `path` or `url`, as transformers'
        processors read them)
        (`{"type": "image", "image": PIL.Image}`) or from `images=` and the result is processed like `__call__`."""
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        for c in conversations:
            check_messages(c)
        template = chat_template or self.chat_template
        template_kwargs = {k: v for k, v in kwargs.items() if k in ("tools", "documents", "continue_final_message")}

        def render(messages):
            return self.tokenizer.apply_chat_template(
                list(messages), chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt,
                **template_kwargs,
            )

        rendered = [ChatPrompt(render(c), render(self._without_images(c))) for c in conversations]
        if not tokenize:
            return rendered if batched else rendered[0]
        images = kwargs.pop("images", None)
        if images is None:
            images = [
                load_chat_image(item)
                for c in conversations
                for m in c
                if not isinstance(m["content"], str)
                for item in m["content"]
                if item.get("type") == "image" and any(item.get(key) is not None for key in ("image", "path", "url"))
            ]
        if kwargs.pop("return_assistant_tokens_mask", False):
            raise ValueError(
                "ViFTProcessor does not compute assistant token masks (TRL's assistant_only_loss): use the ViFT "
                "recipes, which put the loss on assistant turns only, or train on the whole conversation."
            )
        # transformers >= 5.4 (and TRL) pass the tokenizer/processor options as `processor_kwargs`
        call_kwargs = {**(kwargs.pop("processor_kwargs", None) or {}), **kwargs}
        bos = getattr(self.tokenizer, "bos_token", None)
        if "add_special_tokens" not in call_kwargs and bos and all(r.startswith(bos) for r in rendered):
            call_kwargs["add_special_tokens"] = False  # the template wrote the BOS already (as transformers does)
        for key in ("tools", "documents", "continue_final_message", "return_dict"):
            call_kwargs.pop(key, None)
        return self(images=images or None, text=rendered, **call_kwargs)


__all__ = ["ChatPrompt", "ViFTProcessor"]
