"""The GPU suite (benchmarks/gpu_suite.py) runs end to end at tiny shapes on CPU, and packed rows equal separate
samples on GPU attention kernels (skipped without CUDA)."""

import re

import pytest
import torch

from benchmarks.gpu_suite import main as gpu_suite
from benchmarks.gpu_suite import step_flops
from modeling_vift.testing_utils import tiny_vift
from modeling_vift.training.packing import PACKED_SDPA, register_packed_sdpa


def test_gpu_suite_runs_at_tiny_shapes_and_reports_every_figure(capsys):
    rows = gpu_suite(["--tiny", "--device", "cpu", "--samples", "10", "--steps", "2", "--new_tokens", "3",
                      "--peak_tflops", "1"])
    table = capsys.readouterr().out
    parts = [row.part for row in rows]
    assert parts.count("generate") == 6 and parts.count("train step") == 2 and parts.count("packed vs padded") == 2
    for row in rows:
        assert f"| {row.part} | {row.case} |" in table
    # every ratio the targets are about is a finite number
    fused_b1 = next(r for r in rows if r.case.startswith("batch 1,") and r.case.endswith("fused"))
    assert float(fused_b1.ratio.split("x")[0]) > 0
    reference_b16 = next(r for r in rows if r.case.startswith("batch 16,") and r.case.endswith("reference"))
    assert float(re.search(r"fused ([\d.]+)x", reference_b16.ratio).group(1)) > 0
    for row in rows:
        if row.part == "train step":
            assert re.fullmatch(r"MFU [\d.]+%", row.ratio), row.ratio


def test_step_flops_counts_matmuls_and_causal_attention_per_sample():
    model, _ = tiny_vift()
    text = model.config.text_config
    n_lm = sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    batch = {"input_ids": torch.zeros(1, 10, dtype=torch.long),
             "cu_seq_lens_q": torch.tensor([0, 4, 10], dtype=torch.int32)}
    expected = 6 * n_lm * 10 + 12 * text.num_hidden_layers * text.hidden_size * (4**2 + 6**2)
    assert step_flops(model, [(batch, 0, 10)]) == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("attn", ["sdpa", "flash_attention_2", PACKED_SDPA])
def test_packed_rows_equal_separate_samples_on_gpu_kernels_in_bf16(attn):
    from transformers.utils import is_flash_attn_2_available

    from tests.test_modeling import pack, samples

    if attn == "flash_attention_2" and not is_flash_attn_2_available():
        pytest.skip("flash-attn is not installed")
    register_packed_sdpa()
    model, processor = tiny_vift()
    model = model.to("cuda", torch.bfloat16).eval()
    model.set_attn_implementation(attn)
    _, singles = samples(processor)
    input_ids, position_ids, pixel_values = pack(singles)
    lengths = torch.tensor([s["input_ids"].shape[1] for s in singles])
    boundaries = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).to(torch.int32)]).cuda()
    extra = {"cu_seq_lens_q": boundaries, "cu_seq_lens_k": boundaries, "max_length_q": int(lengths.max()),
             "max_length_k": int(lengths.max())} if attn != "sdpa" else {}
    with torch.no_grad():
        packed = model(input_ids=input_ids.cuda(), position_ids=position_ids.cuda(),
                       pixel_values=pixel_values.cuda(), **extra).logits[0].float()
        offset = 0
        for single in singles:
            length = single["input_ids"].shape[1]
            alone = model(**{k: v.cuda() for k, v in single.items()}).logits[0].float()
            torch.testing.assert_close(packed[offset:offset + length], alone, rtol=2e-2, atol=2e-2)
            offset += length
