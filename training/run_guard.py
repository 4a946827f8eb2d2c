"""The start-up guard of `output_dir`: a run writes only into a folder that is empty or holds this same run.

Training writes `model/`, `train_history.jsonl` and `checkpoints/step_N` into `output_dir`, and resumes from the
newest checkpoint there. Another run's files in that folder would be overwritten (model), truncated (history),
would make this run's checkpoints look older than theirs (pruning) and would be resumed by a later
`resume_from_checkpoint: latest`. So at start-up :func:`guard_output_dir` reads what the folder records about the
run(s) that wrote it (`run_fingerprint.json`, written here, and each checkpoint's `training_config.yaml`) and
refuses a run that differs in a resume-invariant key, or that would restart from step 0 over existing
checkpoints, unless `overwrite_output_dir` is true (then it names what it removes and removes it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import yaml

from dataset_scripts.ownership import code_version
from modeling_mobileclip.atomic import write_json_atomic
from modeling_mobileclip.output_guard import guard_output_folder

from .checkpointing import CONFIG_FILE, RESUME_INVARIANT_KEYS, list_checkpoints
from .config import ConfigError


RUN_FINGERPRINT_FILE = "run_fingerprint.json"
# What a run writes into output_dir (besides the tracker folder `project_name`), i.e. what overwrite removes.
RUN_OUTPUTS = ("model", "model_raw", "model_ema", "train_history.jsonl", "checkpoints", RUN_FINGERPRINT_FILE)


def run_fingerprint(resolved: dict[str, Any]) -> dict[str, Any]:

    # The code version is recorded for the reader, not compared: a fixed release may resume a run.
    return {**{key: resolved.get(key) for key in RESUME_INVARIANT_KEYS}, "code_version": code_version()}


def _differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return [f"{key}: existing {recorded.get(key)!r}, now {current.get(key)!r}"
            for key in RESUME_INVARIANT_KEYS if recorded.get(key) != current.get(key)]


def output_conflicts(output_dir: Path, resolved: dict[str, Any], resuming: bool) -> list[str]:
    """Why `output_dir` does not hold this run (empty: it is free, or it is this run). Reads only."""
    current = run_fingerprint(resolved)
    records = []
    path = output_dir / RUN_FINGERPRINT_FILE
    if path.is_file():
        records.append((str(path), json.loads(path.read_text())))
    checkpoints = list_checkpoints(output_dir)
    for _, checkpoint in checkpoints:
        if (checkpoint / CONFIG_FILE).is_file():
            records.append((str(checkpoint / CONFIG_FILE), yaml.safe_load((checkpoint / CONFIG_FILE).read_text())))
    for where, recorded in records:
        differences = _differences(recorded, current)
        if differences:
            return [f"it holds another run ({where}: " + "; ".join(differences) + ")"]
    present = [name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    if present and not records:
        return [f"it holds {present} of a run that recorded no configuration (no {RUN_FINGERPRINT_FILE}, no "
                "checkpoint), so it cannot be told apart from another run"]
    if checkpoints and not resuming:
        return [f"it holds checkpoints up to step {checkpoints[-1][0]} of this run, and resume_from_checkpoint is "
                "not set: training would restart from step 0 over them (its checkpoints would be pruned as older, "
                "a later `latest` would resume the old ones). Set resume_from_checkpoint: latest to continue it"]
    return []


def guard_output_dir(output_dir: Path, resolved: dict[str, Any], resuming: bool, overwrite: bool, is_main: bool,
                     barrier: Callable[[], None] = lambda: None, log: Callable[[str], None] = print) -> None:
    """Refuse (or, with `overwrite`, clear) an `output_dir` holding another run; record this run's fingerprint, through
    the project's one output-folder guard (every process checks, the main process clears and records after all meet
    at `barrier`)."""
    tracker = resolved.get("project_name")
    removable = [output_dir / name for name in (*RUN_OUTPUTS, *([tracker] if tracker else []))
                 if (output_dir / name).exists()]
    guard_output_folder(
        output_dir, output_conflicts(output_dir, resolved, resuming), overwrite=overwrite, is_main=is_main,
        how_to_proceed="Use another output_dir, restore the settings of the run it holds, or set "
                       "overwrite_output_dir: true (--overwrite_output_dir) to remove it first.",
        remove=removable, record=lambda: write_json_atomic(output_dir / RUN_FINGERPRINT_FILE, run_fingerprint(resolved)),
        barrier=barrier, log=log, flag="overwrite_output_dir",
        error=lambda message: ConfigError(f"output_dir {message}"))


__all__ = ["RUN_FINGERPRINT_FILE", "guard_output_dir", "output_conflicts", "run_fingerprint"]
