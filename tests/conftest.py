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
