"""Reading a source checkpoint: the state dict, its failure messages, and the config each source's weights fit."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..configuration_mobileclip import MobileCLIPConfig


SOURCES = ("apple", "open_clip", "timm")


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the architecture: names the missing and unexpected keys."""


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a state dict from `.safetensors` or a torch file (`weights_only=True`, never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            state_dict = load_file(str(path))
        except SafetensorError as error:  # its message names no file
            raise OSError(f"{path} is truncated or corrupt ({error}): download it again.") from error
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except (EOFError, RuntimeError, pickle.UnpicklingError) as error:  # a cut zip archive / pickle stream / text
            raise OSError(f"{path} is truncated or corrupt, or not a torch checkpoint ({error}).") from error
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state_dict, dict) and wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state_dict).__name__}).")
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def default_config(variant: str, source: str) -> MobileCLIPConfig:
    """The config of `variant` as `source` built it: open_clip / timm MobileCLIP-B use timm's ViT stem."""
    overrides = {}
    if variant == "mobileclip-b" and source != "apple":
        overrides["vision_config"] = dict(apple_vit_stem=False)
    return MobileCLIPConfig.from_variant(variant, **overrides)
