import os
import sys
import tempfile


# Tests never reach the Hub: everything is built in code or read from temporary folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Remote code loaded by the tests is cached in a private folder, never in the user's ~/.cache.
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="vift-test-modules-"))
# One intra-op thread: the tests' tiny models run faster so than with a thread pool contending for the
# 2 shared cores (measured ~10x on forward/generate under load). VIFT_TEST_THREADS overrides; child processes inherit.
THREADS = int(os.environ.get("VIFT_TEST_THREADS", "1"))
os.environ["OMP_NUM_THREADS"] = str(THREADS)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
import torch  # noqa: E402


torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


# The focused suite CI's version matrix runs under every transformers (`pytest -m compat`): remote-code round trip,
# generate plain/fused/beam/streamer, packed forward, one training run, processor, the version range.
COMPAT_SUITE = (
    "tests/test_versions.py",
    "tests/test_remote_code.py",
    "tests/test_processing.py",
    "tests/test_modeling.py::test_forward_loss_and_generate",
    "tests/test_modeling.py::test_mixed_image_counts_batch_matches_each_sample_alone",
    "tests/test_modeling.py::test_packed_rows_match_separate_samples",
    "tests/test_fusion.py::test_fast_path_equals_sequential_reference",
    "tests/test_fusion.py::test_fusion_false_and_imageless_batches_are_ordinary_generation",
    "tests/test_fusion.py::test_beam_search_and_sampling_match_reference",
    "tests/test_fusion.py::test_streamer_and_stop_strings_work_with_fusion",
    "tests/test_packing.py::test_packed_batch_loss_and_gradients_equal_unpacked_batch",
    "tests/test_training.py::test_stage1_and_stage2_recipes_run_and_their_checkpoints_load_with_remote_code",
    "tests/test_training.py::test_trl_sft_cli_trains_a_vift_checkpoint_on_a_conversational_dataset",
    "tests/test_peft.py",
)


def pytest_collection_modifyitems(config, items):
    matched = set()
    for item in items:
        for entry in COMPAT_SUITE:
            if item.nodeid == entry or item.nodeid.startswith(entry + "::") or item.nodeid.startswith(entry + "["):
                item.add_marker(pytest.mark.compat)
                matched.add(entry)
    if config.getoption("markexpr") == "compat":
        # a renamed test must not drop out of the matrix silently
        missing = [entry for entry in COMPAT_SUITE if entry not in matched and os.path.exists(entry.split("::")[0])]
        if missing:
            raise pytest.UsageError(f"COMPAT_SUITE entries match no test: {missing}")
