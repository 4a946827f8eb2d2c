"""The exponential moving average (EMA) of the weights that MobileCLIP evaluates and releases (decay 0.9995).

After every optimizer step, ema = decay * ema + (1 - decay) * weights, for every parameter and floating buffer
(BatchNorm running statistics); integer buffers (`num_batches_tracked`) are copied. The EMA starts from the weights
it is created from. The averaging itself is timm's `ModelEmaV3`; this module only fixes how the training script
uses it. `ema.module` is a full `MobileCLIPModel` in eval mode: it can be evaluated, saved with `save_pretrained`
and loaded with `from_pretrained` like the trained model. Checkpoints store it as `ema.safetensors`
(`training.checkpointing`).
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn


def _plain_module(model: nn.Module) -> nn.Module:
    # With torch_compile, accelerate's unwrapped model is the compiled wrapper; average (and deep-copy) the module
    # it compiles, whose state_dict has the plain parameter names.
    return getattr(model, "_orig_mod", model)


def create_ema(model: nn.Module, decay: float) -> ModelEmaV3:
    """A float32 copy of `model` (the unwrapped model, after `accelerator.prepare`) that `update_ema` averages.

    float32 whatever the training precision: (1 - 0.9995) * (w - ema) is below the resolution of bf16 weights
    and would round away.
    """
    ema = ModelEmaV3(_plain_module(model), decay=decay, dtype=torch.float32)
    ema.requires_grad_(False)  # never trained: keeps it out of autograd and of any optimizer
    return ema


@torch.no_grad()
def update_ema(ema: ModelEmaV3, model: nn.Module) -> None:
    """One EMA step with the constant decay (no warmup), after the optimizer step and the logit-scale clamp."""
    ema.update(_plain_module(model))


__all__ = ["create_ema", "update_ema"]
