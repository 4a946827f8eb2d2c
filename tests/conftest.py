"""Shared test setup: offline Hub, deterministic CPU math, paths to the oracle files the repository bundles, the oracle
libraries, and the fixtures and helpers more than one test module uses."""

import atexit
import importlib.util
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One fresh `datasets` cache per test session (subprocesses inherit it), removed at exit. datasets (5.2) keys the
# Arrow copy of a local folder by the folder's name, and reuses it after the files changed; pytest's folder names
# repeat across sessions (`reinforced1` of one run is another module's dataset in the next), so a shared cache
# served one test another test's rows (CI runs the suite twice on one machine).
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="mobileclip-tests-datasets-")
atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# Everything the tests read ships inside the repository, so a clone runs them with nothing beside it:
FIXTURES = REPO_ROOT / "tests" / "fixtures"
GOLDEN = FIXTURES / "golden"  # inputs and outputs of Apple's code for deterministic weights (see its README)
REFERENCE = FIXTURES / "reference"  # excerpts of the published results, an oracle independent of the package's data
EMOJI = REPO_ROOT / "dataset_scripts" / "data" / "emoji"  # the emoji dataset the quickstart trains on

# The peer libraries the tests use as oracles (module -> pip name). They are the `test` extra of pyproject.toml: a
# missing one fails the run at once instead of skipping the parity tests that need it.
ORACLE_LIBRARIES = {
    "open_clip": "open-clip-torch",
    "timm": "timm",
    "clip_benchmark": "clip-benchmark",
    "sklearn": "scikit-learn",
    "scipy": "scipy",
    "webdataset": "webdataset",
    "torchvision": "torchvision",
}

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

# pytest-xdist runs the suite in several worker processes (pyproject.toml's addopts): each gets its share of the cores,
# so that OpenMP threads of two workers never spin against each other (10-100x slower steps on a shared 2-core box).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_configure(config):
    missing = [package for module, package in ORACLE_LIBRARIES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise pytest.UsageError(
            f"The tests' oracle libraries {missing} are not installed; the parity tests need them. "
            'Install the test extra: pip install -e ".[test]"'
        )


# --- helpers --------------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on now, for a rendezvous (torch.distributed, accelerate launch)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a child Python process: offline, one thread per process, this repository importable."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])), **extra}


# --- fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"Golden oracle files not found at {GOLDEN}; they ship with the repository (tests/fixtures).")
    return GOLDEN


@pytest.fixture(scope="session")
def emoji_dir() -> Path:
    if not EMOJI.is_dir():
        pytest.fail(f"Emoji dataset not found at {EMOJI}; it ships with the repository (dataset_scripts/data).")
    return EMOJI


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved `mobileclip-tiny` folder (random weights, seed 0) that AutoModel / AutoProcessor load."""
    from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel
    from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_model")
    MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny")).eval().save_pretrained(folder)
    MobileCLIPProcessor.from_variant("mobileclip-tiny").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def emoji_subset(tmp_path_factory, emoji_dir) -> Path:
    """37 Twemoji rows (every 52nd, an odd count so process shards are uneven) as a local parquet dataset."""
    import datasets

    emoji = datasets.load_dataset(str(emoji_dir), "twitter", split="train")
    subset = emoji.select(range(0, len(emoji), 52)).select_columns(["image", "name", "category", "captions"])
    assert len(subset) == 37
    path = tmp_path_factory.mktemp("emoji_subset") / "test.parquet"
    subset.to_parquet(str(path))
    return path


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
    yield reset  # tests that run several trainings call it between them
    torch.set_num_threads(threads)
    reset()
