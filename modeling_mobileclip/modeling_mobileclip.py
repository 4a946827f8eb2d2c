"""PyTorch MobileCLIP / MobileCLIP2 (Vasu et al., CVPR 2024, arXiv 2311.17049; arXiv 2508.20691).

Laid out like transformers' CLIP: the towers `MobileCLIPVisionModel` and `MobileCLIPTextModel` are `PreTrainedModel`s
with their own configs, each loadable alone (also from a full MobileCLIP checkpoint, as `CLIPVisionModel` loads from a
CLIP one), and `MobileCLIPModel` composes them with the text projection and the logit scale.
Image towers are timm's implementations (`fastvit_mci0..4`, `vit_base_mci_224`, `vit_large_patch14_clip_224`) whose
classifier is the CLIP image projection. Text towers are ours (blocks in `text_mobileclip.py`): the Base/Large pre-norm
transformer and MobileCLIP-S0's MCt (a convolutional RepMixer block before and after four attention layers), with EOT
pooling and SDPA attention.
Every train-time multi-branch block fuses itself (`reparameterize()`, idempotent, children first), as in timm's
`fastvit.py`; a model's `reparameterize()` is a walk over those blocks, and the image tower's adds the FastViT folds
that timm leaves (`vision_mobileclip.py`).
"""


import json
import os
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from timm.models.fastvit import FastVitStage
from timm.models.vision_transformer import Block as VisionTransformerBlock
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_mobileclip import MobileCLIPConfig, MobileCLIPTextConfig, MobileCLIPVisionConfig
from .model_card import build_model_card
from .model_folder import push_folder, write_model_folder
from .outputs_mobileclip import (
    MobileCLIPOutput,
    MobileCLIPTextModelOutput,
    MobileCLIPVisionModelOutput,
    contrastive_loss,
)

# The text-tower blocks live in text_mobileclip.py and the FastViT folds in vision_mobileclip.py (transformers copies
# both next to saved weights with this file); the names stay importable from here.
from .text_mobileclip import (  # noqa: F401
    MobileCLIPAttention,
    MobileCLIPEncoderLayer,
    MobileCLIPMLP,
    MobileCLIPTextConvFFN,
    MobileCLIPTextRepMixer,
    MobileCLIPTextRepMixerBlock,
    eager_attention_forward,
    fold_batchnorm,
    reparameterize_children,
)
from .vision_mobileclip import fold_fastvit_affines_  # noqa: F401


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


class MobileCLIPPreTrainedModel(PreTrainedModel):
    """Base class: weight initialisation, gradient checkpointing, attention-backend flags and `reparameterize()`."""

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
    _no_split_modules = ["MobileCLIPEncoderLayer", "MobileCLIPTextRepMixerBlock", "MobileCLIPVisionModel"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """open_clip's text-tower initialisation (which trains MobileCLIP2 from scratch); timm owns the image tower."""
        super()._init_weights(module)
        if isinstance(module, MobileCLIPModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
        text_config = getattr(self.config, "text_config", self.config)
        if not isinstance(text_config, MobileCLIPTextConfig):
            return  # the image tower: timm initialised its layers
        width, depth = text_config.hidden_size, max(text_config.num_hidden_layers, 1)
        residual_std = width**-0.5 * (2 * depth) ** -0.5
        if isinstance(module, MobileCLIPTextModel):
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
        elif isinstance(module, (MobileCLIPModel, MobileCLIPTextModelWithProjection)):
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
            if isinstance(module, MobileCLIPVisionModel):
                module.backbone.set_grad_checkpointing(enable)

    @torch.no_grad()
    def reparameterize(self) -> "MobileCLIPPreTrainedModel":
        """Fuses every train-time branch in place (eval-mode math) and returns `self`; idempotent.

        A walk over the blocks (`reparameterize_children`, timm's `reparameterize_model` without a list of types):
        each fuses its own children first; the towers record `reparameterized: true` in their configs, so a saved
        fused model reloads fused. Outputs in eval mode are unchanged up to float rounding; BatchNorm statistics are
        consumed, so fuse only for inference or export.
        """
        reparameterize_children(self)
        return self


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


class MobileCLIPVisionModel(MobileCLIPPreTrainedModel):
    """The image tower: a timm backbone whose classifier head is the CLIP image projection.

    Loads alone from a folder saved from it, or from a full MobileCLIP checkpoint (the `vision_model.*` weights; the
    text weights are reported unused), as `CLIPVisionModel` loads from a CLIP checkpoint. Built in timm's
    `inference_mode`, with the FastViT folds, when the config records a reparameterized tower.
    """

    config: MobileCLIPVisionConfig
    config_class = MobileCLIPVisionConfig
    base_model_prefix = "vision_model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # Per-stage (FastViT) / per-block (ViT) features, the granularity of timm's `forward_intermediates`.
    _can_record_outputs = {"hidden_states": OutputRecorder((FastVitStage, VisionTransformerBlock))}

    def __init__(self, config: MobileCLIPVisionConfig):
        super().__init__(config)
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
        self.post_init()

    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.FloatTensor, **kwargs) -> MobileCLIPVisionModelOutput:
        """Encodes `pixel_values` (batch, 3, image_size, image_size), already resized and normalised."""
        features = self.backbone.forward_features(pixel_values)
        pooled = self.backbone.forward_head(features, pre_logits=True)
        return MobileCLIPVisionModelOutput(
            image_embeds=self.backbone.get_classifier()(pooled), last_hidden_state=features, pooler_output=pooled
        )

    @torch.no_grad()
    def reparameterize(self) -> "MobileCLIPVisionModel":
        """timm's FastViT blocks fuse themselves, then `fold_fastvit_affines_` folds what they leave; idempotent."""
        reparameterize_children(self)
        if self.config.is_fastvit:
            fold_fastvit_affines_(self.backbone)
        self.config.reparameterized = True
        return self


class MobileCLIPTextModel(MobileCLIPPreTrainedModel):
    """The text tower without projection: token + learned position embeddings, the layers, a final LayerNorm and
    pooling at the first EOT token (`argmax(input_ids)`: EOT has the largest id, as in Apple's and open_clip's code).

    Loads alone from a folder saved from it, or from a full MobileCLIP checkpoint (the `text_model.*` weights), as
    `CLIPTextModel` does; [`MobileCLIPTextModelWithProjection`] adds the projection.
    """

    config: MobileCLIPTextConfig
    config_class = MobileCLIPTextConfig
    base_model_prefix = "text_model"
    input_modalities = ("text",)
    _can_record_outputs = {
        "hidden_states": OutputRecorder(
            (MobileCLIPEncoderLayer, MobileCLIPTextRepMixerBlock), num_hidden_layers_key="num_layers"
        ),
        "attentions": OutputRecorder(MobileCLIPAttention, index=1),
    }

    def __init__(self, config: MobileCLIPTextConfig):
        super().__init__(config)
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Parameter(torch.empty(config.max_position_embeddings, config.hidden_size))
        layers: list[nn.Module] = [MobileCLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)]
        if config.num_repmixer_blocks:
            layers = [MobileCLIPTextRepMixerBlock(config), *layers, MobileCLIPTextRepMixerBlock(config)]
        self.layers = nn.ModuleList(layers)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.token_embedding = value

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pooled_only: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Encodes `input_ids` (batch, length <= 77); `pooler_output` is the EOT state before the projection.

        `attention_mask` is accepted for tokenizer outputs and ignored: released MobileCLIP text towers use no padding
        mask (the processor always pads to 77 with id 0, as open_clip does). With `pooled_only=True` a causal tower
        skips the positions after the batch's last EOT, which cannot influence the pooled output (about 4x less work
        for typical 77-token padded captions); `last_hidden_state` then covers only the kept positions.
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

    @torch.no_grad()
    def reparameterize(self) -> "MobileCLIPTextModel":
        """Fuses MCt's RepMixer blocks (Base/Large towers have nothing to fuse); idempotent."""
        reparameterize_children(self)
        self.config.reparameterized = True
        return self


class MobileCLIPTextModelWithProjection(MobileCLIPPreTrainedModel):
    """The text tower with its projection: `text_embeds` equal `MobileCLIPModel.get_text_features(...).pooler_output`.

    Its weights are named as in a full MobileCLIP checkpoint (`text_model.*`, `text_projection.weight`), so it loads
    from one, as transformers' `CLIPTextModelWithProjection` does.
    """

    config: MobileCLIPTextConfig
    config_class = MobileCLIPTextConfig
    base_model_prefix = "text_model"
    input_modalities = ("text",)

    def __init__(self, config: MobileCLIPTextConfig):
        super().__init__(config)
        self.text_model = MobileCLIPTextModel._from_config(config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.token_embedding = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pooled_only: bool = False,
        **kwargs,
    ) -> MobileCLIPTextModelOutput:
        """Encodes `input_ids`; see [`MobileCLIPTextModel.forward`]."""
        outputs = self.text_model(input_ids, pooled_only=pooled_only, return_dict=True, **kwargs)
        return MobileCLIPTextModelOutput(
            text_embeds=self.text_projection(outputs.pooler_output),
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=outputs.pooler_output,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class MobileCLIPModel(MobileCLIPPreTrainedModel):
    """MobileCLIP / MobileCLIP2 dual encoder: [`MobileCLIPVisionModel`], [`MobileCLIPTextModel`], the text
    projection and the logit scale.

    `forward` returns CLIP-style logits and normalised embeddings (and the contrastive loss with
    `return_loss=True`); `encode_image` / `encode_text` return plain tensors, the open_clip / CLIP_benchmark
    interface. `reparameterize()` fuses all train-time branches in place and records it in the config, so a saved
    fused model reloads fused. `AutoModelForZeroShotImageClassification` (and so the zero-shot pipeline) loads this
    class, as transformers maps CLIP to `CLIPModel`.

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
        self.text_model = MobileCLIPTextModel._from_config(config.text_config)
        self.vision_model = MobileCLIPVisionModel._from_config(config.vision_config)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        # Saved folders must load with AutoModel and the zero-shot pipeline from the copied code files.
        config.auto_map = {**(getattr(config, "auto_map", None) or {}), **AUTO_MAP}
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.token_embedding = value

    @can_return_tuple
    def get_text_features(
        self, input_ids: torch.LongTensor, pooled_only: bool = False, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Runs the text tower; `pooler_output` is the projected (unnormalised) text embedding."""
        outputs = self.text_model(input_ids, pooled_only=pooled_only, return_dict=True, **kwargs)
        outputs.pooler_output = self.text_projection(outputs.pooler_output)
        return outputs

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> BaseModelOutputWithPooling:
        """Runs the image tower; `pooler_output` is the projected (unnormalised) image embedding."""
        outputs = self.vision_model(pixel_values, return_dict=True, **kwargs)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=outputs.image_embeds,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def push_to_hub(self, repo_id: str, processor=None, **kwargs) -> Any:
        """Pushes the complete folder in one commit: weights, config with `auto_map`, remote code, processor files
        (`processor`, default the variant's) and a README.md model card (`model_card=`, default
        `model_card.build_model_card`); `reparameterized_subfolder=True` adds the fused copy in `reparameterized/`.
        Keywords: commit_message, private, token, revision, create_pr, max_shard_size, tags."""
        return _push_to_hub(self, repo_id, processor, **kwargs)

    def encode_text(self, input_ids: torch.LongTensor, normalize: bool = False) -> torch.Tensor:
        """Projected text embeddings as a tensor (open_clip interface)."""
        embeds = self.get_text_features(input_ids, pooled_only=True).pooler_output
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_image(self, pixel_values: torch.FloatTensor, normalize: bool = False) -> torch.Tensor:
        """Projected image embeddings as a tensor (open_clip interface)."""
        embeds = self.vision_model(pixel_values).image_embeds
        return F.normalize(embeds, dim=-1) if normalize else embeds

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        **kwargs,
    ) -> MobileCLIPOutput:
        """Scores every image against every text.

        `attention_mask` is accepted for pipeline compatibility and ignored (see [`MobileCLIPTextModel.forward`]);
        `output_hidden_states` / `output_attentions` reach both towers.
        """
        if input_ids is None or pixel_values is None:
            raise ValueError("MobileCLIPModel.forward needs both input_ids and pixel_values.")
        vision_outputs = self.get_image_features(pixel_values, **kwargs)
        text_outputs = self.get_text_features(input_ids, **kwargs)
        image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
        scale = self.logit_scale.exp().clamp(max=self.config.logit_scale_max)
        logits_per_text = scale * text_embeds @ image_embeds.t().to(text_embeds.dtype)
        logits_per_image = logits_per_text.t()
        return MobileCLIPOutput(
            loss=contrastive_loss(logits_per_text) if return_loss else None,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )


def _push_to_hub(model: "MobileCLIPModel", repo_id: str, processor=None, *, commit_message: str | None = None,
                 private: bool | None = None, token: str | None = None, revision: str | None = None,
                 create_pr: bool = False, reparameterized_subfolder: bool = False, model_card=None,
                 max_shard_size: int | str | None = None, tags: list[str] | None = None) -> Any:
    """The complete folder in one commit: weights + config (auto_map) + remote code, processor files, README.md model
    card, and with `reparameterized_subfolder` the fused copy in `reparameterized/`."""
    def card(reparameterized: bool):
        if model_card is not None and reparameterized == bool(model.config.vision_config.reparameterized):
            return model_card
        return build_model_card(model.config.variant or "mobileclip", repo_id=repo_id, tags=tags,
                                reparameterized=reparameterized)

    with tempfile.TemporaryDirectory() as folder:
        write_model_folder(model, folder, processor, card, reparameterized_subfolder, max_shard_size)
        return push_folder(folder, repo_id, private, commit_message or
                           "Upload MobileCLIP (weights, remote code, processor, model card)", token=token,
                           revision=revision, create_pr=create_pr)


AUTO_MAP = {
    "AutoConfig": "configuration_mobileclip.MobileCLIPConfig",
    "AutoModel": "modeling_mobileclip.MobileCLIPModel",
    "AutoModelForZeroShotImageClassification": "modeling_mobileclip.MobileCLIPModel",
}
# A saved tower's config.json maps AutoConfig to its own config class and AutoModel to the class that saved it, so
# `AutoModel.from_pretrained(DIR, trust_remote_code=True)` gives back that tower (transformers' CLIP maps
# CLIPVisionConfig / CLIPTextConfig to CLIPVisionModel / CLIPTextModel the same way).
for _config_class in (MobileCLIPConfig, MobileCLIPTextConfig, MobileCLIPVisionConfig):
    _config_class.register_for_auto_class()
for _model_class in (MobileCLIPModel, MobileCLIPTextModel, MobileCLIPTextModelWithProjection, MobileCLIPVisionModel):
    _model_class.register_for_auto_class("AutoModel")

__all__ = [
    "MobileCLIPModel",
    "MobileCLIPPreTrainedModel",
    "MobileCLIPTextModel",
    "MobileCLIPTextModelWithProjection",
    "MobileCLIPVisionModel",
    "MobileCLIPOutput",
    "MobileCLIPTextModelOutput",
    "MobileCLIPVisionModelOutput",
    "contrastive_loss",
    "fold_fastvit_affines_",
]
