"""Vision-aware packing: best-fit-decreasing rows of tokenised samples that carry their images, and the collator that
builds padding-free batches (position ids restarting per sample, no attention mask, no label across a boundary).

TRL's own packer carries only per-token columns, so it cannot move images with their tokens; here a packed row is
a list of (source, row) references, and the collator — running in the dataloader workers — fetches the tokens,
loads and processes the row's images in order, and expands each `<image>` id to `image_seq_length` tokens.

Not part of the remote-code bundle.
"""

import logging
from itertools import repeat

import numpy as np
import torch

from .data import ImageLoadError, SkipReport


logger = logging.getLogger(__name__)

SKIPS_KEY = "vift_skips"
PACKED_SDPA = "vift_packed_sdpa"


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                          **kwargs):
    """Attention for padding-free packed rows without flash-attention: given the collator's sample boundaries
    (`cu_seq_lens_q`), each sample is attended on its own with PyTorch's causal SDPA kernel, so a packed row costs
    the sum of its samples' squared lengths instead of the row's squared length under a dense block-diagonal mask.
    Any other call (vision tower, padded batches, generation) goes to transformers' SDPA unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    boundaries = kwargs.get("cu_seq_lens_q")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if boundaries is None or not causal or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    grouped = query.shape[1] != key.shape[1]
    edges = boundaries.tolist()
    lengths = [end - start for start, end in zip(edges[:-1], edges[1:])]
    if edges[0] != 0 or edges[-1] != query.shape[2] or min(lengths) <= 0:
        raise ValueError(
            f"cu_seq_lens_q={edges} does not split the {query.shape[2]} tokens of the packed row into samples: it "
            f"must start at 0, increase strictly and end at the row length (ViFTDataCollator builds it)."
        )
    # `split` (one concatenating backward) rather than slices (one zero-filled gradient per slice).
    pieces = zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))
    outputs = [
        torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=grouped
        )
        for q, k, v in pieces
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def register_packed_sdpa():
    """Registers `attn_implementation="vift_packed_sdpa"` with transformers (masks as for SDPA). Call it before
    loading or switching a model to that implementation; registering again is harmless."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)



class _CapacityTree:
    """Open bins indexed by remaining token capacity, with a max segment tree over "largest image room" per capacity,
    so that the tightest bin with room for `length` tokens and `images` images is found in O(log max_length)."""

    def __init__(self, max_length, max_room):
        self.size = 1
        while self.size < max_length + 1:
            self.size *= 2
        self.tree = [-1] * (2 * self.size)
        self.max_room = max_room
        self.leaves = {}  # capacity -> {image room: [bin ids]}

    def _update(self, capacity):
        buckets = self.leaves.get(capacity)
        value = max((room for room, ids in buckets.items() if ids), default=-1) if buckets else -1
        node = capacity + self.size
        self.tree[node] = value
        node //= 2
        while node:
            value = max(self.tree[2 * node], self.tree[2 * node + 1])
            if self.tree[node] == value:
                break
            self.tree[node] = value
            node //= 2

    def add(self, bin_id, capacity, room):
        self.leaves.setdefault(capacity, {}).setdefault(room, []).append(bin_id)
        self._update(capacity)

    def pop_best(self, length, images):
        """Removes and returns `(bin_id, capacity, room)` of the bin with the least capacity >= `length` among those
        with image room >= `images` (the least sufficient room among equals), or None."""
        capacity = self._first_at_least(length, images)
        if capacity is None:
            return None
        buckets = self.leaves[capacity]
        room = min(r for r, ids in buckets.items() if ids and r >= images)
        bin_id = buckets[room].pop()
        self._update(capacity)
        return bin_id, capacity, room

    def _first_at_least(self, low, need):
        # Leftmost leaf index >= low whose value >= need.
        def search(node, lo, hi):
            if hi < low or self.tree[node] < need:
                return None
            if lo == hi:
                return lo
            mid = (lo + hi) // 2
            found = search(2 * node, lo, mid)
            return found if found is not None else search(2 * node + 1, mid + 1, hi)

        return search(1, 0, self.size - 1)


def pack_bfd(lengths, max_length, num_images=None, max_images_per_row=None):
    """Best-fit-decreasing bin packing of samples of `lengths` tokens into rows of at most `max_length` tokens, with
    at most `max_images_per_row` images per row (`num_images` per sample). Samples are placed longest first into
    the open row with the least room that fits them (ties keep the input order, so shuffle the input first).

    Returns a list of int64 arrays of sample indices, one per row; every sample appears exactly once."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        return []
    if lengths.min() <= 0:
        raise ValueError("pack_bfd: every sample must have at least one token.")
    if lengths.max() > max_length:
        raise ValueError(
            f"pack_bfd: a sample of {int(lengths.max())} tokens exceeds max_length={max_length}; drop or truncate "
            f"samples before packing."
        )
    if num_images is None or max_images_per_row is None:
        images = np.zeros(len(lengths), dtype=np.int64)
        cap = 0
    else:
        images = np.asarray(num_images, dtype=np.int64)
        cap = int(max_images_per_row)
        if images.max() > cap:
            raise ValueError(
                f"pack_bfd: a sample holds {int(images.max())} images, more than max_images_per_row={cap}; drop it "
                f"before packing or raise the cap."
            )
    order = np.argsort(-lengths, kind="stable")
    tree = _CapacityTree(max_length, cap)
    bins = []
    for index in order.tolist():
        length, need = int(lengths[index]), int(images[index])
        best = tree.pop_best(length, need)
        if best is None:
            bins.append([index])
            capacity, room = max_length - length, cap - need
            bin_id = len(bins) - 1
        else:
            bin_id, capacity, room = best
            bins[bin_id].append(index)
            capacity, room = capacity - length, room - need
        if capacity > 0:
            tree.add(bin_id, capacity, room)
    return [np.asarray(b, dtype=np.int64) for b in bins]


def pack_bfd_split(lengths, max_length, split_points, num_images=None, max_images_per_row=None, target_fill=0.97):
    """Best-fit-decreasing packing in which some samples may be cut at given token offsets (`split_points`: a mapping
    from sample index to the offsets, strictly inside the sample, where a piece may start: for a conversation, the
    first token after each assistant turn but the last; see `turn_split_points`). Splittable samples must hold no
    images (images are never cut).

    When `pack_bfd` of the whole samples already fills `target_fill` of the row slots, nothing is cut. Otherwise the
    samples without split points are packed first (`pack_bfd`); then each splittable sample that fits whole into an
    open row goes into the tightest one, longest first; the others are cut at all their points and the pieces are
    packed best-fit decreasing into the open rows (new rows when none fits), the small pieces last so that they fill
    the gaps; pieces of one sample that land in the same row one after the other are joined again.

    Returns a list of rows, each a list of `(sample index, start, end)` pieces (token offsets, end exclusive); the
    pieces of every sample tile it exactly once."""
    lengths = np.asarray(lengths, dtype=np.int64)
    images = np.zeros(len(lengths), dtype=np.int64) if num_images is None else np.asarray(num_images, dtype=np.int64)
    cap = 0 if num_images is None or max_images_per_row is None else int(max_images_per_row)
    cuts = {}
    for index, points in (split_points or {}).items():
        index, points = int(index), np.asarray(points, dtype=np.int64)
        if len(points) and (points.min() <= 0 or points.max() >= lengths[index] or np.any(np.diff(points) <= 0)):
            raise ValueError(
                f"pack_bfd_split: the split points of sample {index} must increase strictly inside its "
                f"{int(lengths[index])} tokens, got {points.tolist()}."
            )
        if len(points) and images[index]:
            raise ValueError(f"pack_bfd_split: sample {index} holds images and cannot be split; give split points "
                             f"for text-only samples only.")
        if len(points):
            cuts[index] = points
    whole_rows = pack_bfd(lengths, max_length, num_images, max_images_per_row)
    if not cuts or fill_ratio([lengths[r].sum() for r in whole_rows], max_length) >= target_fill:
        return [[(int(i), 0, int(lengths[i])) for i in row] for row in whole_rows]

    fixed = np.asarray([i for i in range(len(lengths)) if i not in cuts], dtype=np.int64)
    bins = [[(int(fixed[i]), 0, int(lengths[fixed[i]])) for i in row]
            for row in pack_bfd(lengths[fixed], max_length, None if num_images is None else images[fixed],
                                max_images_per_row)]
    tree = _CapacityTree(max_length, cap)
    for bin_id, row in enumerate(bins):
        used = sum(end - start for _, start, end in row)
        if used < max_length:
            tree.add(bin_id, max_length - used, cap - int(images[[i for i, _, _ in row]].sum()))

    def place(piece):
        size = piece[2] - piece[1]
        best = tree.pop_best(size, 0)
        if best is None:
            bins.append([piece])
            bin_id, capacity, room = len(bins) - 1, max_length - size, cap
        else:
            bin_id, capacity, room = best
            bins[bin_id].append(piece)
            capacity -= size
        if capacity > 0:
            tree.add(bin_id, capacity, room)

    pieces = []
    for index in sorted(cuts, key=lambda i: (-lengths[i], i)):
        length = int(lengths[index])
        if tree._first_at_least(length, 0) is not None:
            place((index, 0, length))
        else:
            edges = [0, *cuts[index].tolist(), length]
            pieces.extend((index, start, end) for start, end in zip(edges[:-1], edges[1:]))
    for piece in sorted(pieces, key=lambda p: (p[1] - p[2], p[0], p[1])):
        place(piece)
    rows = []
    for members in bins:
        row = []
        for index, start, end in sorted(members):
            if row and row[-1][0] == index and row[-1][2] == start:
                row[-1] = (index, row[-1][1], end)  # the next piece of the same sample: join them again
            else:
                row.append((index, start, end))
        rows.append(row)
    return rows


def turn_split_points(labels):
    """Token offsets where a tokenised conversation may be cut without losing a target: the first token after each
    assistant turn but the last (an ignored label right after a supervised one, with supervised tokens after it).
    Every target keeps the token before it in the same piece, so the pieces together carry each supervised token
    exactly once; the later pieces lose the earlier turns as context."""
    supervised = np.asarray(labels) != -100
    if not supervised.any():
        return np.zeros(0, dtype=np.int64)
    points = np.flatnonzero(supervised[:-1] & ~supervised[1:]) + 1
    return points[points < np.flatnonzero(supervised)[-1]].astype(np.int64)


def text_turn_split_points(data):
    """`turn_split_points` of every text-only sample of a `TrainingData` that has any, as {sample index: offsets}
    (samples with images are never split). Reads the labels column of each source once, chunk by chunk, through
    Arrow."""
    points = {}
    text = np.flatnonzero(np.asarray(data.num_images) == 0)
    for source_id in np.unique(data.source_ids[text]).tolist():
        members = text[data.source_ids[text] == source_id]
        members = members[np.argsort(data.rows[members], kind="stable")]
        rows = data.rows[members]
        base = 0
        for chunk in data.tokenized[source_id].with_format("arrow")[:].column("labels").chunks:
            offsets, values = chunk.offsets.to_numpy(), chunk.values.to_numpy(zero_copy_only=False)
            lo, hi = np.searchsorted(rows, [base, base + len(chunk)])
            for index, row in zip(members[lo:hi].tolist(), (rows[lo:hi] - base).tolist()):
                found = turn_split_points(values[offsets[row]:offsets[row + 1]])
                if len(found):
                    points[index] = found
            base += len(chunk)
    return points


def packed_rows_dataset(data, max_length=None, packing=True, max_images_per_row=None, split_turns=False,
                        split_target_fill=0.97):
    """The training dataset of a `TrainingData`: a `datasets.Dataset` with one row per packed row (or per sample when
    `packing=False`) and columns `sources`, `rows` (references into the tokenised sources) and `num_tokens`.
    With `split_turns=True` (packing only), multi-turn text-only conversations may be cut after an assistant turn to
    fill rows when whole samples fill less than `split_target_fill` of the slots (`pack_bfd_split`), and the columns
    `starts` / `ends` give each piece's token range.
    Built straight from numpy arrays into Arrow, never as Python lists of records."""
    import datasets
    import pyarrow as pa

    starts = ends = None
    if packing:
        if max_length is None:
            raise ValueError("Packing needs max_length (the length of a packed row).")
        if split_turns:
            bins = pack_bfd_split(data.lengths, max_length, text_turn_split_points(data), data.num_images,
                                  max_images_per_row, target_fill=split_target_fill)
            pieces = np.asarray([piece for row in bins for piece in row], dtype=np.int64).reshape(-1, 3)
            members, starts, ends = pieces[:, 0], pieces[:, 1], pieces[:, 2]
        else:
            bins = pack_bfd(data.lengths, max_length, data.num_images, max_images_per_row)
            members = np.concatenate(bins)
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in bins])]).astype(np.int64)
    else:
        if split_turns:
            raise ValueError("split_turns cuts conversations to fill packed rows: it needs packing=True.")
        members = np.arange(len(data), dtype=np.int64)
        offsets = np.arange(len(data) + 1, dtype=np.int64)
    sizes = data.lengths[members].astype(np.int64) if starts is None else ends - starts
    num_tokens = np.add.reduceat(sizes, offsets[:-1]) if len(members) else []
    columns = {
        "sources": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(data.source_ids[members])),
        "rows": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(data.rows[members])),
        "num_tokens": pa.array(np.asarray(num_tokens, dtype=np.int64)),
    }
    if starts is not None:
        columns["starts"] = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(starts))
        columns["ends"] = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(ends))
    return datasets.Dataset(pa.table(columns))


def fill_ratio(row_lengths, max_length):
    """Share of real tokens in rows of `max_length` slots."""
    row_lengths = np.asarray(row_lengths, dtype=np.float64)
    return float(row_lengths.sum() / (len(row_lengths) * max_length)) if len(row_lengths) else 0.0


class ViFTDataCollator:
    """Builds model inputs from rows of `packed_rows_dataset`, loading and processing the images lazily (in the
    dataloader workers when `dataloader_num_workers > 0`).

    `padding_free=True` concatenates every sample of the batch into one row: `input_ids`, `labels`, `position_ids`
    (restarting at 0 per sample) and no attention mask; the first label of every sample is -100, so no loss crosses a
    sample boundary with either the model's loss or TRL's fused LM head. `padding_free=False` gives one padded row per
    dataset row, with an attention mask (the ordinary batched layout; only sensible with `packing=False`).

    A sample whose image is missing or unreadable is left out of its row and counted: the batch carries, under
    `"vift_skips"` (popped by `ViFTSFTTrainer`), the images that failed by `source/reason` (the file's path, or the
    sample's row for embedded bytes), so a file that fails again in a later epoch is counted once;
    `strict_images=True` raises on the first one instead.
    `return_seq_lens=True` adds the sample boundaries (`cu_seq_lens_q/k`, `max_length_q/k`) that flash-attention and
    `attn_implementation="vift_packed_sdpa"` use to attend sample by sample.
    `always_run_vision=True` adds a zero-loss image (its own segment, labels -100) to a batch without images, so the
    vision tower and projector run on every rank in every step (needed by FSDP/ZeRO-3 and DDP without
    `find_unused_parameters`).
    """

    def __init__(self, processor, data, padding_free=True, strict_images=False, always_run_vision=False,
                 pad_to_multiple_of=None, return_seq_lens=False):
        self.processor = processor
        self.sources = data.sources
        self.tokenized = data.tokenized
        self.padding_free = padding_free
        self.strict_images = strict_images
        self.always_run_vision = always_run_vision
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_seq_lens = return_seq_lens
        self.image_token_id = processor.image_token_id
        self.image_seq_length = processor.image_seq_length
        tokenizer = processor.tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _expand(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        return np.repeat(ids, np.where(ids == self.image_token_id, self.image_seq_length, 1))

    def _fetch(self, rows):
        samples, skips = [], {}
        for row in rows:
            sample_group = []
            spans = zip(row["starts"], row["ends"]) if row.get("starts") is not None else repeat((None, None))
            for source_id, record, (start, end) in zip(row["sources"], row["rows"], spans):
                source = self.sources[source_id]
                try:
                    images = source.load_images(record)
                except ImageLoadError as error:
                    if self.strict_images:
                        raise ImageLoadError(error.reason, f"[source {source.name!r}, row {record}] {error}") from None
                    failed = error.path or f"row {int(record)}"
                    skips.setdefault(f"{source.name}/{error.reason}", set()).add(failed)
                    logger.warning("Skipping a sample of source %r (row %d): %s", source.name, record, error)
                    continue
                tokens = self.tokenized[source_id][int(record)]
                raw_ids = np.asarray(tokens["input_ids"], dtype=np.int64)[start:end]  # a piece of a split sample
                labels = np.asarray(tokens["labels"], dtype=np.int64)[start:end]
                input_ids = self._expand(raw_ids)
                labels = np.repeat(labels, np.where(raw_ids == self.image_token_id, self.image_seq_length, 1))
                labels[0] = -100  # the first token of a sample is never a target
                sample_group.append((input_ids, labels, images))
            samples.append(sample_group)
        return samples, skips

    def _dummy_image_segment(self):
        from PIL import Image

        size = self._image_size()
        ids = np.full(self.image_seq_length, self.image_token_id, dtype=np.int64)
        return ids, np.full_like(ids, -100), [Image.new("RGB", (size, size))]

    def _image_size(self):
        size = getattr(self.processor.image_processor, "size", None) or {}
        return size.get("height") or size.get("shortest_edge") or 32

    def __call__(self, rows):
        groups, skips = self._fetch(rows)
        has_images = any(images for group in groups for _, _, images in group)
        if not has_images and self.always_run_vision:
            groups.append([self._dummy_image_segment()])
        groups = [g for g in groups if g]
        if not groups:
            # Every sample of the batch was skipped: one padding token without a target keeps the step valid.
            pad = np.array([self.pad_token_id], dtype=np.int64)
            groups = [[(pad, np.array([-100]), [])]]
        images = [image for group in groups for _, _, sample_images in group for image in sample_images]
        if self.padding_free:
            batch = self._padding_free(groups)
        else:
            batch = self._padded(groups)
        if images:
            prepared = self.processor.prepare_images(images)
            batch["pixel_values"] = self.processor.image_processor(prepared, return_tensors="pt")["pixel_values"]
        batch[SKIPS_KEY] = {key: sorted(failed) for key, failed in skips.items()}
        return batch

    def _padding_free(self, groups):
        input_ids, labels, positions = [], [], []
        for group in groups:
            for ids, lab, _ in group:
                input_ids.append(ids)
                labels.append(lab)
                positions.append(np.arange(len(ids)))
        total = sum(len(ids) for ids in input_ids)
        if self.pad_to_multiple_of and total % self.pad_to_multiple_of:
            extra = self.pad_to_multiple_of - total % self.pad_to_multiple_of
            input_ids.append(np.full(extra, self.pad_token_id))
            labels.append(np.full(extra, -100))
            positions.append(np.arange(extra))
        batch = {
            "input_ids": torch.from_numpy(np.concatenate(input_ids))[None],
            "labels": torch.from_numpy(np.concatenate(labels))[None],
            "position_ids": torch.from_numpy(np.concatenate(positions))[None],
        }
        if self.return_seq_lens:
            lengths = torch.tensor([len(p) for p in positions])
            cu = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).to(torch.int32)])
            batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cu
            batch["max_length_q"] = batch["max_length_k"] = int(lengths.max())
        return batch

    def _padded(self, groups):
        rows = []
        for group in groups:
            ids = np.concatenate([s[0] for s in group])
            lab = np.concatenate([s[1] for s in group])
            rows.append((ids, lab))
        if any(len(group) > 1 for group in groups):
            raise ValueError(
                "padding_free=False needs one sample per row (packing=False): packed rows hold several samples that "
                "must not attend to each other, which only the padding-free layout expresses."
            )
        width = max(len(r[0]) for r in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.from_numpy(ids)
            labels[i, : len(ids)] = torch.from_numpy(lab)
            attention_mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def merge_skips(failed, skips):
    """Adds a batch's `vift_skips` to `failed` (`{"source/reason": set of failed images}`): each image once, however
    often it is loaded."""
    for key, images in (skips or {}).items():
        failed.setdefault(key, set()).update(images)
    return failed


__all__ = ["PACKED_SDPA", "ViFTDataCollator", "packed_sdpa_attention", "register_packed_sdpa", "fill_ratio", "merge_skips", "pack_bfd", "pack_bfd_split", "packed_rows_dataset",
           "text_turn_split_points", "turn_split_points", "SkipReport"]
