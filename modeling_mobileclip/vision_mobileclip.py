"""MobileCLIP image-tower adapter: the folds that timm's fused FastViT (`fastvit_mci0..4`) still leaves, exactly.

timm's FastViT blocks fuse themselves (`reparameterize()`); this is the one place that goes further and edits timm's
modules, called only by `MobileCLIPVisionModel` (after timm's blocks fused, and with `fold_values=False` to build the
fused layout of a saved reparameterized tower). Part of the remote-code folder: relative imports only.
"""

import torch
from timm.models.fastvit import AttentionBlock, ConvMlp, LayerScale2d, RepMixerBlock
from torch import nn

from .text_mobileclip import fold_batchnorm


def _scaled_linear(layer: nn.Module, scale: torch.Tensor, fold_values: bool) -> None:
    """Multiplies the output channels of a Linear/Conv (and its bias) by `scale`, in place."""
    if fold_values:
        layer.weight.mul_(scale.reshape(-1, *([1] * (layer.weight.dim() - 1))))
        if layer.bias is not None:
            layer.bias.mul_(scale)


@torch.no_grad()
def fold_fastvit_affines_(backbone: nn.Module, fold_values: bool = True) -> nn.Module:
    """Folds the per-channel affine ops that timm's fused FastViT still runs, exactly (eval-mode math); idempotent:

    - the BatchNorm after each ConvMlp's depthwise 7x7 conv (into that conv, which gains a bias);
    - every block's layer scales (into the last linear op of the branch they scale: `mlp.fc2`, attention `proj`);
    - the BatchNorm in front of each BatchNorm-normed attention block (into `qkv`, which gains a bias).

    Each removes one memory-bound pass over the activations. `fold_values=False` only rebuilds the structure (to load
    weights saved after folding).
    """
    for module in list(backbone.modules()):
        if isinstance(module, ConvMlp) and hasattr(module.conv, "bn"):
            conv = module.conv.conv
            fused = nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                groups=conv.groups, bias=True,
            ).to(device=conv.weight.device, dtype=conv.weight.dtype)
            if fold_values:
                kernel, bias = fold_batchnorm(conv.weight, module.conv.bn)
                fused.weight.copy_(kernel)
                fused.bias.copy_(bias)
            module.conv = fused
        if isinstance(module, RepMixerBlock) and isinstance(module.layer_scale, LayerScale2d):
            _scaled_linear(module.mlp.fc2, module.layer_scale.gamma.reshape(-1), fold_values)
            module.layer_scale = nn.Identity()
        if isinstance(module, AttentionBlock):
            if isinstance(module.layer_scale_2, LayerScale2d):
                _scaled_linear(module.mlp.fc2, module.layer_scale_2.gamma.reshape(-1), fold_values)
                module.layer_scale_2 = nn.Identity()
            if isinstance(module.layer_scale_1, LayerScale2d):
                _scaled_linear(module.token_mixer.proj, module.layer_scale_1.gamma.reshape(-1), fold_values)
                module.layer_scale_1 = nn.Identity()
            if isinstance(module.norm, nn.BatchNorm2d):
                qkv = module.token_mixer.qkv
                fused = nn.Linear(qkv.in_features, qkv.out_features, bias=True).to(qkv.weight.device, qkv.weight.dtype)
                if fold_values:
                    # qkv(a * x + b) = (W * a) x + (W b + c), with a, b the norm's per-channel scale and shift.
                    scale, shift = fold_batchnorm(torch.ones_like(module.norm.weight), module.norm)
                    fused.weight.copy_(qkv.weight * scale)
                    fused.bias.copy_(qkv.weight @ shift + (qkv.bias if qkv.bias is not None else 0))
                module.token_mixer.qkv = fused
                module.norm = nn.Identity()
    return backbone


__all__ = ["fold_fastvit_affines_"]
