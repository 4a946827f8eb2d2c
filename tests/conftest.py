"""Shared test setup: offline Hub, deterministic CPU math, paths to the shared oracles."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOBILECLIP_SHARED", REPO_ROOT.parent / "shared"))
GOLDEN = SHARED / "golden"
EMOJI = SHARED / "data" / "emoji"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"Golden oracle files not found at {GOLDEN}; set MOBILECLIP_SHARED to the shared folder.")
    return GOLDEN


@pytest.fixture(scope="session")
def emoji_dir() -> Path:
    if not EMOJI.is_dir():
        pytest.fail(f"Emoji dataset not found at {EMOJI}; set MOBILECLIP_SHARED to the shared folder.")
    return EMOJI


@pytest.fixture
def fresh_accelerate_state():
    """In-process runs share Accelerate's singletons: reset them so each run configures its own. One intra-op
    thread, as in the subprocess runs: busy-waiting OpenMP threads on a shared 2-core box make steps 50x slower."""
    from accelerate.state import AcceleratorState, GradientState

    def reset():
        AcceleratorState._reset_state(True)
        GradientState._reset_state()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reset()
    yield
    torch.set_num_threads(threads)
    reset()
