"""A plain sequential implementation of the authors' fused inference, kept as the reference the fast path is
tested (tests/test_fusion.py) and benchmarked (benchmarks/fusion_overhead.py) against.

Batch 1, three full passes (text-only, multimodal, generation), the vision tower run in each multimodal pass,
hidden states taken from `output_hidden_states`, and a steering hook that fires on every forward with more than
one position (the prefill), adding `alpha * H_l(q) - beta * H_l(v,q)` to the last n positions.
"""

import torch

from modeling_vift.remote_code.fusion_vift import decoder_layers


@torch.no_grad()
def reference_fused_generate(model, input_ids, pixel_values, text_input_ids, alpha, beta, layers, **generate_kwargs):
    start, end = layers
    n = text_input_ids.shape[1]
    h_text = model(input_ids=text_input_ids, output_hidden_states=True).hidden_states
    h_mm = model(input_ids=input_ids, pixel_values=pixel_values, output_hidden_states=True).hidden_states
    vectors = {l: alpha * h_text[l][:, -n:] - beta * h_mm[l][:, -n:] for l in range(start, end)}

    def make_hook(layer):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[1] == 1:
                return None
            hidden = hidden.clone()
            hidden[:, -n:] += vectors[layer]
            return ((hidden,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

        return hook

    layer_modules = decoder_layers(model.model.language_model)
    handles = [layer_modules[l].register_forward_pre_hook(make_hook(l), with_kwargs=True) for l in range(start, end)]
    try:
        return model.generate(input_ids=input_ids, pixel_values=pixel_values, **generate_kwargs)
    finally:
        for handle in handles:
            handle.remove()


