"""VPG-C for ViFT models: instruction-guided residual visual re-attention (after Li et al., "Fine-tuning Multimodal
LLMs to Follow Zero-shot Demonstrative Instructions", ICLR 2024, the Cheetah work).

At one middle decoder layer, for each sample, the hidden state of the last instruction token (the last prompt token
before the answer) is mapped through a zero-initialised projection into a guidance vector. Each image of the sample
re-attends its own vision-tower patch features with a small cross-attention whose queries come from that image's
token states plus the guidance; the result is mapped back through a zero-initialised projection and added
residually to the image's token positions. Both zero projections make the module an exact no-op until trained.
It runs in training forwards and in the generation prefill (never in decoding steps, which hold no image tokens).

This file is part of the remote-code bundle: it imports only torch and transformers.
"""

import torch
import torch.nn.functional as F
from torch import nn


class ZeroInitLinear(nn.Linear):
    """A linear layer that the model's weight initialisation sets to zero (weight and bias)."""


class ViFTVisualPromptCompleter(nn.Module):
    """The VPG-C module: guidance projection, cross-attention over patch features, zero-initialised output."""

    def __init__(self, config):
        super().__init__()
        text_size = config.text_config.hidden_size
        vision_size = config.vision_config.hidden_size
        width = config.vpgc_hidden_size or vision_size
        self.num_heads = config.vpgc_num_heads
        if width % self.num_heads:
            raise ValueError(f"vpgc_hidden_size={width} must be divisible by vpgc_num_heads={self.num_heads}.")
        eps = getattr(config.text_config, "rms_norm_eps", 1e-6)
        self.state_norm = nn.LayerNorm(text_size, eps=eps)
        self.guidance = ZeroInitLinear(text_size, width)
        self.query = nn.Linear(text_size, width)
        self.key = nn.Linear(vision_size, width)
        self.value = nn.Linear(vision_size, width)
        self.output = ZeroInitLinear(width, text_size)

    def reset_zero_projections(self):
        """Zero guidance and output projections: the module adds exactly nothing until trained."""
        for linear in (self.guidance, self.output):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, image_states, instruction_states, patch_features):
        """image_states (images, tokens, text_size), instruction_states (images, text_size),
        patch_features (images, patches, vision_size) -> residual (images, tokens, text_size)."""
        images, tokens, _ = image_states.shape
        guidance = self.guidance(self.state_norm(instruction_states)).unsqueeze(1)
        queries = self.query(self.state_norm(image_states)) + guidance
        keys, values = self.key(patch_features), self.value(patch_features)

        def heads(x):
            return x.view(images, x.shape[1], self.num_heads, -1).transpose(1, 2)

        attended = F.scaled_dot_product_attention(heads(queries), heads(keys), heads(values))
        attended = attended.transpose(1, 2).reshape(images, tokens, -1)
        return self.output(attended)


def sample_ids(position_ids, attention_mask, shape):
    """Per-position sample index within each row: packed rows (no mask, position ids restarting at 0) hold several
    samples; otherwise a row is one sample."""
    if attention_mask is None and position_ids is not None:
        return (position_ids == 0).long().cumsum(-1)
    return torch.zeros(shape, dtype=torch.long, device=position_ids.device if position_ids is not None else None)


def instruction_positions(image_mask, segments, labels=None, attention_mask=None):
    """For every (row, sample) holding an image: the column of its last instruction token, i.e. the token before
    the sample's first answer token (`labels != -100`), or the sample's last real token when there is no answer
    yet (generation prefill). Returns a dict {(row, sample): column}."""
    positions = {}
    rows, cols = torch.nonzero(image_mask, as_tuple=True)
    for row, col in zip(rows.tolist(), cols.tolist()):
        key = (row, int(segments[row, col]))
        if key in positions:
            continue
        in_sample = torch.nonzero(segments[row] == key[1]).flatten()
        if attention_mask is not None:
            in_sample = in_sample[attention_mask[row, in_sample].bool()]
        answer = None
        if labels is not None:
            answered = in_sample[labels[row, in_sample] != -100]
            answered = answered[answered > col]
            answer = int(answered[0]) if answered.numel() else None
        positions[key] = answer - 1 if answer is not None else int(in_sample[-1])
    return positions


def apply_vpgc(module, hidden_states, image_mask, patch_features, segments, positions):
    """Adds the VPG-C residual to every image's token positions of `hidden_states` (the input of the VPG-C layer).
    Images are taken in order of appearance; each has `patch_features.shape[1]` patch features and
    `image_mask`-many / images tokens."""
    num_images = patch_features.shape[0]
    rows, cols = torch.nonzero(image_mask, as_tuple=True)
    if rows.numel() % max(num_images, 1):
        raise ValueError(f"{rows.numel()} image tokens cannot be split evenly over {num_images} images.")
    tokens = rows.numel() // num_images
    rows, cols = rows.view(num_images, tokens), cols.view(num_images, tokens)
    first_rows, first_cols = rows[:, 0].tolist(), cols[:, 0].tolist()
    instruction_cols = [positions[(r, int(segments[r, c]))] for r, c in zip(first_rows, first_cols)]
    image_states = hidden_states[rows, cols]
    instruction_states = hidden_states[torch.tensor(first_rows, device=hidden_states.device),
                                       torch.tensor(instruction_cols, device=hidden_states.device)]
    residual = module(image_states, instruction_states, patch_features.to(hidden_states.dtype))
    updated = hidden_states.clone()
    updated[rows, cols] = hidden_states[rows, cols] + residual.to(hidden_states.dtype)
    return updated
