"""Hugging Face-native MobileCLIP and MobileCLIP2.

This folder is also the remote-code folder copied next to saved checkpoints: its model files use relative imports
only. `from modeling_mobileclip import MobileCLIPModel, MobileCLIPConfig, MobileCLIPProcessor, VARIANTS`; the towers
load alone as `MobileCLIPVisionModel` / `MobileCLIPTextModel` (`MobileCLIPTextModelWithProjection` with the projection).
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    AutoTokenizer,
)

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


def _register_auto_classes() -> None:
    """Makes transformers' Auto classes resolve our model types to this package's classes.

    transformers' documented way for a custom model: with the package imported, `AutoConfig`, `AutoModel`,
    `AutoProcessor` & co. load a MobileCLIP folder with these classes and never ask to run the folder's remote code
    (transformers prefers explicitly registered classes, also when `trust_remote_code=True` is passed). The remote
    code serves machines where the package is not installed.
    """
    for config_class in (MobileCLIPConfig, MobileCLIPTextConfig, MobileCLIPVisionConfig):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(MobileCLIPConfig, MobileCLIPModel, exist_ok=True)
    AutoModel.register(MobileCLIPVisionConfig, MobileCLIPVisionModel, exist_ok=True)
    AutoModel.register(MobileCLIPTextConfig, MobileCLIPTextModel, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(MobileCLIPConfig, MobileCLIPModel, exist_ok=True)
    AutoTokenizer.register(MobileCLIPConfig, fast_tokenizer_class=MobileCLIPTokenizer, exist_ok=True)
    AutoImageProcessor.register(MobileCLIPConfig, fast_image_processor_class=MobileCLIPImageProcessor, exist_ok=True)
    AutoProcessor.register(MobileCLIPConfig, MobileCLIPProcessor, exist_ok=True)


_register_auto_classes()

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
