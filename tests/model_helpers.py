"""Helpers shared by model tests: make random weights that exercise every branch, compare outputs."""

import sys

import torch
from torch import nn


@torch.no_grad()
def perturb_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Randomises BatchNorm statistics/affine and layer scales so every residual branch and eps matters."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    for name, param in model.named_parameters():
        if "layer_scale" in name or name.endswith("gamma"):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model


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
