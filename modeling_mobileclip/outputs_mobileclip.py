"""The outputs of the MobileCLIP models (transformers' `ModelOutput`s, keyed like CLIP's) and the CLIP loss.

A remote-code file: copied next to saved weights with `modeling_mobileclip.py`, which re-exports these names.
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput


@dataclass
class MobileCLIPVisionModelOutput(ModelOutput):
    """Output of [`MobileCLIPVisionModel`] (the keys of transformers' `CLIPVisionModelOutput`, plus `pooler_output`).

    Args:
        image_embeds: `(batch, projection_dim)` image embeddings, unnormalised: `pooler_output` through the image
            projection (timm's classifier head).
        last_hidden_state: The backbone's final features: `(batch, channels, height, width)` for FastViT (after its
            final conv), `(batch, tokens, width)` for the ViTs (after the final LayerNorm).
        pooler_output: `(batch, width)` pooled features, before the projection.
        hidden_states: With `output_hidden_states=True`: the input of the first FastViT stage (the stem's output) or
            ViT block (the embedded tokens), then the output of every stage / block, i.e. the features timm's
            `forward_intermediates` returns (`len(stages) + 1` or `depth + 1` tensors).
        attentions: Always None: timm's attention layers do not return their weights.
    """

    image_embeds: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MobileCLIPTextModelOutput(ModelOutput):
    """Output of [`MobileCLIPTextModelWithProjection`] (the keys of transformers' `CLIPTextModelOutput`, plus
    `pooler_output`).

    Args:
        text_embeds: `(batch, projection_dim)` text embeddings, unnormalised: `pooler_output` through `text_projection`.
        last_hidden_state: `(batch, length, width)` token states after the final LayerNorm.
        pooler_output: `(batch, width)` state at the first EOT token, before the projection.
        hidden_states: With `output_hidden_states=True`: the embedded tokens, then the output of every layer (MCt's
            RepMixer blocks included), before the final LayerNorm.
        attentions: With `output_attentions=True` and `attn_implementation="eager"`: the attention probabilities of
            every attention layer, `(batch, heads, length, length)` (SDPA does not return them).
    """

    text_embeds: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MobileCLIPOutput(ModelOutput):
    """Output of [`MobileCLIPModel`].

    Args:
        loss: Symmetric contrastive (InfoNCE) loss, returned when `return_loss=True`.
        logits_per_image: `(image_batch, text_batch)` scaled cosine similarities.
        logits_per_text: `(text_batch, image_batch)`, the transpose.
        text_embeds: L2-normalised projected text embeddings.
        image_embeds: L2-normalised projected image embeddings.
        text_model_output / vision_model_output: The outputs of `get_text_features` / `get_image_features` (as in
            transformers' CLIP, `pooler_output` is the unnormalised projected embedding).
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any]:
        return tuple(value.to_tuple() if isinstance(value, ModelOutput) else value for value in self.values())


def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a square similarity matrix whose diagonal holds the positives."""
    labels = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return 0.5 * (F.cross_entropy(logits_per_text, labels) + F.cross_entropy(logits_per_text.t(), labels))


__all__ = ["MobileCLIPOutput", "MobileCLIPTextModelOutput", "MobileCLIPVisionModelOutput", "contrastive_loss"]
