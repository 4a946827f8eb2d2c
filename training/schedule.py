"""The learning rate as a pure function of the optimizer step, so that a resumed run needs no scheduler state.

Every schedule warms up linearly from 0 over `warmup_steps` (open_clip's convention, lr * (step + 1) / warmup), then
follows `lr_scheduler`, as open_clip's `--lr-scheduler` does (open_clip_train/scheduler.py):

- `cosine`: half a cosine from `learning_rate` to `min_learning_rate` at `max_steps` (open_clip's floor is 0);
- `const`: `learning_rate` to the end;
- `const-cooldown`: `learning_rate` until the last `lr_cooldown_steps`, which decay to `lr_cooldown_end` as
  (1 - progress) ** `lr_cooldown_power`; a run whose length is decided late continues at the constant rate from its
  last checkpoint before the cooldown, with a larger `max_steps`.
"""

from __future__ import annotations

import math

from training.config import TrainingConfig


def learning_rate_at(step: int, config: TrainingConfig) -> float:
    """The learning rate of optimizer step `step` (0-based)."""
    peak = config.learning_rate
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if config.lr_scheduler == "const":
        return peak
    if config.lr_scheduler == "const-cooldown":
        cooldown_start = config.max_steps - config.lr_cooldown_steps
        if step < cooldown_start:
            return peak
        decay = (1.0 - (step - cooldown_start) / config.lr_cooldown_steps) ** config.lr_cooldown_power
        return config.lr_cooldown_end + (peak - config.lr_cooldown_end) * decay
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return config.min_learning_rate + (peak - config.min_learning_rate) * cosine


__all__ = ["learning_rate_at"]
