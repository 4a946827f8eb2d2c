"""Exact-resume checkpoints: `output_dir/checkpoints/step_N`, written atomically, without pickle.

A checkpoint holds the model weights (`model.safetensors`), the EMA of the weights when `ema_decay` is set
(`ema.safetensors`, see `training.ema`), the optimizer state (tensors in `optimizer.safetensors`,
hyper-parameters in `optimizer.json`), every process's RNG states (`rng_state_<rank>.json`: Python `random`, NumPy,
torch CPU and CUDA), the fp16 gradient scaler if there is one (`scaler.json`), the step counter
(`trainer_state.json`, which fixes the data position: see `training.data`) and the resolved config. It is written
into `step_N.tmp` and renamed once every process has finished, so a crash mid-write never leaves a folder that
`--resume_from_checkpoint latest` would pick.

Why not `accelerator.save_state`: it pickles the RNG states and registered objects, and `load_state` unpickles
registered objects with `weights_only=False`, so a crafted checkpoint folder could run arbitrary code on resume.
Here every file is safetensors, JSON or YAML (read with `yaml.safe_load`), and resume refuses a folder that holds a
pickle file (older checkpoints, or planted ones) before reading anything.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from safetensors.torch import load_file, load_model, save_file, save_model

from modeling_mobileclip.atomic import publish_folder, staging_folder, temporary_path

from .config import ConfigError, TrainingConfig


CHECKPOINTS_DIR = "checkpoints"
CONFIG_FILE = "training_config.yaml"
TRAINER_STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS_FILE = "optimizer.safetensors"
OPTIMIZER_FILE = "optimizer.json"
SCALER_FILE = "scaler.json"
EMA_FILE = "ema.safetensors"
RNG_FILE = "rng_state_{}.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
# Changing these between the interrupted and the resumed run would silently change the data order or the model
# (ema_decay: the EMA weights, which are saved as the model with save_ema_weights).
RESUME_INVARIANT_KEYS = ("variant", "init_from", "config_overrides", "train_data", "train_data_config", "train_split",
                         "max_train_samples", "mode", "seed", "global_batch_size_resolved", "ema_decay",
                         "streaming_resolved", "stream_slots_resolved", "shuffle_block_size", "train_images")
# Formats that torch.save / pickle write. Checked by name and (for files that are not safetensors) by content, so
# a renamed pickle is caught too: pickle protocol >= 2 starts with 0x80 <protocol>, torch.save writes a zip archive.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt", ".npy", ".npz")
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


@dataclass
class TrainingState:
    """The step counter, saved in `trainer_state.json`."""

    step: int = 0


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
    refuse_pickle_files(checkpoint)
    saved = yaml.safe_load((checkpoint / CONFIG_FILE).read_text())
    changed = [f"{key}: checkpoint {saved.get(key)!r}, now {resolved.get(key)!r}"
               for key in RESUME_INVARIANT_KEYS if saved.get(key) != resolved.get(key)]
    if changed:
        raise ConfigError(f"Cannot resume exactly from {checkpoint}: " + "; ".join(changed) +
                          ". Restore these settings or start a new output_dir.")


def refuse_pickle_files(checkpoint: Path) -> None:
    """Raises before anything is read if the checkpoint folder holds a pickle (by suffix or by content)."""
    for path in sorted(p for p in Path(checkpoint).rglob("*") if p.is_file()):
        reason = None
        if path.suffix.lower() in PICKLE_SUFFIXES:
            reason = f"its suffix {path.suffix!r} is a pickle / torch.save format"
        elif path.suffix != ".safetensors":  # a safetensors header length may start with 0x80: not a pickle
            with open(path, "rb") as handle:
                if handle.read(4).startswith(_PICKLE_MAGIC):
                    reason = "its content is a pickle / torch.save archive"
        if reason:
            raise ConfigError(
                f"Refusing to resume from {checkpoint}: {path} is a pickle file ({reason}). Loading a pickle runs "
                "whatever code it names, so a crafted checkpoint could execute code. Checkpoints written by this "
                "version hold only safetensors, JSON and YAML files; this one was written by an older version "
                "(accelerate save_state) or was modified. Delete this checkpoint folder (`latest` then resumes "
                "from the previous one) or start a new output_dir; to keep trained weights, point `init_from` "
                "at a saved model folder.")


# --- saving ---------------------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _optimizer_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Splits `optimizer.state_dict()` into safetensors tensors (`state.<param>.<name>`) and a JSON part."""
    state_dict = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state_scalars": scalars}


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, resolved: dict,
                    total_limit: int | None, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    ema: torch.nn.Module | None = None, process_files: dict[str, str] | None = None) -> Path:
    """Writes `checkpoints/step_<step>` atomically on all processes; prunes to `total_limit` complete ones.

    `ema`: the EMA copy of the model (`training.ema`), written as `ema.safetensors` when given.
    `process_files`: text files this process adds (name -> JSON text), e.g. its stream positions
    (`training.inputs.stream_state_files`).
    """
    final = checkpoints_root(output_dir) / f"step_{step}"
    staging = temporary_path(final)  # `step_N.tmp`: not a complete checkpoint to `list_checkpoints`
    if accelerator.is_main_process:
        staging_folder(final)
    accelerator.wait_for_everyone()
    # Every process has its own RNG streams; model and optimizer are identical across DDP processes.
    (staging / RNG_FILE.format(accelerator.process_index)).write_text(json.dumps(_rng_state()))
    for name, text in (process_files or {}).items():
        (staging / name).write_text(text)
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), str(staging / MODEL_FILE))
        if ema is not None:
            save_model(ema, str(staging / EMA_FILE))
        tensors, rest = _optimizer_files(optimizer)
        save_file(tensors, str(staging / OPTIMIZER_TENSORS_FILE))
        (staging / OPTIMIZER_FILE).write_text(json.dumps(rest))
        if accelerator.scaler is not None:
            (staging / SCALER_FILE).write_text(json.dumps(accelerator.scaler.state_dict()))
        (staging / CONFIG_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))
        (staging / TRAINER_STATE_FILE).write_text(json.dumps({"step": step}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish_folder(staging, final)
        if total_limit:
            for _, old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# --- loading --------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"Cannot resume: {path} is missing or not valid JSON ({error}). The checkpoint is "
                          "incomplete or damaged: delete its folder to resume from the previous one.") from error


def _set_rng_state(state: dict[str, Any], path: Path) -> None:
    try:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
        if torch.cuda.is_available() and "torch_cuda" in state:
            for device, values in enumerate(state["torch_cuda"][:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(torch.tensor(values, dtype=torch.uint8), device)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(f"Cannot resume: {path} does not hold valid RNG states ({error!r}). The checkpoint is "
                          "damaged: delete its folder to resume from the previous one.") from error


def _load_optimizer(optimizer: torch.optim.Optimizer, checkpoint: Path) -> None:
    rest = _read_json(checkpoint / OPTIMIZER_FILE)
    tensors = load_file(str(checkpoint / OPTIMIZER_TENSORS_FILE))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in rest["state_scalars"].items():
        state.setdefault(int(index), {}).update(values)
    if len(rest["param_groups"]) != len(optimizer.param_groups):
        raise ConfigError(f"Cannot resume: {checkpoint / OPTIMIZER_FILE} has {len(rest['param_groups'])} parameter "
                          f"groups, the optimizer {len(optimizer.param_groups)}; the checkpoint is from another model.")
    # JSON turns tuples (AdamW betas) into lists; give back the types the live optimizer uses.
    groups = [{k: tuple(v) if isinstance(live.get(k), tuple) else v for k, v in saved.items()}
              for saved, live in zip(rest["param_groups"], optimizer.state_dict()["param_groups"])]
    # torch's load_state_dict moves each tensor to its parameter's device and dtype (the step counters stay on CPU).
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _load_weights(module: torch.nn.Module, path: Path, device: torch.device) -> None:
    missing, unexpected = load_model(module, str(path), strict=False, device=str(device))
    if missing or unexpected:
        raise ConfigError(f"Cannot resume: {path} does not match the model "
                          f"(missing {missing}, unexpected {unexpected}).")


def load_checkpoint(accelerator: Accelerator, checkpoint: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, ema: torch.nn.Module | None = None) -> int:
    """Restores model, optimizer, this process's RNG states and the scaler (and `ema`, the EMA copy of the model,
    when given); returns the saved step."""
    checkpoint = Path(checkpoint)
    refuse_pickle_files(checkpoint)
    step = int(_read_json(checkpoint / TRAINER_STATE_FILE)["step"])
    if ema is not None and not (checkpoint / EMA_FILE).is_file():
        # Restarting the average from the current weights would silently give other EMA weights than the
        # uninterrupted run, so refuse instead.
        raise ConfigError(f"Cannot resume with ema_decay set: {checkpoint} has no {EMA_FILE}, so the EMA of the "
                          "weights cannot be restored. The checkpoint was written without ema_decay or is "
                          "incomplete: delete its folder to resume from the previous one, or start a new "
                          "output_dir.")
    _load_weights(accelerator.unwrap_model(model), checkpoint / MODEL_FILE, accelerator.device)
    if ema is not None:
        _load_weights(ema, checkpoint / EMA_FILE, accelerator.device)
    _load_optimizer(optimizer, checkpoint)
    if accelerator.scaler is not None and (checkpoint / SCALER_FILE).is_file():
        accelerator.scaler.load_state_dict(_read_json(checkpoint / SCALER_FILE))
    rng_path = checkpoint / RNG_FILE.format(accelerator.process_index)
    if rng_path.is_file():
        _set_rng_state(_read_json(rng_path), rng_path)
    else:  # written by fewer processes: data order still follows the step, only random ops differ from before
        print(f"[process {accelerator.process_index}] {rng_path.name} not in {checkpoint} (written by fewer "
              "processes): this process keeps its fresh RNG state, so resume is not bit-exact.")
    return step


def load_checkpoint_weights(model: torch.nn.Module, checkpoint: Path, ema: bool = False) -> None:
    """Loads a checkpoint's model weights (with `ema`, the EMA of the weights) into a plain model, strictly: to score
    a checkpoint without resuming from it."""
    if not ema:
        model.load_state_dict(load_file(str(Path(checkpoint) / MODEL_FILE)))
        return
    # `save_checkpoint` writes timm's ModelEmaV3 wrapper, which holds the model as `.module`.
    weights = load_file(str(Path(checkpoint) / EMA_FILE))
    model.load_state_dict({key.removeprefix("module."): value for key, value in weights.items()})


__all__ = [
    "TrainingState",
    "check_resume_compatible",
    "list_checkpoints",
    "load_checkpoint",
    "load_checkpoint_weights",
    "refuse_pickle_files",
    "resolve_resume_path",
    "save_checkpoint",
]
