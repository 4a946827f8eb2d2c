"""Resume never unpickles: checkpoints hold only safetensors / JSON / YAML, a planted pickle is refused before it
can run, and resuming without any pickle loader still continues a run bit-identically.

The malicious payload creates a marker file when unpickled (`open(marker, "w")`, no shell): the tests check that
resume refuses it with an error naming the file and that the marker does not appear, and - as the oracle that the
payload is live - that plain `pickle.loads` of the same bytes does create it.
"""

import contextlib
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import EMOJI


CLIP_RUN = ["--variant", "mobileclip-tiny", "--mixed_precision", "no", "--report_to", "none", "--num_workers", "0",
            "--logging_steps", "1", "--warmup_steps", "1", "--mode", "clip", "--train_data", str(EMOJI),
            "--train_data_config", "twitter", "--caption_column", "captions", "--max_train_samples", "16",
            "--per_device_batch_size", "4", "--max_steps", "3", "--save_steps", "1"]


class _CreatesFile:
    """Unpickling calls `open(path, "w")`: proof that loading the file ran code chosen by whoever wrote it."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 3-step clip-mode run with a checkpoint after every step (step_1, step_2 kept)."""
    from training.train import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _reset_accelerate()
    out = tmp_path_factory.mktemp("run") / "out"
    try:
        main([*CLIP_RUN, "--output_dir", str(out)])
    finally:
        _reset_accelerate()
        torch.set_num_threads(threads)
    return out


def test_checkpoints_hold_no_pickle(finished_run):
    from training.checkpointing import list_checkpoints, refuse_pickle_files

    checkpoints = list_checkpoints(finished_run)
    assert [step for step, _ in checkpoints] == [1, 2]
    for _, folder in checkpoints:
        names = sorted(p.name for p in folder.iterdir())
        assert names == ["model.safetensors", "optimizer.json", "optimizer.safetensors", "rng_state_0.json",
                         "trainer_state.json", "training_config.yaml"], names
        for path in folder.iterdir():  # independent of the suffixes: no pickle / torch.save archive by content
            assert not path.read_bytes()[:2].startswith((b"\x80", b"PK")) or path.suffix == ".safetensors", path
        refuse_pickle_files(folder)


@contextlib.contextmanager
def _no_unpickling():
    """Makes every pickle entry point (and torch.load, which unpickles) fail while the block runs."""
    def refuse(*args, **kwargs):
        raise AssertionError("resume tried to unpickle something")

    with pytest.MonkeyPatch.context() as patch:
        for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
            patch.setattr(module, name, refuse)
        yield


def test_resume_without_any_unpickling_continues_bit_identically(finished_run, tmp_path, fresh_accelerate_state,
                                                                   monkeypatch):
    from safetensors.torch import load_file

    import training.train as train_module

    real_load = train_module.load_checkpoint

    def load_without_pickle(*args, **kwargs):
        with _no_unpickling():
            return real_load(*args, **kwargs)

    monkeypatch.setattr(train_module, "load_checkpoint", load_without_pickle)
    resumed = train_module.main([*CLIP_RUN, "--output_dir", str(tmp_path / "out"),
                                 "--resume_from_checkpoint", str(finished_run / "checkpoints" / "step_1")])
    assert [row["step"] for row in resumed.history] == [2, 3]  # steps 2 and 3 were trained here, not restarted
    ours, reference = load_file(str(resumed.model_dir / "model.safetensors")), \
        load_file(str(finished_run / "model" / "model.safetensors"))
    assert ours.keys() == reference.keys()
    for name in reference:
        assert torch.equal(ours[name], reference[name]), name


def _crafted_copy(finished_run: Path, root: Path, name: str) -> tuple[Path, Path, bytes]:
    """A copy of the step_2 checkpoint with the payload planted as `name`."""
    crafted = root / "checkpoints" / "step_2"
    shutil.copytree(finished_run / "checkpoints" / "step_2", crafted)
    marker = root / "code_ran"
    payload = pickle.dumps(_CreatesFile(marker))
    (crafted / name).parent.mkdir(parents=True, exist_ok=True)
    (crafted / name).write_bytes(payload)
    return crafted, marker, payload


def test_planted_pickle_is_refused_by_resume_before_it_runs(finished_run, tmp_path, fresh_accelerate_state):
    from training.config import ConfigError
    from training.train import main

    # The file accelerate's load_state unpickles with weights_only=False for registered objects.
    crafted, marker, payload = _crafted_copy(finished_run, tmp_path, "custom_checkpoint_0.pkl")
    with pytest.raises(ConfigError, match=r"custom_checkpoint_0\.pkl is a pickle file.*could execute code") as info:
        main([*CLIP_RUN, "--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", str(crafted)])
    assert "Delete this checkpoint folder" in str(info.value)
    assert not marker.exists()
    pickle.loads(payload)  # the oracle: the same bytes do run code when unpickled
    assert marker.exists()


# Old accelerate RNG states, accelerate's torch.save'd optimizer, and pickles under innocent names (by content).
@pytest.mark.parametrize("name", ["random_states_0.pkl", "optimizer.bin", "notes.txt", "sub/extra.data"])
def test_pickle_found_by_suffix_or_by_content_anywhere_in_the_folder(finished_run, tmp_path, name):
    from training.checkpointing import load_checkpoint
    from training.config import ConfigError

    crafted, marker, _ = _crafted_copy(finished_run, tmp_path, name)
    # load_checkpoint checks the folder before it touches the accelerator, model or optimizer.
    with pytest.raises(ConfigError, match=rf"{Path(name).name} is a pickle file"):
        load_checkpoint(None, crafted, None, None)
    assert not marker.exists()


def test_rng_states_round_trip_through_json():
    import json

    from training.checkpointing import _rng_state, _set_rng_state

    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    np.random.standard_normal()  # leaves a cached Gaussian in the NumPy state
    saved = json.loads(json.dumps(_rng_state()))
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)  # move every stream elsewhere
    _set_rng_state(saved, Path("rng_state_0.json"))
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == expected
