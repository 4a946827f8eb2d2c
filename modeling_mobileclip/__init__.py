"""Hugging Face-native MobileCLIP and MobileCLIP2.

This folder is also the remote-code folder copied next to saved checkpoints: its model files use relative imports
only. `from modeling_mobileclip import MobileCLIPModel, MobileCLIPConfig, MobileCLIPProcessor, VARIANTS`; the towers
load alone as `MobileCLIPVisionModel` / `MobileCLIPTextModel` (`MobileCLIPTextModelWithProjection` with the projection).
"""

from .configuration_mobileclip import (
    DEV_VARIANTS,
    VARIANTS,
    MobileCLIPConfig,
    MobileCLIPTextConfig,
    MobileCLIPVisionConfig,
)
from .modeling_mobileclip import (
    MobileCLIPModel,
    MobileCLIPOutput,
    MobileCLIPPreTrainedModel,
    MobileCLIPTextModel,
    MobileCLIPTextModelOutput,
    MobileCLIPTextModelWithProjection,
    MobileCLIPVisionModel,
    MobileCLIPVisionModelOutput,
)
from .processing_mobileclip import (
    CONTEXT_LENGTH,
    MobileCLIPImageProcessor,
    MobileCLIPProcessor,
    MobileCLIPTokenizer,
    clean_caption,
)

__all__ = [
    "DEV_VARIANTS",
    "VARIANTS",
    "MobileCLIPConfig",
    "MobileCLIPTextConfig",
    "MobileCLIPVisionConfig",
    "MobileCLIPModel",
    "MobileCLIPOutput",
    "MobileCLIPPreTrainedModel",
    "MobileCLIPTextModel",
    "MobileCLIPTextModelOutput",
    "MobileCLIPTextModelWithProjection",
    "MobileCLIPVisionModel",
    "MobileCLIPVisionModelOutput",
    "CONTEXT_LENGTH",
    "MobileCLIPImageProcessor",
    "MobileCLIPProcessor",
    "MobileCLIPTokenizer",
    "clean_caption",
]
