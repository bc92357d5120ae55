"""A plain sequential implementation of token-aligned fused inference (`fusion_alignment="token"`), written apart
from `fusion_vift` so the fast path can be tested against it (tests/test_fusion_alignment.py).

Batch 1, three full passes (text-only, multimodal, generation), hidden states from `output_hidden_states`. The
alignment is found its own way: each token of q is matched, left to right, with the earliest not yet used text token
of the multimodal prompt that equals it (image tokens skipped). That is the fast path's alignment whenever q is a
subsequence of the prompt's text tokens with a single leftmost embedding, which the tests' prompts are (the function
refuses any other q). A steering hook on every forward with more than one position (the prefill, or every forward
without a cache) adds `alpha * H_l(q)[j] - beta * H_l(v,q)[p]` at each aligned pair (j, p).
"""

import torch

from modeling_vift.remote_code.fusion_vift import decoder_layers


def leftmost_pairs(text_ids, mm_ids, image_token_id):
    pairs, p = [], 0
    for j, token in enumerate(text_ids):
        while p < len(mm_ids) and (mm_ids[p] == image_token_id or mm_ids[p] != token):
            p += 1
        if p == len(mm_ids):
            raise AssertionError(f"q token {j} ({token}) has no partner: q is not a subsequence of the prompt's text")
        pairs.append((j, p))
        p += 1
    return pairs


@torch.no_grad()
def reference_token_fused_generate(model, input_ids, pixel_values, text_input_ids, alpha, beta, layers, **generate_kwargs):
    start, end = layers
    pairs = leftmost_pairs(text_input_ids[0].tolist(), input_ids[0].tolist(), model.config.image_token_id)
    h_text = model(input_ids=text_input_ids, output_hidden_states=True).hidden_states
    h_mm = model(input_ids=input_ids, pixel_values=pixel_values, output_hidden_states=True).hidden_states
    vectors = {l: [(p, alpha * h_text[l][:, j] - beta * h_mm[l][:, p]) for j, p in pairs] for l in range(start, end)}

    def make_hook(layer):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[1] == 1:
                return None
            hidden = hidden.clone()
            for p, vector in vectors[layer]:
                hidden[:, p] += vector
            return ((hidden,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

        return hook

    layer_modules = decoder_layers(model.model.language_model)
    handles = [layer_modules[l].register_forward_pre_hook(make_hook(l), with_kwargs=True) for l in range(start, end)]
    try:
        return model.generate(input_ids=input_ids, pixel_values=pixel_values, **generate_kwargs)
    finally:
        for handle in handles:
            handle.remove()
