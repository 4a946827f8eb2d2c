"""A failing process of a multi-process reinforcement ends the whole job with its error; a rerun resumes."""

import json
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, free_port, subprocess_env
from test_dataset_reinforce import (  # noqa: F401 (fixtures)
    STREAMING, assert_same_dataset, cli_args, faulty_source, models, run, streaming_reference,
)
from torch_threads import single_torch_thread  # noqa: F401 (autouse fixture)

# Rank 1 takes unit 1 (the second source file); its DataLoader worker raises on the unit's third row, after the
# unit's first part (rows 0-1, `--shard-size 2`) was written. An exception type the image-skipping code does not
# catch: it comes from outside the decoder.
DRIVER = """
import os, sys
from dataset_scripts import reinforce, sample_stream

original = sample_stream.ReinforcementStream._add_example

def failing(self, batch, example, unit, row):
    if os.environ["RANK"] == "1" and unit == 1 and row == 2:
        raise KeyError("injected worker failure: unit 1 row 2")
    return original(self, batch, example, unit, row)

sample_stream.ReinforcementStream._add_example = failing
reinforce.main(sys.argv[1:])
"""


def launch_two_ranks(driver_code, argv, tmp_path):
    """(exit status, stderr) of each rank. The ranks are started directly (as mpirun or srun would), not under
    torchrun, whose agent kills the other ranks when one fails: each process must end by itself here."""
    driver = tmp_path / "driver.py"
    driver.write_text(driver_code)
    port = free_port()
    processes, logs = [], []
    for rank in (0, 1):
        env = {**subprocess_env(), "ACCELERATE_USE_CPU": "true", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        logs.append(tmp_path / f"rank{rank}.log")  # files, not pipes: an undrained pipe could block a rank
        with open(logs[-1], "wb") as log:
            processes.append(subprocess.Popen([sys.executable, str(driver), *argv], cwd=REPO_ROOT, env=env,
                                              stdout=subprocess.DEVNULL, stderr=log))
    deadline = time.monotonic() + 120
    try:
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail("a rank hung after the other rank failed")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    outcomes = [(process.returncode, log.read_text()) for process, log in zip(processes, logs)]
    return outcomes


@pytest.mark.slow
def test_a_failing_worker_on_one_rank_ends_both_processes_with_its_error_and_the_rerun_resumes(
        tmp_path, models, faulty_source, streaming_reference):
    output = tmp_path / "out"
    source = str(faulty_source / "*.parquet")
    argv = cli_args(output, models, *STREAMING, "--num-workers", "1", source=source,
                    teachers=models["open_clip_teacher"])
    outcomes = launch_two_ranks(DRIVER, argv, tmp_path)

    for rank, (code, stderr) in enumerate(outcomes):
        assert code != 0, f"rank {rank} ended successfully although rank 1 failed:\n{stderr[-3000:]}"
        assert "Reinforcement failed in 1 of 2 processes" in stderr, stderr[-3000:]
        assert "rank 1: KeyError" in stderr and "injected worker failure: unit 1 row 2" in stderr, stderr[-3000:]
    # Rank 0 finished unit 0 (it alone: the units are split, not each done twice), rank 1 kept unit 1's first part.
    states = sorted(p.name for p in (output / ".reinforce_state" / "train").glob("*.json"))
    assert states == ["00000-0000.json", "00000-0001.json", "00000-0002.json", "00001-0000.json"]
    assert not (output / "README.md").exists()  # no card for an incomplete output

    entry = run(output, models, *STREAMING, source=source, teachers=models["open_clip_teacher"])
    assert entry["complete"] and entry["written"] == 9
    assert entry["timing"]["samples"] == 3  # only unit 1's rows 2-4 were redone
    assert_same_dataset(streaming_reference, output)
    report = json.loads((output / "reinforce_report.json").read_text())["train"]
    assert report["source_rows"] == 11 and report["skipped"] == 2  # nothing lost, nothing counted twice


def test_processes_that_accelerate_would_run_alone_are_refused(tmp_path, models, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    with pytest.raises(RuntimeError, match=r"2 processes were launched but Accelerate runs each alone.*"
                                           r"ACCELERATE_USE_CPU=true"):
        run(tmp_path / "out", models, "--split", "train[:2]", "--caption-column", "name",
            teachers=models["open_clip_teacher"], captioner=False)
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.slow
def test_a_rank_killed_outright_ends_the_other_with_a_clear_error(tmp_path, models, faulty_source):
    # os._exit: no exception, no status sent; the survivor must not wait for it.
    killed = DRIVER.replace('raise KeyError("injected worker failure: unit 1 row 2")', "os._exit(3)")
    argv = cli_args(tmp_path / "out", models, *STREAMING, source=str(faulty_source / "*.parquet"),
                    teachers=models["open_clip_teacher"])
    (code0, stderr0), (code1, _) = launch_two_ranks(killed, argv, tmp_path)
    assert code1 == 3
    assert code0 != 0 and "another process ended without reporting its status" in stderr0, stderr0[-3000:]
