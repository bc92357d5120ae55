import copy

import numpy as np
import pytest
import torch

from modeling_vift.testing_utils import tiny_vift
from modeling_vift.training.data import ImageLoadError, build_training_data
from modeling_vift.training.packing import (
    PACKED_SDPA,
    SKIPS_KEY,
    ViFTDataCollator,
    fill_ratio,
    merge_skips,
    pack_bfd,
    pack_bfd_split,
    packed_rows_dataset,
    register_packed_sdpa,
    text_turn_split_points,
    turn_split_points,
)
from tests._training_fixtures import tiny_assets  # noqa: F401  (session fixture)


MAX_LENGTH = 160


@pytest.fixture(scope="module")
def model_and_processor():
    register_packed_sdpa()
    model, processor = tiny_vift()
    return model.float(), processor


@pytest.fixture(scope="module")
def data(tiny_assets, model_and_processor):  # noqa: F811
    mixture = {
        "seed": 0,
        "sources": [
            {"name": "captions", "path": tiny_assets["stage2_captions"], "image_folder": tiny_assets["image_folder"]},
            {"name": "text", "path": tiny_assets["text_instructions"]},
            {"name": "trl", "path": tiny_assets["trl_mixed"], "fraction": 0.5},
        ],
    }
    return build_training_data(mixture, model_and_processor[1], max_length=MAX_LENGTH, template="chat")


def multi_sample_rows(data, count):
    """The `count` packed rows holding the most samples (with images among them)."""
    rows = packed_rows_dataset(data, MAX_LENGTH, packing=True, max_images_per_row=8)
    chosen = sorted((rows[i] for i in range(len(rows))), key=lambda r: -len(r["rows"]))[:count]
    assert all(len(r["rows"]) >= 2 for r in chosen)
    return chosen


def singles(rows):
    return [{"sources": [s], "rows": [r]} for row in rows for s, r in zip(row["sources"], row["rows"])]


def loss_and_grads(model, batch, fused=False):
    model.zero_grad()
    inputs = {k: v for k, v in batch.items() if k != SKIPS_KEY}
    output = model(**inputs, fused_lm_head=True) if fused else model(**inputs)
    output.loss.backward()
    return output.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_bfd_places_every_sample_once_within_row_length_and_image_cap():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=2000)
    images = rng.integers(0, 3, size=2000)
    bins = pack_bfd(lengths, 512, images, max_images_per_row=3)
    members = np.concatenate(bins)
    assert sorted(members.tolist()) == list(range(2000))
    assert max(lengths[b].sum() for b in bins) <= 512
    assert max(images[b].sum() for b in bins) <= 3
    # The cap binds: without it rows take more images.
    assert max(images[b].sum() for b in pack_bfd(lengths, 512)) > 3


def test_bfd_reaches_97_percent_fill_on_a_caption_and_text_mix():
    rng = np.random.default_rng(0)
    n = 6000
    is_caption = rng.random(n) < 0.7
    lengths = np.where(is_caption, 729 + rng.integers(50, 301, n), rng.integers(100, 3001, n))
    bins = pack_bfd(lengths, 4096, is_caption.astype(int), max_images_per_row=8)
    assert fill_ratio([lengths[b].sum() for b in bins], 4096) >= 0.97


def synthetic_mix(n, caption_share, seed=0):
    """Like benchmarks/packing.py: captions 729 + 50-300 tokens; text 100-3000 tokens with 1-4 assistant turns cut
    at random points."""
    rng = np.random.default_rng(seed)
    is_caption = rng.random(n) < caption_share
    lengths = np.where(is_caption, 729 + rng.integers(50, 301, n), rng.integers(100, 3001, n))
    turns = rng.integers(1, 5, n)
    points = {int(i): np.unique(rng.integers(1, lengths[i], turns[i] - 1))
              for i in np.flatnonzero(~is_caption & (turns > 1))}
    return lengths, is_caption.astype(np.int64), points


@pytest.mark.parametrize("caption_share", [0.5, 0.7, 0.9])
def test_split_packing_reaches_97_percent_fill_where_whole_samples_do_not(caption_share):
    lengths, images, points = synthetic_mix(20_000, caption_share)
    rows = pack_bfd_split(lengths, 4096, points, images, max_images_per_row=8)
    assert fill_ratio([sum(end - start for _, start, end in row) for row in rows], 4096) >= 0.97
    whole = pack_bfd(lengths, 4096, images, max_images_per_row=8)
    whole_fill = fill_ratio([lengths[b].sum() for b in whole], 4096)
    cut = sum(len(row) for row in rows) > len(lengths)
    # Conversations are cut only where whole samples fall short (at 0.9 the rows run out of small samples).
    assert cut == (whole_fill < 0.97) and cut == (caption_share == 0.9)


def test_split_pieces_tile_every_sample_once_at_its_split_points_only():
    lengths, images, points = synthetic_mix(3000, 0.8, seed=1)
    rows = pack_bfd_split(lengths, 4096, points, images, max_images_per_row=2)
    assert max(sum(e - s for _, s, e in row) for row in rows) <= 4096
    assert max(sum(images[i] for i, s, _ in row if s == 0) for row in rows) <= 2
    pieces = {}
    for row in rows:
        for index, start, end in row:
            pieces.setdefault(index, []).append((start, end))
    assert sorted(pieces) == list(range(len(lengths)))
    cut_samples = 0
    for index, spans in pieces.items():
        spans.sort()
        edges = [s for s, _ in spans] + [spans[-1][1]]
        assert edges[0] == 0 and edges[-1] == lengths[index]
        assert all(end == next_start for (_, end), (next_start, _) in zip(spans[:-1], spans[1:]))
        assert set(edges[1:-1]) <= set(points.get(index, np.zeros(0)).tolist())  # cut only at turn ends
        assert len(spans) == 1 or not images[index]  # samples with images stay whole
        cut_samples += len(spans) > 1
    assert cut_samples > 0


def test_split_packing_rejects_cuts_outside_a_sample_or_through_images():
    with pytest.raises(ValueError, match="must increase strictly inside"):
        pack_bfd_split([10, 10], 16, {0: [10]})
    with pytest.raises(ValueError, match="holds images and cannot be split"):
        pack_bfd_split([10, 10], 16, {1: [4]}, num_images=[0, 1], max_images_per_row=2)


def test_turn_split_points_are_the_starts_of_user_turns_after_an_assistant_turn():
    # system/user (-100), assistant (targets), user, assistant, user, assistant (targets to the end)
    labels = [-100] * 3 + [5, 6] + [-100] * 2 + [7] + [-100] + [8, 9]
    assert turn_split_points(labels).tolist() == [5, 8]
    assert turn_split_points([-100, 4, 5, -100]).tolist() == []  # a trailing ignored token is no turn boundary
    assert turn_split_points([-100, -100]).tolist() == []


def test_split_turn_rows_collate_every_supervised_token_exactly_once(data, model_and_processor):
    processor = model_and_processor[1]
    points = text_turn_split_points(data)
    assert points and all(data.num_images[i] == 0 for i in points)  # the tiny text data has two-turn samples
    # A row length that forces cuts: the longest sample is still whole-packable.
    max_length = int(data.lengths.max())
    whole = packed_rows_dataset(data, max_length, packing=True, max_images_per_row=8)
    split = packed_rows_dataset(data, max_length, packing=True, max_images_per_row=8, split_turns=True)
    assert split.column_names == ["sources", "rows", "num_tokens", "starts", "ends"]
    pieces = sum(len(r) for r in split["rows"])
    assert pieces > len(data)  # some conversations were cut
    assert sum(split["num_tokens"]) == sum(whole["num_tokens"])
    collator = ViFTDataCollator(processor, data, padding_free=True, return_seq_lens=True)

    def supervised(rows):
        batch = collator([rows[i] for i in range(len(rows))])
        labels, positions = batch["labels"][0], batch["position_ids"][0]
        starts = (positions == 0).nonzero().flatten()
        assert torch.equal(batch["cu_seq_lens_q"][:-1].long(), starts)  # one segment per piece
        assert all(labels[s] == -100 for s in starts.tolist())
        return len(starts), sorted(labels[labels != -100].tolist())

    n_split, split_targets = supervised(split)
    n_whole, whole_targets = supervised(whole)
    assert (n_split, n_whole) == (pieces, len(data))
    assert split_targets == whole_targets and len(split_targets) > 0


def test_bfd_rejects_samples_that_cannot_fit_a_row():
    with pytest.raises(ValueError, match="exceeds max_length=10"):
        pack_bfd([5, 11], 10)
    with pytest.raises(ValueError, match="more than max_images_per_row=1"):
        pack_bfd([5, 5], 10, [1, 2], max_images_per_row=1)


def test_packed_rows_carry_references_only_and_collate_with_positions_restarting_per_sample(data, model_and_processor):
    processor = model_and_processor[1]
    rows_dataset = packed_rows_dataset(data, MAX_LENGTH, packing=True, max_images_per_row=8)
    assert rows_dataset.column_names == ["sources", "rows", "num_tokens"]  # no image bytes, no tokens
    assert sum(len(r) for r in rows_dataset["rows"]) == len(data)
    rows = multi_sample_rows(data, 3)
    batch = ViFTDataCollator(processor, data, padding_free=True)(rows)
    assert set(batch) >= {"input_ids", "labels", "position_ids"} and "attention_mask" not in batch
    positions, labels = batch["position_ids"][0], batch["labels"][0]
    starts = (positions == 0).nonzero().flatten().tolist()
    assert len(starts) == sum(len(r["rows"]) for r in rows)
    assert all(labels[s] == -100 for s in starts)  # no target across a boundary
    assert batch["input_ids"].shape[1] == sum(r["num_tokens"] for r in rows)
    # The images ride with their rows, in order of appearance.
    expected = [image for r in rows for s, i in zip(r["sources"], r["rows"]) for image in data.sources[s].load_images(i)]
    n_image_tokens = int((batch["input_ids"] == processor.image_token_id).sum())
    assert n_image_tokens == len(expected) * processor.image_seq_length
    if expected:
        reference = processor.image_processor(processor.prepare_images(expected), return_tensors="pt")["pixel_values"]
        assert torch.equal(batch["pixel_values"], reference)


@pytest.mark.parametrize("attention", ["sdpa", PACKED_SDPA])
def test_packed_batch_loss_and_gradients_equal_unpacked_batch(data, model_and_processor, attention):
    from trl.trainer.utils import add_fused_lm_head

    model, processor = model_and_processor
    model = copy.deepcopy(model).train()
    rows = multi_sample_rows(data, 4)
    padded = ViFTDataCollator(processor, data, padding_free=False)(singles(rows))
    model.set_attn_implementation(attention)
    packed = ViFTDataCollator(processor, data, padding_free=True, return_seq_lens=attention == PACKED_SDPA)(rows)
    assert ("cu_seq_lens_q" in packed) == (attention == PACKED_SDPA)
    assert packed["input_ids"].shape[0] == 1 and padded["input_ids"].shape[0] == len(singles(rows))
    assert "pixel_values" in packed

    packed_loss, packed_grads = loss_and_grads(model, packed)
    padded_loss, padded_grads = loss_and_grads(model, padded)
    assert torch.allclose(packed_loss, padded_loss, atol=1e-5, rtol=0)
    assert packed_grads.keys() == padded_grads.keys() and len(packed_grads) > 0
    for name in packed_grads:
        assert torch.allclose(packed_grads[name], padded_grads[name], atol=1e-5, rtol=0), name

    # The same through TRL's fused LM head, which the SFTTrainer uses.
    add_fused_lm_head(model)
    fused_loss, fused_grads = loss_and_grads(model, packed, fused=True)
    assert torch.allclose(fused_loss, padded_loss, atol=1e-5, rtol=0)
    for name in fused_grads:
        assert torch.allclose(fused_grads[name], padded_grads[name], atol=1e-5, rtol=0), name


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_chunked_loss_and_gradients_equal_the_full_logits_loss(data, model_and_processor, layout):
    model, processor = model_and_processor
    model = copy.deepcopy(model).train()
    rows = multi_sample_rows(data, 3)
    batch = ViFTDataCollator(processor, data, padding_free=layout == "packed")(rows if layout == "packed"
                                                                              else singles(rows))
    batch.pop(SKIPS_KEY)
    targets = int((batch["labels"] != -100).sum())
    for num_items in (None, targets + 5):  # the model's own normalisation, and the Trainer's token count
        extra = {} if num_items is None else {"num_items_in_batch": num_items}
        full_loss, full_grads = loss_and_grads(model, {**batch, **extra})
        model.zero_grad()
        output = model(**batch, **extra, loss_chunk_size=7)  # 7 tokens per chunk: many chunks, a ragged last one
        assert output.logits is None
        output.loss.backward()
        chunked_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        assert torch.allclose(output.loss, full_loss, atol=1e-6, rtol=1e-6)
        assert chunked_grads.keys() == full_grads.keys()
        for name in full_grads:
            assert torch.allclose(chunked_grads[name], full_grads[name], atol=1e-6, rtol=1e-5), name
    with pytest.raises(ValueError, match="positive number of tokens"):
        model(**batch, loss_chunk_size=-1)


@pytest.mark.parametrize("attention", ["sdpa", PACKED_SDPA])
def test_perturbing_one_packed_sample_leaves_the_others_logits_unchanged(data, model_and_processor, attention):
    model, processor = model_and_processor
    model = copy.deepcopy(model)
    model.set_attn_implementation(attention)
    rows = multi_sample_rows(data, 1)
    collator = ViFTDataCollator(processor, data, padding_free=True, return_seq_lens=attention == PACKED_SDPA)
    batch = collator(rows)
    batch.pop(SKIPS_KEY)
    positions = batch["position_ids"][0]
    starts = (positions == 0).nonzero().flatten().tolist() + [positions.numel()]
    assert len(starts) >= 3
    victim = slice(starts[0], starts[1])  # the first sample: every later one could see it if attention leaked
    perturbed = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
    ids = perturbed["input_ids"][0, victim]
    text = ids != processor.image_token_id
    ids[text] = (ids[text] + 7) % processor.tokenizer.vocab_size
    if "pixel_values" in perturbed:
        perturbed["pixel_values"][0] = torch.randn_like(perturbed["pixel_values"][0])
    with torch.no_grad():
        logits = model(**batch).logits[0]
        changed = model(**perturbed).logits[0]
    assert not torch.allclose(logits[victim], changed[victim])
    others = torch.ones(positions.numel(), dtype=torch.bool)
    others[victim] = False
    if "pixel_values" in batch and (batch["input_ids"][0, victim] == processor.image_token_id).sum() == 0:
        # The perturbed image belongs to another sample: exclude that sample too.
        first_image = (batch["input_ids"][0] == processor.image_token_id).nonzero()[0].item()
        owner = max(i for i, s in enumerate(starts[:-1]) if s <= first_image)
        others[starts[owner]:starts[owner + 1]] = False
    assert others.any()
    assert torch.equal(logits[others], changed[others])


def test_text_only_batch_runs_the_vision_tower_without_changing_the_loss(data, model_and_processor):
    model, processor = model_and_processor
    text_rows = [{"sources": [int(s)], "rows": [int(r)]}
                 for s, r, n in zip(data.source_ids, data.rows, data.num_images) if n == 0][:3]
    plain = ViFTDataCollator(processor, data, padding_free=True)(text_rows)
    with_vision = ViFTDataCollator(processor, data, padding_free=True, always_run_vision=True)(text_rows)
    assert "pixel_values" not in plain and with_vision["pixel_values"].shape[0] == 1
    model = copy.deepcopy(model).train()
    loss_plain, _ = loss_and_grads(model, plain)
    loss_vision, grads = loss_and_grads(model, with_vision)
    assert torch.allclose(loss_plain, loss_vision, atol=1e-6)
    assert any("vision_tower" in name for name in grads)  # it ran, with zero-effect gradients
    assert all(grads[n].abs().max() == 0 for n in grads if "vision_tower" in n or "multi_modal_projector" in n)


def test_missing_and_unreadable_images_are_skipped_counted_or_fatal_in_strict_mode(tmp_path, model_and_processor):
    import json

    from recipes.make_tiny_assets import write_images

    processor = model_and_processor[1]
    names = write_images(str(tmp_path / "images"), 3)
    (tmp_path / "images" / names[1]).write_bytes(b"not a png at all")
    records = [
        {"id": str(i), "image": name, "conversations": [{"from": "human", "value": "<image>\n"},
                                                         {"from": "gpt", "value": "a red circle"}]}
        for i, name in enumerate([names[0], names[1], "gone.png"])
    ]
    (tmp_path / "d.json").write_text(json.dumps(records))
    mixture = {"sources": [{"name": "caps", "path": str(tmp_path / "d.json"), "image_folder": str(tmp_path / "images")}]}
    # File checks off: every image problem surfaces while loading the batch, in the dataloader workers.
    data = build_training_data(mixture, processor, max_length=MAX_LENGTH, check_image_files=False)
    rows = packed_rows_dataset(data, MAX_LENGTH, packing=True)
    loader = torch.utils.data.DataLoader(rows, batch_size=len(rows), num_workers=1,
                                         collate_fn=ViFTDataCollator(processor, data))
    batch = next(iter(loader))
    images = tmp_path / "images"
    expected = {"caps/unreadable_image": [str(images / names[1])], "caps/missing_image": [str(images / "gone.png")]}
    assert batch[SKIPS_KEY] == expected
    # A file that fails again (the next epoch, a retried batch) is one skipped image, not one per load.
    assert merge_skips(merge_skips({}, batch[SKIPS_KEY]), next(iter(loader))[SKIPS_KEY]) == {
        key: set(paths) for key, paths in expected.items()}
    assert batch["pixel_values"].shape[0] == 1 and int((batch["position_ids"][0] == 0).sum()) == 1
    with pytest.raises(ImageLoadError, match="cannot be decoded|does not exist"):
        ViFTDataCollator(processor, data, strict_images=True)([rows[i] for i in range(len(rows))])
    # With file checks on (the default), missing files are counted before packing.
    checked = build_training_data(mixture, processor, max_length=MAX_LENGTH)
    assert dict(checked.report.skipped) == {"caps/missing_image": 1} and len(checked) == 2
