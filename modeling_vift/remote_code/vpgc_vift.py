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
    """A linear layer whose initialisation (its own, and the model's weight initialisation) is zero, weight and bias."""

    def reset_parameters(self):
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


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
            linear.reset_parameters()

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


def instruction_columns(image_mask, segments, labels=None, attention_mask=None):
    """For every position, the column of the last instruction token of its (row, sample): the token before the
    sample's first answer token (`labels != -100`) after its first image token, or the sample's last real token when
    there is no answer yet (generation prefill). Returns a `(batch, seq)` long tensor (meaningful at image positions),
    computed without reading anything back from the device."""
    batch, width = image_mask.shape
    device = image_mask.device
    columns = torch.arange(width, device=device).expand(batch, width)
    # One slot per (row, sample): sample ids lie in [0, width], so row * (width + 1) + sample is unique.
    keys = (torch.arange(batch, device=device).unsqueeze(-1) * (width + 1) + segments.to(device)).flatten()
    slots = batch * (width + 1)
    real = torch.ones_like(image_mask) if attention_mask is None else attention_mask.to(device).bool()

    def reduce(values, where, fill, how):
        out = torch.full((slots,), fill, dtype=torch.long, device=device)
        return out.scatter_reduce(0, keys, torch.where(where, values, fill).flatten(), reduce=how)

    first_image = reduce(columns, image_mask, width, "amin")
    last_real = reduce(columns, real, -1, "amax")
    answer = None
    if labels is not None:
        after_image = columns > first_image[keys].view(batch, width)
        answer = reduce(columns, real & (labels.to(device) != -100) & after_image, width, "amin")
    per_sample = last_real if answer is None else torch.where(answer < width, answer - 1, last_real)
    return per_sample[keys].view(batch, width)


def instruction_positions(image_mask, segments, labels=None, attention_mask=None):
    """`instruction_columns` as a dict `{(row, sample): column}` for every (row, sample) holding an image (reads the
    result back to the host; the forward uses `instruction_columns` directly)."""
    columns = instruction_columns(image_mask, segments, labels, attention_mask)
    rows, cols = torch.nonzero(image_mask, as_tuple=True)
    keys = zip(rows.tolist(), segments[rows, cols].tolist(), columns[rows, cols].tolist())
    return {(row, sample): column for row, sample, column in keys}


def apply_vpgc(module, hidden_states, image_mask, patch_features, instruction_cols):
    """Adds the VPG-C residual to every image's token positions of `hidden_states` (the input of the VPG-C layer).
    Images are taken in order of appearance; each has `patch_features.shape[1]` patch features and
    `image_mask`-many / images tokens; `instruction_cols` comes from `instruction_columns`."""
    num_images = patch_features.shape[0]
    rows, cols = torch.nonzero(image_mask, as_tuple=True)
    if rows.numel() % max(num_images, 1):
        raise ValueError(f"{rows.numel()} image tokens cannot be split evenly over {num_images} images.")
    tokens = rows.numel() // num_images
    rows, cols = rows.view(num_images, tokens), cols.view(num_images, tokens)
    first_rows, first_cols = rows[:, 0], cols[:, 0]
    image_states = hidden_states[rows, cols]
    instruction_states = hidden_states[first_rows, instruction_cols[first_rows, first_cols]]
    residual = module(image_states, instruction_states, patch_features.to(hidden_states.dtype))
    updated = hidden_states.clone()
    updated[rows, cols] = hidden_states[rows, cols] + residual.to(hidden_states.dtype)
    return updated
