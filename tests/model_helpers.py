"""Helpers shared by model tests: make random weights that exercise every branch, compare outputs."""

import sys

import torch
from torch import nn

from evaluation.model_zoo import randomize_statistics_


def perturb_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Randomises BatchNorm statistics/affine and layer scales so every residual branch and eps matters."""
    return randomize_statistics_(model, seed)


def max_relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Max absolute difference relative to the reference's max magnitude."""
    return ((ours.float() - reference.float()).abs().max() / reference.float().abs().max()).item()


def golden_state_dict(golden_dir, variant: str) -> dict:
    """Apple's train-time state dict for `variant` with the deterministic golden weights."""
    sys.path.insert(0, str(golden_dir))
    try:
        from make_weights import load_manifest, make_state_dict
    finally:
        sys.path.pop(0)
    return make_state_dict(load_manifest(golden_dir / f"apple_mobileclip_{variant}.manifest.json"), seed=0)
