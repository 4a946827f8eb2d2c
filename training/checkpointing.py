"""Exact-resume checkpoints: `output_dir/checkpoints/step_N`, written atomically with `accelerator.save_state`.

A checkpoint holds what `save_state` writes (model, optimizer, every process's RNG states), the
:class:`TrainingState` (the step counter, which fixes the data position: see `training.data`) and the resolved
config. It is written into `step_N.tmp` and renamed once every process has finished, so a crash mid-write never
leaves a folder that `--resume_from_checkpoint latest` would pick.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml
from accelerate import Accelerator

from .config import ConfigError, TrainingConfig


CHECKPOINTS_DIR = "checkpoints"
CONFIG_FILE = "training_config.yaml"
_STEP_DIR = re.compile(r"^step_(\d+)$")
# Changing these between the interrupted and the resumed run would silently change the data order or the model.
RESUME_INVARIANT_KEYS = ("variant", "init_from", "train_data", "train_data_config", "train_split",
                         "max_train_samples", "mode", "seed", "global_batch_size_resolved")


@dataclass
class TrainingState:
    """The step counter, saved and restored with `accelerator.register_for_checkpointing`."""

    step: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def resolve_resume_path(config: TrainingConfig) -> Path | None:
    """`latest` -> the newest complete checkpoint (None if there is none yet); a path must exist."""
    value = config.resume_from_checkpoint
    if not value:
        return None
    if value == "latest":
        found = list_checkpoints(config.output_dir)
        return found[-1][1] if found else None
    path = Path(value)
    if not (path / CONFIG_FILE).is_file():
        raise ConfigError(f"resume_from_checkpoint {value!r} is not a checkpoint folder (no {CONFIG_FILE}); use "
                          f"'latest' or one of {[str(p) for _, p in list_checkpoints(config.output_dir)]}.")
    return path


def check_resume_compatible(checkpoint: Path, resolved: dict) -> None:
    """Raises if a key that fixes the data order or the model changed since the checkpoint was written."""
    saved = yaml.safe_load((checkpoint / CONFIG_FILE).read_text())
    changed = [f"{key}: checkpoint {saved.get(key)!r}, now {resolved.get(key)!r}"
               for key in RESUME_INVARIANT_KEYS if saved.get(key) != resolved.get(key)]
    if changed:
        raise ConfigError(f"Cannot resume exactly from {checkpoint}: " + "; ".join(changed) +
                          ". Restore these settings or start a new output_dir.")


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, resolved: dict,
                    total_limit: int | None) -> Path:
    """Writes `checkpoints/step_<step>` atomically on all processes; prunes to `total_limit` complete ones."""
    root = checkpoints_root(output_dir)
    final, staging = root / f"step_{step}", root / f"step_{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / CONFIG_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))
        (staging / "trainer_state.json").write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        if total_limit:
            for _, old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


__all__ = [
    "TrainingState",
    "check_resume_compatible",
    "list_checkpoints",
    "resolve_resume_path",
    "save_checkpoint",
]
