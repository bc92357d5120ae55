"""ViFT's ability-fused inference, batched.

The authors' algorithm (VIFT.md, "Ability-fused inference"): let q be the text-only prompt and (v,q) the
multimodal prompt, n = len(q). For every decoder layer l in [s, e), during the prefill of the generation on
(v,q) only, the input hidden states of layer l at the last n positions become

    h[-n:] + alpha * H_l(q)[-n:] - beta * H_l(v,q)[-n:]

where H_l(.) are the inputs of layer l in ordinary (unsteered) forwards, right-aligned. Changes compound across
layers; decoding steps are unchanged and see the steering only through the KV cache.

That right alignment (`fusion_alignment="right"`, the default) was made for one image before the question. With
images between pieces of text (DEMON-style interleaved prompts), or a system prompt before the image, it pairs image
tokens and earlier text with the states of *other* tokens. `fusion_alignment="token"` pairs each token of q with the
position of the same text token in (v,q) instead: a monotone alignment of q onto the multimodal prompt's text tokens
(image tokens skipped), found as the matching blocks of `difflib.SequenceMatcher` (longest common runs first),
each pair then moved to the leftmost equal token after the previous pair. A q derived by dropping the image tokens
aligns one to one; a q without the newline an image placeholder added pairs its newlines with the caller's own; a q
that differs from the prompt's text in a few tokens (re-tokenised where an image was cut out) aligns everywhere else. The rule is then

    h[p(j)] + alpha * H_l(q)[j] - beta * H_l(v,q)[p(j)]      for every aligned pair (j, p(j))

and image tokens, and text tokens of (v,q) without a partner in q, are left alone.

How this module computes exactly that, with less work than the authors' three passes:
1. the vision tower runs once; its projected features are reused by every pass below;
2. one pass over the whole batch of text-only prompts records H_l(q) for l in [s, e) and stops at the input of
   layer e-1 (no later layer and no LM head run);
3. one pass over the multimodal prompts records H_l(v,q) the same way (unsteered, stops at layer e-1);
4. the per-layer deltas `alpha * H_l(q) - beta * H_l(v,q)` at the aligned pairs (each row's last n real positions
   for the right alignment, the token pairs for the token alignment; none for rows without images) are added by forward pre-hooks during the prefill of an ordinary `generate` call, so
   sampling, beam search, stop strings, streamers and caches all come from `GenerationMixin`.
Steering hooks live only for the duration of the call and are removed in `finally`; all state belongs to the
call, never to a class, so two models in one process never see each other's vectors.

This file is part of the remote-code bundle: it imports only torch and its siblings.
"""

import difflib
from contextlib import contextmanager

import torch

from .configuration_vift import check_fusion_alignment, check_fusion_layers, check_fusion_weights


class _CaptureComplete(Exception):
    """Raised by the capture hook at the input of the last layer it needs, to end a capture pass early."""


def decoder_layers(language_model):
    """The list of decoder layers of a transformers decoder (Qwen2, Llama, Mistral, Gemma, ... style)."""
    for path in ("layers", "decoder.layers", "model.layers", "h"):
        module = language_model
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, torch.nn.ModuleList):
            return module
    raise ValueError(
        f"Cannot find the decoder layers of {type(language_model).__name__} (looked for .layers, .decoder.layers, "
        f".model.layers, .h): fused generation needs a decoder whose layers form a ModuleList."
    )


def _hidden_states_of(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden_states(args, kwargs, hidden_states):
    if args:
        return (hidden_states,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden_states}


def positions_from_mask(attention_mask):
    """Position ids as `generate` builds them for left-padded prompts (pads get position 0)."""
    position_ids = attention_mask.long().cumsum(-1) - 1
    return position_ids.masked_fill(attention_mask == 0, 0)


@torch.no_grad()
def capture_layer_inputs(model, input_ids, attention_mask, layer_range, image_features=None, image_patch_features=None):
    """Runs an ordinary (unsteered) forward of `model.model` and returns `{l: input hidden states of layer l}` for
    l in `layer_range`, stopping at the input of the last of those layers (nothing after it runs)."""
    start, end = layer_range
    layers = decoder_layers(model.model.language_model)
    captured = {}
    handles = []

    def make_hook(index):
        def hook(module, args, kwargs):
            captured[index] = _hidden_states_of(args, kwargs)
            if index == end - 1:
                raise _CaptureComplete

        return hook

    try:
        for index in range(start, end):
            handles.append(layers[index].register_forward_pre_hook(make_hook(index), with_kwargs=True))
        try:
            model.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions_from_mask(attention_mask),
                image_features=image_features,
                image_patch_features=image_patch_features,
                use_cache=False,
            )
        except _CaptureComplete:
            pass
    finally:
        for handle in handles:
            handle.remove()
    if len(captured) != end - start:
        raise RuntimeError(f"Captured {len(captured)} of the {end - start} layers of fusion_layers={[start, end]}.")
    return captured


def left_align(input_ids, attention_mask, pad_token_id):
    """Re-pads rows to the left (each row's real tokens kept in order); returns ids, mask."""
    lengths = attention_mask.sum(-1)
    width = int(lengths.max()) if lengths.numel() else 0
    ids = torch.full((input_ids.shape[0], width), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    mask = torch.zeros((input_ids.shape[0], width), dtype=attention_mask.dtype, device=attention_mask.device)
    for row in range(input_ids.shape[0]):
        real = input_ids[row][attention_mask[row].bool()]
        if real.numel():
            ids[row, width - real.numel() :] = real
            mask[row, width - real.numel() :] = 1
    return ids, mask


def derive_text_only_prompt(input_ids, attention_mask, image_token_id, pad_token_id):
    """The text-only prompt q when the caller gives none: each row with its image tokens removed, left-padded.
    (The processor's `text_input_ids` also drop the newline after each `<image>`, as the authors' q does.)"""
    keep = attention_mask.bool() & (input_ids != image_token_id)
    return left_align(input_ids, keep.long(), pad_token_id)


FUSION_SETTING_NAMES = ("fusion_alpha", "fusion_beta", "fusion_layers", "fusion_alignment")


def resolve_fusion_settings(model, fusion_alpha=None, fusion_beta=None, fusion_layers=None, fusion_alignment=None):
    """The fusion settings `(alpha, beta, layers, alignment)` fused generation uses: each the call's argument, else
    the generation config's, else the model config's (the alignment, else "right", the authors'); validated here,
    the one place that does, whichever source a value came from."""
    call = {"fusion_alpha": fusion_alpha, "fusion_beta": fusion_beta, "fusion_layers": fusion_layers,
            "fusion_alignment": fusion_alignment}
    chosen = {}
    for name in FUSION_SETTING_NAMES:
        for value in (call[name], getattr(model.generation_config, name, None), getattr(model.config, name, None)):
            if value is not None:
                break
        chosen[name] = value
    alpha, beta = check_fusion_weights(chosen["fusion_alpha"], chosen["fusion_beta"])
    layers = check_fusion_layers(chosen["fusion_layers"], model.config.text_config.num_hidden_layers)
    alignment = check_fusion_alignment(chosen["fusion_alignment"]) or "right"
    return alpha, beta, layers, alignment


def _check_left_padded(mask, name):
    if mask.shape[1] and bool((mask[:, -1] == 0).any()):
        rows = torch.nonzero(mask[:, -1] == 0).flatten().tolist()
        raise ValueError(
            f"Fused generation needs left-padded prompts, but rows {rows} of {name} end in padding. Tokenize with "
            f"padding_side='left' (processor(..., padding_side='left'))."
        )


def token_alignment(text_ids, mm_ids, image_token_id):
    """Pairs `(j, p)` aligning the text-only prompt `text_ids` (a list of ids) with the multimodal prompt `mm_ids`:
    j indexes `text_ids`, p indexes `mm_ids`, both increase, image tokens are never paired and paired tokens are
    equal. The pairs are the matching blocks of `difflib.SequenceMatcher` over q and the prompt's text tokens, each
    then moved to the leftmost equal token after the previous pair: where an image placeholder added a copy of a
    token (`<image>` + newline), q's token pairs with the caller's text before the image, not the placeholder's."""
    text_positions = [p for p, token in enumerate(mm_ids) if token != image_token_id]
    mm_text = [mm_ids[p] for p in text_positions]
    matcher = difflib.SequenceMatcher(None, text_ids, mm_text, autojunk=False)
    pairs, previous = [], -1
    for a, b, size in matcher.get_matching_blocks():
        for j, k in zip(range(a, a + size), range(b, b + size)):
            k = next(i for i in range(previous + 1, k + 1) if mm_text[i] == text_ids[j])
            pairs.append((j, text_positions[k]))
            previous = k
    return pairs


def fusion_columns(input_ids, attention_mask, text_input_ids, text_attention_mask, image_token_id, alignment="right"):
    """For each position of the (left-padded) text-only prompts, the column of the multimodal prompt it steers:
    a `(batch, text_width)` long tensor, -1 where none (padding, rows without images, unaligned tokens)."""
    batch, width = input_ids.shape
    tail = text_input_ids.shape[1]
    has_image = (input_ids == image_token_id).any(-1)
    valid = text_attention_mask.bool() & has_image.unsqueeze(-1).to(text_attention_mask.device)
    if alignment == "right":
        columns = torch.arange(width - tail, width, device=text_input_ids.device).expand(batch, tail)
        return torch.where(valid, columns, -1)
    if alignment != "token":
        check_fusion_alignment(alignment)
        raise ValueError(f"fusion_alignment must not be None here (got {alignment!r}).")
    columns = torch.full((batch, tail), -1, dtype=torch.long)
    for row in range(batch):
        if not bool(has_image[row]):
            continue
        text_cols = torch.nonzero(text_attention_mask[row]).flatten().tolist()
        mm_cols = torch.nonzero(attention_mask[row]).flatten().tolist()
        text_ids = text_input_ids[row, text_cols].tolist()
        mm_ids = input_ids[row, mm_cols].tolist()
        for j, p in token_alignment(text_ids, mm_ids, image_token_id):
            columns[row, text_cols[j]] = mm_cols[p]
    return columns.to(text_input_ids.device)


def fusion_deltas(model, input_ids, attention_mask, text_input_ids, text_attention_mask, image_features,
                  alpha, beta, layer_range, image_patch_features=None, alignment="right"):
    """Per-layer additive deltas at the aligned pairs: `({l: (pairs, hidden)}, (rows, columns))`, where pair k adds
    `deltas[l][k]` to column `columns[k]` of row `rows[k]` of the multimodal prompt. Rows without image tokens get
    no pairs."""
    text_lengths = text_attention_mask.sum(-1)
    mm_lengths = attention_mask.sum(-1)
    too_long = torch.nonzero(text_lengths > mm_lengths).flatten().tolist()
    if too_long:
        row = too_long[0]
        raise ValueError(
            f"The text-only prompt of row {row} has {int(text_lengths[row])} tokens but its multimodal prompt only "
            f"{int(mm_lengths[row])}: the text-only prompt must be the multimodal prompt without its images."
        )
    columns = fusion_columns(
        input_ids, attention_mask, text_input_ids, text_attention_mask, model.config.image_token_id, alignment
    )
    rows, text_cols = torch.nonzero(columns >= 0, as_tuple=True)
    mm_cols = columns[rows, text_cols]
    h_text = capture_layer_inputs(model, text_input_ids, text_attention_mask, layer_range)
    h_mm = capture_layer_inputs(
        model, input_ids, attention_mask, layer_range, image_features=image_features, image_patch_features=image_patch_features
    )
    deltas = {}
    for index in range(*layer_range):
        q, vq = h_text[index][rows, text_cols], h_mm[index][rows, mm_cols]
        deltas[index] = alpha * q.float() - beta * vq.float()
    return deltas, (rows, mm_cols)


@contextmanager
def steering(model, deltas, pairs, prompt_length, batch_size, use_cache=True):
    """Adds `deltas[l][k]` to column `columns[k]` of row `rows[k]` (`pairs = (rows, columns)`, columns of the prompt)
    of the input of layer l in every forward that computes the prompt: with a cache only the first (prefill) call of
    each steered layer, whose decoding steps then read the steered prompt from the cache; without a cache every call,
    as each step recomputes the whole prompt (the same answer as with a cache). Hooks are removed on exit, also on
    error."""
    layers = decoder_layers(model.model.language_model)
    rows, columns = pairs
    handles = []
    expanded = {}  # rows, columns and delta order for `factor` copies of each row (beam search, num_return_sequences)

    def pairs_for(factor, device):
        if factor not in expanded:
            copies = torch.arange(factor, device=rows.device)
            expanded[factor] = (
                (rows.unsqueeze(-1) * factor + copies).flatten().to(device),
                columns.repeat_interleave(factor).to(device),
            )
        return expanded[factor]

    def make_hook(index, delta):
        state = {"prefill_done": False}

        def hook(module, args, kwargs):
            if state["prefill_done"] and use_cache:
                return None
            state["prefill_done"] = True
            hidden = _hidden_states_of(args, kwargs)
            computes_prompt = hidden.shape[1] == prompt_length or (not use_cache and hidden.shape[1] > prompt_length)
            if not computes_prompt or hidden.shape[0] % batch_size:
                raise RuntimeError(
                    f"Fused generation expected the prefill of layer {index} to see {batch_size}(xN) rows of "
                    f"{prompt_length} positions, got {tuple(hidden.shape[:2])}: chunked prefill and assisted "
                    f"decoding are not supported with fusion=True."
                )
            factor = hidden.shape[0] // batch_size
            step_rows, step_columns = pairs_for(factor, hidden.device)
            step = delta.repeat_interleave(factor, dim=0) if factor != 1 else delta
            step = step.to(device=hidden.device, dtype=torch.float32)
            steered = hidden.clone()
            steered[step_rows, step_columns] = (hidden[step_rows, step_columns].float() + step).to(hidden.dtype)
            return _with_hidden_states(args, kwargs, steered)

        return hook

    try:
        for index, delta in deltas.items():
            handles.append(layers[index].register_forward_pre_hook(make_hook(index, delta), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def fused_generate(model, generate_fn, input_ids=None, attention_mask=None, pixel_values=None, image_features=None,
                   image_patch_features=None, text_input_ids=None, text_attention_mask=None, fusion_alpha=None, fusion_beta=None,
                   fusion_layers=None, fusion_alignment=None, **generate_kwargs):
    """ViFT's fused generation; `generate_fn` is the ordinary `GenerationMixin.generate` bound to `model`."""
    if input_ids is None:
        raise ValueError(
            "Fused generation needs input_ids (the multimodal prompt): with inputs_embeds only, the text-only prompt "
            "and the image positions cannot be recovered. Pass input_ids, or generate with fusion=False."
        )
    alpha, beta, layer_range, alignment = resolve_fusion_settings(
        model, fusion_alpha, fusion_beta, fusion_layers, fusion_alignment
    )
    for name in ("prefill_chunk_size", "assistant_model", "prompt_lookup_num_tokens"):
        config_value = getattr(generate_kwargs.get("generation_config"), name, None)
        if generate_kwargs.get(name) is not None or config_value is not None:
            raise ValueError(f"{name} is not supported with fusion=True: the steered prefill must be one pass.")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    _check_left_padded(attention_mask, "input_ids")

    if pixel_values is not None:  # the vision tower runs once; every pass below reuses its features
        image_patch_features = model.model.get_patch_features(pixel_values)
        image_features = model.model.multi_modal_projector(image_patch_features)
    image_inputs = dict(image_features=image_features, image_patch_features=image_patch_features)
    has_image = image_features is not None and bool((input_ids == model.config.image_token_id).any())
    if not has_image:
        return generate_fn(input_ids=input_ids, attention_mask=attention_mask, **image_inputs, **generate_kwargs)

    pad_token_id = model.generation_config.pad_token_id
    pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
    if text_input_ids is None:
        text_input_ids, text_attention_mask = derive_text_only_prompt(
            input_ids, attention_mask, model.config.image_token_id, pad_token_id
        )
    else:
        text_input_ids = text_input_ids.to(input_ids.device)
        if text_attention_mask is None:
            text_attention_mask = torch.ones_like(text_input_ids)
        if text_input_ids.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"text_input_ids has {text_input_ids.shape[0]} rows but input_ids has {input_ids.shape[0]}: pass one "
                f"text-only prompt per multimodal prompt."
            )
        n_image_tokens = int((text_input_ids == model.config.image_token_id).sum())
        if n_image_tokens:
            raise ValueError(f"text_input_ids hold {n_image_tokens} image tokens: the text-only prompt has no images.")
        text_input_ids, text_attention_mask = left_align(text_input_ids, text_attention_mask.to(input_ids.device), pad_token_id)

    deltas, pairs = fusion_deltas(
        model, input_ids, attention_mask, text_input_ids, text_attention_mask, image_features, alpha, beta, layer_range,
        image_patch_features=image_patch_features, alignment=alignment,
    )
    config = generate_kwargs.get("generation_config") or model.generation_config
    use_cache = generate_kwargs.get("use_cache", getattr(config, "use_cache", True))
    use_cache = True if use_cache is None else bool(use_cache)
    with steering(model, deltas, pairs, prompt_length=input_ids.shape[1], batch_size=input_ids.shape[0],
                  use_cache=use_cache):
        return generate_fn(input_ids=input_ids, attention_mask=attention_mask, **image_inputs, **generate_kwargs)


def explain_fusion(input_ids, attention_mask, text_input_ids, text_attention_mask, tokenizer=None, image_token_id=None,
                   alignment="right"):
    """Which positions of each multimodal prompt are steered, and which text-only tokens they are aligned with.

    Returns one list per row of `{"position", "token", "text_position", "text_token"}` dicts (positions index the
    padded tensors; tokens decoded with `tokenizer` when given) for `alignment` ("right" or "token"), or, with
    `alignment=None`, `{"right": rows, "token": rows}`. With the authors' right alignment the first text-only tokens
    (often a system prompt) land on the multimodal prompt's last image tokens, and in interleaved prompts text lands
    on image tokens: rows where that happens are easy to spot here (`token` is the image token, or differs from
    `text_token`). The token alignment pairs each token with its own copy (`token == text_token`)."""
    if alignment is None:
        return {name: explain_fusion(input_ids, attention_mask, text_input_ids, text_attention_mask, tokenizer,
                                     image_token_id, name) for name in ("right", "token")}
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if text_attention_mask is None:
        text_attention_mask = torch.ones_like(text_input_ids)
    if image_token_id is not None:
        columns = fusion_columns(
            input_ids, attention_mask, text_input_ids, text_attention_mask, image_token_id, alignment
        )
    elif alignment == "token":
        raise ValueError("explain_fusion(alignment='token') needs image_token_id to tell image tokens from text.")
    else:
        columns = _right_columns_all_rows(input_ids, text_input_ids, text_attention_mask)

    def name(token):
        return tokenizer.convert_ids_to_tokens(token) if tokenizer is not None else token

    rows = []
    for row in range(input_ids.shape[0]):
        entries = []
        for text_position in torch.nonzero(columns[row] >= 0).flatten().tolist():
            position = int(columns[row, text_position])
            entries.append({
                "position": position,
                "token": name(int(input_ids[row, position])),
                "text_position": text_position,
                "text_token": name(int(text_input_ids[row, text_position])),
            })
        rows.append(entries)
    return rows


def _right_columns_all_rows(input_ids, text_input_ids, text_attention_mask):
    """The right alignment's columns when every row is taken to hold images (no image token id given)."""
    width, tail = input_ids.shape[1], text_input_ids.shape[1]
    columns = torch.arange(width - tail, width, device=text_input_ids.device).expand(input_ids.shape[0], tail)
    return torch.where(text_attention_mask.bool(), columns, -1)
