"""MobileCLIP text-tower blocks: the layers of the Base/Large pre-norm transformer and of MobileCLIP-S0's MCt (a
convolutional RepMixer block before and after the attention layers), with SDPA attention, plus the structural
reparameterization helpers their `reparameterize()` methods (and the FastViT folds in `vision_mobileclip.py`) use.
`MobileCLIPTextModel` (in `modeling_mobileclip.py`) stacks them.

Part of the remote-code folder: relative imports only (transformers copies this file next to saved weights because
`modeling_mobileclip.py` imports it).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_mobileclip import MobileCLIPTextConfig


# ---------------------------------------------------------------------------------------------------------------------
# Structural reparameterization helpers
# ---------------------------------------------------------------------------------------------------------------------


def fold_batchnorm(kernel: torch.Tensor | None, bn: nn.BatchNorm1d, groups: int = 1,
                   bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Folds an eval-mode BatchNorm into the preceding conv `kernel` (with its `bias`, if any): the project's one
    conv+BatchNorm fold, also used by the export for the BatchNorms `reparameterize()` leaves.

    `kernel=None` stands for the identity (a BatchNorm-only branch), built as a depthwise-or-grouped identity kernel
    of `bn.num_features` channels and spatial length 1 (callers pad it to their kernel size).
    """
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    if kernel is None:
        channels = bn.num_features
        in_per_group = channels // groups
        kernel = torch.zeros(channels, in_per_group, 1, dtype=bn.weight.dtype, device=bn.weight.device)
        kernel[torch.arange(channels), torch.arange(channels) % in_per_group, 0] = 1.0
    folded = kernel * scale.reshape(-1, *([1] * (kernel.dim() - 1)))
    shift = bn.bias - bn.running_mean * scale
    return folded, shift if bias is None else shift + bias * scale


def _pad_to_length(kernel: torch.Tensor, length: int) -> torch.Tensor:
    pad = (length - kernel.shape[-1]) // 2
    return F.pad(kernel, (pad, pad))


def reparameterize_children(module: nn.Module) -> None:
    """Fuses every block under `module`: the walk of timm's `reparameterize_model`, without a list of block types.

    A child with a `reparameterize()` method is fused by it (a block fuses its own children first), any other child is
    searched further down. A child whose `reparam_conv` is already set is skipped: that is timm's mark of a fused
    block, and timm's `ReparamLargeKernelConv` and `RepConditionalPosEnc` cannot fuse twice (they delete the branches
    they read), so the walk, and every `reparameterize()` built on it, stays idempotent.
    """
    for child in module.children():
        if getattr(child, "reparam_conv", None) is not None:
            continue
        if callable(getattr(child, "reparameterize", None)):
            child.reparameterize()
        else:
            reparameterize_children(child)


# ---------------------------------------------------------------------------------------------------------------------
# Text tower: attention layers (Base / Large / MCt middle)
# ---------------------------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention in plain PyTorch; honours `module.is_causal` like the SDPA path does."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    if module.is_causal:
        q_len, k_len = scores.shape[-2:]
        future = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    # Softmax in float32: Apple's MHA does the same, and it keeps bf16 runs stable.
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class MobileCLIPAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection (one GEMM instead of three)."""

    def __init__(self, config: MobileCLIPTextConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.is_causal = config.causal
        self.qkv_proj = nn.Linear(self.embed_dim, 3 * self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scale,
            dropout=self.dropout if self.training else 0.0,
            is_causal=self.is_causal,
            **kwargs,
        )
        return self.out_proj(output.reshape(batch, length, self.embed_dim)), weights


class MobileCLIPMLP(nn.Module):
    """Transformer feed-forward: Linear, exact GELU, Linear."""

    def __init__(self, config: MobileCLIPTextConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class MobileCLIPEncoderLayer(GradientCheckpointingLayer):
    """Pre-norm transformer layer (Apple `TransformerEncoder`, open_clip `ResidualAttentionBlock`)."""

    def __init__(self, config: MobileCLIPTextConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = MobileCLIPAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MobileCLIPMLP(config)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        attn_output, _ = self.self_attn(self.layer_norm1(hidden_states), attention_mask, **kwargs)
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


# ---------------------------------------------------------------------------------------------------------------------
# Text tower: MCt RepMixer blocks (MobileCLIP-S0)
# ---------------------------------------------------------------------------------------------------------------------


class MobileCLIPTextRepMixer(nn.Module):
    """Token mixer `x + ls * (mixer(x) - norm(x))` over the sequence with a depthwise (1, k) convolution.

    Train-time branches (Apple `RepMixer` with a 1-D kernel, which has no 1x1 scale branch): `mixer` = depthwise
    conv + BatchNorm plus a BatchNorm identity branch; `norm` = a BatchNorm identity branch. All of it is linear in
    eval mode, so `reparameterize()` folds it into one depthwise convolution with bias.

    Args:
        dim: Channels (the text width).
        kernel_size: Odd length of the depthwise kernel (11 in MCt).
        layer_scale_init_value: Initial value of the per-channel scale `ls`.
        inference_mode: Build the fused convolution directly (for loading reparameterized checkpoints).
    """

    def __init__(self, dim: int, kernel_size: int, layer_scale_init_value: float = 1e-5, inference_mode: bool = False):
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.inference_mode = inference_mode
        padding = kernel_size // 2
        if inference_mode:
            self.reparam_conv = nn.Conv1d(dim, dim, kernel_size, padding=padding, groups=dim, bias=True)
        else:
            self.reparam_conv = None
            self.norm_skip = nn.BatchNorm1d(dim)
            self.mixer_conv = nn.Conv1d(dim, dim, kernel_size, padding=padding, groups=dim, bias=False)
            self.mixer_conv_bn = nn.BatchNorm1d(dim)
            self.mixer_skip = nn.BatchNorm1d(dim)
            self.layer_scale = nn.Parameter(torch.full((dim, 1), layer_scale_init_value))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(hidden_states)
        mixed = self.mixer_conv_bn(self.mixer_conv(hidden_states)) + self.mixer_skip(hidden_states)
        return hidden_states + self.layer_scale * (mixed - self.norm_skip(hidden_states))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fuses every branch into `reparam_conv`; idempotent."""
        if self.inference_mode:
            return
        conv_kernel, conv_bias = fold_batchnorm(self.mixer_conv.weight, self.mixer_conv_bn)
        skip_kernel, skip_bias = fold_batchnorm(None, self.mixer_skip, groups=self.dim)
        norm_kernel, norm_bias = fold_batchnorm(None, self.norm_skip, groups=self.dim)
        identity = _pad_to_length(torch.ones_like(skip_kernel), self.kernel_size)
        scale = self.layer_scale.reshape(-1, 1, 1)
        branches = conv_kernel + _pad_to_length(skip_kernel - norm_kernel, self.kernel_size)
        kernel = identity + scale * branches
        bias = self.layer_scale.reshape(-1) * (conv_bias + skip_bias - norm_bias)
        fused = nn.Conv1d(self.dim, self.dim, self.kernel_size, padding=self.kernel_size // 2, groups=self.dim)
        fused = fused.to(device=kernel.device, dtype=kernel.dtype)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        for name in ("norm_skip", "mixer_conv", "mixer_conv_bn", "mixer_skip", "layer_scale"):
            delattr(self, name)
        self.reparam_conv = fused
        self.inference_mode = True


class MobileCLIPTextConvFFN(nn.Module):
    """Convolutional feed-forward of the text RepMixer block: depthwise (1, k) conv + BN, 1x1, GELU, 1x1.

    Takes (batch, width, length) and returns (batch, length, width), the layout the residual add needs.
    `reparameterize()` folds the BatchNorm into the depthwise conv (exact in eval mode; Apple leaves it unfolded).

    Args:
        dim: Channels (the text width).
        hidden_dim: Width of the pointwise expansion.
        kernel_size: Odd length of the depthwise kernel.
        inference_mode: Build the depthwise conv with the BatchNorm folded in (for reparameterized checkpoints).
    """

    def __init__(self, dim: int, hidden_dim: int, kernel_size: int, inference_mode: bool = False):
        super().__init__()
        self.inference_mode = inference_mode
        self.dw_conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=inference_mode)
        self.dw_bn = None if inference_mode else nn.BatchNorm1d(dim)
        # The 1x1 convolutions run as Linear layers over (batch, length, width): the same math, faster GEMMs.
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dw_conv(hidden_states)
        if self.dw_bn is not None:
            hidden_states = self.dw_bn(hidden_states)
        return self.fc2(self.act(self.fc1(hidden_states.transpose(1, 2))))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Folds `dw_bn` into `dw_conv`; idempotent."""
        if self.inference_mode:
            return
        kernel, bias = fold_batchnorm(self.dw_conv.weight, self.dw_bn)
        fused = nn.Conv1d(
            self.dw_conv.in_channels,
            self.dw_conv.out_channels,
            self.dw_conv.kernel_size,
            padding=self.dw_conv.padding,
            groups=self.dw_conv.groups,
        ).to(device=kernel.device, dtype=kernel.dtype)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        self.dw_conv = fused
        self.dw_bn = None
        self.inference_mode = True


class MobileCLIPTextRepMixerBlock(GradientCheckpointingLayer):
    """MCt convolutional block: `x = RepMixer(x); x = x + ls * ConvFFN(x)` over (batch, width, length).

    Matches Apple's `RepMixerBlock` used as the first and last block of MobileCLIP-S0's text encoder; it ignores
    attention masks and zero-pads its convolutions over all context positions.
    """

    def __init__(self, config: MobileCLIPTextConfig):
        super().__init__()
        dim, kernel = config.hidden_size, config.repmixer_kernel_size
        self.token_mixer = MobileCLIPTextRepMixer(
            dim, kernel, config.layer_scale_init_value, inference_mode=config.reparameterized
        )
        hidden = int(dim * config.repmixer_mlp_ratio)
        self.conv_ffn = MobileCLIPTextConvFFN(dim, hidden, kernel, inference_mode=config.reparameterized)
        self.layer_scale = nn.Parameter(torch.full((dim,), config.layer_scale_init_value))

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        mixed = self.token_mixer(hidden_states.transpose(1, 2))
        return mixed.transpose(1, 2) + self.layer_scale * self.conv_ffn(mixed)

    def reparameterize(self) -> None:
        """Fuses the token mixer and the ConvFFN; idempotent. `layer_scale` stays (it scales the ConvFFN's output,
        which is not linear in its input)."""
        reparameterize_children(self)


__all__ = [
    "MobileCLIPAttention",
    "MobileCLIPEncoderLayer",
    "MobileCLIPMLP",
    "MobileCLIPTextConvFFN",
    "MobileCLIPTextRepMixer",
    "MobileCLIPTextRepMixerBlock",
    "eager_attention_forward",
    "fold_batchnorm",
    "reparameterize_children",
]
