"""The per-channel normalisation of CLIP image inputs, `(pixels - mean) / std`, in one place.

`mean` and `std` come from the model's own preprocessing (its image processor or config: `image_mean`,
`image_std`), so every path that turns uint8 views into model input (the teachers here, training's
`step.normalize_views`) normalises as the model's processor does.
"""

from __future__ import annotations

from typing import Sequence

import torch


def normalize_pixels(pixels: torch.Tensor, mean: Sequence[float] | torch.Tensor,
                     std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float pixels in [0, 1] -> `(pixels - mean) / std` per channel (a new tensor)."""
    mean = torch.as_tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    return (pixels - mean) / std


__all__ = ["normalize_pixels"]
