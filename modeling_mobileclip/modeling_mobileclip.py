"""PyTorch MobileCLIP / MobileCLIP2 (Vasu et al., CVPR 2024, arXiv 2311.17049; arXiv 2508.20691).

Image towers are timm's implementations (`fastvit_mci0..4`, `vit_base_mci_224`, `vit_large_patch14_clip_224`) whose
classifier is the CLIP image projection. Text towers are ours (`text_mobileclip.py`): the Base/Large pre-norm
transformer and MobileCLIP-S0's MCt (a convolutional RepMixer block before and after four attention layers), with EOT
pooling and SDPA attention.
Every train-time multi-branch block knows how to fuse itself (`reparameterize()`), as in timm's `fastvit.py`.
"""


import json
import os
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
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .configuration_mobileclip import MobileCLIPConfig, MobileCLIPVisionConfig

# The text towers live in text_mobileclip.py (transformers copies it next to saved weights with this file); the
# names stay importable from here.
from .text_mobileclip import (  # noqa: F401
    MobileCLIPAttention,
    MobileCLIPEncoderLayer,
    MobileCLIPMLP,
    MobileCLIPTextConvFFN,
    MobileCLIPTextRepMixer,
    MobileCLIPTextRepMixerBlock,
    MobileCLIPTextTransformer,
    eager_attention_forward,
    fold_batchnorm,
)


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
# Image tower
# ---------------------------------------------------------------------------------------------------------------------



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
