"""Locked towers (open_clip's --lock-image / --lock-text): being written in this session."""

from __future__ import annotations

from torch import nn

from training.config import TrainingConfig


def lock_towers(model: nn.Module, config: TrainingConfig) -> list[str]:
    if config.lock_image or config.lock_text:
        raise NotImplementedError("lock_image / lock_text")
    return []
