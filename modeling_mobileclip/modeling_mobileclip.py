"""PyTorch MobileCLIP / MobileCLIP2 (Vasu et al., CVPR 2024, arXiv 2311.17049; arXiv 2508.20691).

Image towers are timm's implementations (`fastvit_mci0..4`, `vit_base_mci_224`, `vit_large_patch14_clip_224`) whose
classifier is the CLIP image projection. Text towers are ours: the Base/Large pre-norm transformer and MobileCLIP-S0's
MCt (a convolutional RepMixer block before and after four attention layers), with EOT pooling and SDPA attention.
Every train-time multi-branch block knows how to fuse itself (`reparameterize()`), as in timm's `fastvit.py`.
"""


import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_mobileclip import MobileCLIPConfig, MobileCLIPTextConfig, MobileCLIPVisionConfig


@dataclass
class MobileCLIPOutput(ModelOutput):
    """Output of [`MobileCLIPModel`].

    Args:
        loss: Symmetric contrastive (InfoNCE) loss, returned when `return_loss=True`.
        logits_per_image: `(image_batch, text_batch)` scaled cosine similarities.
        logits_per_text: `(text_batch, image_batch)`, the transpose.
        text_embeds: L2-normalised projected text embeddings.
        image_embeds: L2-normalised projected image embeddings.
        text_model_output / vision_model_output: The towers' outputs (pooler_output = unnormalised embedding).
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any]:
        return tuple(
            self[k] if k not in ("text_model_output", "vision_model_output") else getattr(self, k).to_tuple()
            for k in self.keys()
        )


def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a square similarity matrix whose diagonal holds the positives."""
    labels = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return 0.5 * (F.cross_entropy(logits_per_text, labels) + F.cross_entropy(logits_per_text.t(), labels))


# ---------------------------------------------------------------------------------------------------------------------
# Structural reparameterization helpers
# ---------------------------------------------------------------------------------------------------------------------


def fold_batchnorm(kernel: torch.Tensor | None, bn: nn.BatchNorm1d, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Folds an eval-mode BatchNorm into the preceding bias-free conv `kernel`.

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
    return folded, bn.bias - bn.running_mean * scale


def _pad_to_length(kernel: torch.Tensor, length: int) -> torch.Tensor:
    pad = (length - kernel.shape[-1]) // 2
    return F.pad(kernel, (pad, pad))


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
        if self.reparam_conv is not None:
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


class MobileCLIPTextConvFFN(nn.Module):
    """Convolutional feed-forward of the text RepMixer block: depthwise (1, k) conv + BN, 1x1, GELU, 1x1.

    Takes (batch, width, length) and returns (batch, length, width), the layout the residual add needs.
    `reparameterize()` folds the BatchNorm into the depthwise conv (exact in eval mode; Apple leaves it unfolded).
    """

    def __init__(self, dim: int, hidden_dim: int, kernel_size: int, inference_mode: bool = False):
        super().__init__()
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
        if self.dw_bn is None:
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


# ---------------------------------------------------------------------------------------------------------------------
# FastViT folds beyond timm's reparameterize()
# ---------------------------------------------------------------------------------------------------------------------


def _scaled_linear(layer: nn.Module, scale: torch.Tensor, fold_values: bool) -> None:
    """Multiplies the output channels of a Linear/Conv (and its bias) by `scale`, in place."""
    if fold_values:
        layer.weight.mul_(scale.reshape(-1, *([1] * (layer.weight.dim() - 1))))
        if layer.bias is not None:
            layer.bias.mul_(scale)


@torch.no_grad()
def fold_fastvit_affines_(backbone: nn.Module, fold_values: bool = True) -> nn.Module:
    """Folds the per-channel affine ops that timm's fused FastViT still runs, exactly (eval-mode math):

    - the BatchNorm after each ConvMlp's depthwise 7x7 conv (into that conv, which gains a bias);
    - every block's layer scales (into the last linear op of the branch they scale: `mlp.fc2`, attention `proj`);
    - the BatchNorm in front of each BatchNorm-normed attention block (into `qkv`, which gains a bias).

    Each removes one memory-bound pass over the activations. `fold_values=False` only rebuilds the structure (to load
    weights saved after folding).
    """
    from timm.models.fastvit import AttentionBlock, ConvMlp, LayerScale2d, RepMixerBlock

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


# ---------------------------------------------------------------------------------------------------------------------
# Towers
# ---------------------------------------------------------------------------------------------------------------------


class MobileCLIPTextTransformer(nn.Module):
    """Token + learned position embeddings, encoder layers, final LayerNorm, pooling at the first EOT token.

    The pooled state is taken at `argmax(input_ids)` (EOT has the largest id), as in Apple's and open_clip's code.
    """

    def __init__(self, config: MobileCLIPTextConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Parameter(torch.empty(config.max_position_embeddings, config.hidden_size))
        layers: list[nn.Module] = [MobileCLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)]
        if config.num_repmixer_blocks:
            layers = [MobileCLIPTextRepMixerBlock(config), *layers, MobileCLIPTextRepMixerBlock(config)]
        self.layers = nn.ModuleList(layers)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.LongTensor, pooled_only: bool = False, **kwargs) -> BaseModelOutputWithPooling:
        """Encodes `input_ids` (batch, length <= 77).

        With `pooled_only=True` a causal tower skips the positions after the batch's last EOT, which cannot influence
        the pooled output (about 4x less work for typical 77-token padded captions); `last_hidden_state` then covers
        only the kept positions.
        """
        if input_ids.shape[-1] > self.config.max_position_embeddings:
            raise ValueError(
                f"input_ids has {input_ids.shape[-1]} tokens, more than max_position_embeddings "
                f"({self.config.max_position_embeddings}); tokenize with truncation to {self.config.max_position_embeddings}."
            )
        eot_index = input_ids.argmax(dim=-1)
        if pooled_only and self.config.causal and not self.config.num_repmixer_blocks:
            input_ids = input_ids[:, : int(eot_index.max()) + 1]
        hidden_states = self.token_embedding(input_ids) + self.position_embedding[: input_ids.shape[-1]]
        # No padding mask on purpose: the official bidirectional towers attend to pad tokens (id 0), and the causal
        # towers never see tokens after EOT; a mask would change the embeddings of released checkpoints.
        for layer in self.layers:
            hidden_states = layer(hidden_states, None, **kwargs)
        hidden_states = self.final_layer_norm(hidden_states)
        pooled = hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), eot_index]
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=pooled)


class MobileCLIPVisionTower(nn.Module):
    """A timm image backbone whose classifier head is the CLIP image projection.

    `forward` returns the backbone's feature map / tokens, the pooled features and the projected embedding.
    Built with timm's `inference_mode=True` when the config records a reparameterized FastViT.
    """

    def __init__(self, config: MobileCLIPVisionConfig):
        super().__init__()
        self.config = config
        kwargs = dict(config.backbone_kwargs or {})
        kwargs["num_classes"] = config.projection_dim
        if config.drop_path_rate:
            kwargs["drop_path_rate"] = config.drop_path_rate
        if config.is_fastvit and config.reparameterized:
            kwargs["inference_mode"] = True
        if config.apple_vit_stem:
            kwargs["norm_layer"] = partial(nn.LayerNorm, eps=1e-5)
        if not config.is_fastvit:
            kwargs["img_size"] = config.image_size
        self.backbone = timm.create_model(config.backbone, pretrained=False, **kwargs)
        if config.apple_vit_stem:
            # Apple's ViT-B/16 stem pads its first 4x4 conv by int((4 - 1) / 2) = 1; timm uses 0.
            self.backbone.patch_embed.backbone[0].conv.padding = (1, 1)
        if config.is_fastvit and config.reparameterized:
            fold_fastvit_affines_(self.backbone, fold_values=False)
        # timm initialises its own layers; keep transformers' generic `_init_weights` off them.
        for module in self.backbone.modules():
            module._is_hf_initialized = True

    def forward(self, pixel_values: torch.Tensor) -> BaseModelOutputWithPooling:
        features = self.backbone.forward_features(pixel_values)
        pooled = self.backbone.forward_head(features, pre_logits=True)
        embeds = self.backbone.get_classifier()(pooled)
        return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=embeds, hidden_states=(pooled,))


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


class MobileCLIPPreTrainedModel(PreTrainedModel):
    """Base class: weight initialisation, gradient-checkpointing and attention-backend flags."""

    config: MobileCLIPConfig
    config_class = MobileCLIPConfig
    base_model_prefix = "mobileclip"
    input_modalities = ("image", "text")
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["MobileCLIPEncoderLayer", "MobileCLIPTextRepMixerBlock", "MobileCLIPVisionTower"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """open_clip's text-tower initialisation (which trains MobileCLIP2 from scratch); timm owns the image tower."""
        super()._init_weights(module)
        text_config = getattr(self.config, "text_config", self.config)
        width, depth = text_config.hidden_size, max(text_config.num_hidden_layers, 1)
        residual_std = width**-0.5 * (2 * depth) ** -0.5
        if isinstance(module, MobileCLIPTextTransformer):
            init.normal_(module.token_embedding.weight, std=0.02)
            init.normal_(module.position_embedding, std=0.01)
        elif isinstance(module, MobileCLIPAttention):
            init.normal_(module.qkv_proj.weight, std=width**-0.5)
            init.zeros_(module.qkv_proj.bias)
            init.normal_(module.out_proj.weight, std=residual_std)
            init.zeros_(module.out_proj.bias)
        elif isinstance(module, MobileCLIPMLP):
            init.normal_(module.fc1.weight, std=(2 * width) ** -0.5)
            init.normal_(module.fc2.weight, std=residual_std)
        elif isinstance(module, MobileCLIPTextRepMixer) and module.reparam_conv is None:
            init.constant_(module.layer_scale, text_config.layer_scale_init_value)
        elif isinstance(module, MobileCLIPTextRepMixerBlock):
            init.constant_(module.layer_scale, text_config.layer_scale_init_value)
        elif isinstance(module, MobileCLIPModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            init.normal_(module.text_projection.weight, std=width**-0.5)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`; a truncated or corrupt local weight file raises an OSError naming it."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as error:
            # safetensors names no file ("incomplete metadata, file not fully covered"): find and describe it.
            folder = Path(pretrained_model_name_or_path)
            paths = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []  # a Hub id: no local folder
            problems = [problem for problem in map(_safetensors_problem, paths) if problem]
            where = "; ".join(problems) or f"a .safetensors file of {pretrained_model_name_or_path}"
            raise OSError(
                f"Cannot load the weights: {where} ({error}). The file is truncated or corrupt (an interrupted "
                "download or copy): download or save it again."
            ) from error

    def _set_gradient_checkpointing(self, enable: bool = True, *args, **kwargs):
        super()._set_gradient_checkpointing(enable, *args, **kwargs)
        # timm blocks checkpoint themselves (non-reentrant `torch.utils.checkpoint`).
        for module in self.modules():
            if isinstance(module, MobileCLIPVisionTower):
                module.backbone.set_grad_checkpointing(enable)


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file (size vs. what its header declares), or None if it looks complete."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        header_length = int.from_bytes(prefix, "little") if len(prefix) == 8 else None
        try:
            header = json.loads(handle.read(header_length)) if header_length and header_length < size else None
        except ValueError:
            header = None
    if header is None:
        return f"{path} has no complete header ({size} bytes)"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_length + max(ends, default=0)
    return f"{path} is {size} bytes but its header declares {expected}" if size != expected else None


class MobileCLIPModel(MobileCLIPPreTrainedModel):
    """MobileCLIP / MobileCLIP2 dual encoder.

    `forward` returns CLIP-style logits and normalised embeddings (and the contrastive loss with
    `return_loss=True`); `encode_image` / `encode_text` return plain tensors, the open_clip / CLIP_benchmark
    interface. `reparameterize()` fuses all train-time branches in place and records it in the config, so a saved
    fused model reloads fused.

    Example:

    ```python
    >>> import torch
    >>> from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel
    >>> model = MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny")).eval()
    >>> image = model.encode_image(torch.rand(1, 3, 64, 64), normalize=True)
    >>> text = model.encode_text(torch.tensor([[49406, 320, 49407] + [0] * 74]), normalize=True)
    >>> (image @ text.T).shape
    torch.Size([1, 1])
    ```
    """

    def __init__(self, config: MobileCLIPConfig):
        super().__init__(config)
        # The towers are plain modules (not sub-models), so hand the resolved attention backend down explicitly;
        # the config setter propagates it to `text_config`.
        config._attn_implementation = config._attn_implementation
        self.text_model = MobileCLIPTextTransformer(config.text_config)
        self.vision_model = MobileCLIPVisionTower(config.vision_config)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        # Saved folders must load with AutoModel and the zero-shot pipeline from the copied code files.
        config.auto_map = {**(getattr(config, "auto_map", None) or {}), **AUTO_MAP}
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.token_embedding = value

    def get_text_features(
        self, input_ids: torch.LongTensor, pooled_only: bool = False, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Runs the text tower; `pooler_output` is the projected (unnormalised) text embedding."""
        outputs = self.text_model(input_ids, pooled_only=pooled_only)
        outputs.pooler_output = self.text_projection(outputs.pooler_output)
        return outputs

    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> BaseModelOutputWithPooling:
        """Runs the image tower; `pooler_output` is the projected (unnormalised) image embedding."""
        return self.vision_model(pixel_values)

    def encode_text(self, input_ids: torch.LongTensor, normalize: bool = False) -> torch.Tensor:
        """Projected text embeddings as a tensor (open_clip interface)."""
        embeds = self.get_text_features(input_ids, pooled_only=True).pooler_output
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_image(self, pixel_values: torch.FloatTensor, normalize: bool = False) -> torch.Tensor:
        """Projected image embeddings as a tensor (open_clip interface)."""
        embeds = self.get_image_features(pixel_values).pooler_output
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MobileCLIPOutput | tuple:
        """Scores every image against every text.

        `attention_mask` is accepted for pipeline compatibility and ignored: released MobileCLIP text towers use no
        padding mask (the processor always pads to 77 with id 0, as open_clip does).
        """
        if input_ids is None or pixel_values is None:
            raise ValueError("MobileCLIPModel.forward needs both input_ids and pixel_values.")
        vision_outputs = self.get_image_features(pixel_values)
        text_outputs = self.get_text_features(input_ids)
        image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
        scale = self.logit_scale.exp().clamp(max=self.config.logit_scale_max)
        logits_per_text = scale * text_embeds @ image_embeds.t().to(text_embeds.dtype)
        logits_per_image = logits_per_text.t()
        loss = contrastive_loss(logits_per_text) if return_loss else None
        output = MobileCLIPOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )
        return output if return_dict is not False else output.to_tuple()

    @torch.no_grad()
    def reparameterize(self) -> "MobileCLIPModel":
        """Fuses every train-time branch in place (eval-mode math), records it in the config, returns `self`.

        FastViT blocks fuse through timm's own `reparameterize()` methods, then `fold_fastvit_affines_` folds the
        BatchNorms and layer scales timm leaves in place; the text RepMixer blocks fuse through ours.
        Outputs in eval mode are unchanged up to float rounding; BatchNorm statistics are consumed, so fuse only
        for inference or export.
        """
        from timm.utils import reparameterize_model

        reparameterize_model(self.vision_model.backbone, inplace=True)
        if self.config.vision_config.is_fastvit:
            fold_fastvit_affines_(self.vision_model.backbone)
        for module in list(self.text_model.modules()):
            if isinstance(module, (MobileCLIPTextRepMixer, MobileCLIPTextConvFFN)):
                module.reparameterize()
        self.config.vision_config.reparameterized = True
        self.config.text_config.reparameterized = True
        return self


MobileCLIPForZeroShotImageClassification = MobileCLIPModel

AUTO_MAP = {
    "AutoConfig": "configuration_mobileclip.MobileCLIPConfig",
    "AutoModel": "modeling_mobileclip.MobileCLIPModel",
    "AutoModelForZeroShotImageClassification": "modeling_mobileclip.MobileCLIPModel",
}
MobileCLIPConfig.register_for_auto_class()
MobileCLIPModel.register_for_auto_class("AutoModel")

__all__ = [
    "MobileCLIPModel",
    "MobileCLIPPreTrainedModel",
    "MobileCLIPOutput",
    "MobileCLIPTextTransformer",
    "MobileCLIPVisionTower",
    "MobileCLIPForZeroShotImageClassification",
    "contrastive_loss",
]
