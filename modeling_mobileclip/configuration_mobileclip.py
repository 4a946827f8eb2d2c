"""MobileCLIP / MobileCLIP2 configuration.

Variants are data: :data:`VARIANTS` maps each published model name to the settings of its image tower (a timm
backbone), its text tower and its preprocessing. Facts come from Apple's `mobileclip/configs/*.json`,
`mobileclip2/model_configs/*.json` and open_clip's `MobileCLIP*.json` (see the project README).
"""

# No `from __future__ import annotations` here: it turns every field annotation into a string, and huggingface_hub's
# `@strict` skips type checks for string annotations, so `causal: "false"` was stored as a truthy string.
import copy
import difflib
import functools
import inspect
import math
import os
from typing import Any

from dataclasses import fields

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError, StrictDataclassFieldValidationError
from transformers import GenerationConfig, PreTrainedConfig
from transformers.utils import CONFIG_NAME, cached_file


OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NO_NORMALIZATION_MEAN = (0.0, 0.0, 0.0)
NO_NORMALIZATION_STD = (1.0, 1.0, 1.0)

TIMM_BACKBONES = (
    "fastvit_mci0",
    "fastvit_mci1",
    "fastvit_mci2",
    "fastvit_mci3",
    "fastvit_mci4",
    "vit_base_mci_224",
    "vit_large_patch14_clip_224",
)


@strict
class MobileCLIPTextConfig(PreTrainedConfig):
    r"""Configuration of a MobileCLIP text tower.

    Three families share this config: the 12-layer "Base" (width 512) and "Large" (width 768) transformers, and
    MobileCLIP-S0's "MCt" (`num_repmixer_blocks=2`: a convolutional RepMixer block before and after
    `num_hidden_layers` attention layers).

    Args:
        vocab_size: Size of the CLIP BPE vocabulary.
        hidden_size: Width of the token representations.
        intermediate_size: Hidden width of the feed-forward blocks.
        num_hidden_layers: Number of self-attention layers.
        num_attention_heads: Attention heads per layer.
        max_position_embeddings: Context length (77 for every released model).
        projection_dim: Size of the joint image-text embedding.
        causal: Apply a causal attention mask (MobileCLIP-B and MobileCLIP2-B only). All other towers attend
            bidirectionally **without** a padding mask, so padding tokens affect the output.
        num_repmixer_blocks: 0 for Base/Large, 2 for MCt.
        repmixer_kernel_size: Length of the depthwise (1, k) convolutions of the RepMixer blocks.
        repmixer_mlp_ratio: Expansion of the RepMixer blocks' convolutional feed-forward.
        layer_scale_init_value: Initial value of the RepMixer layer scales.
        layer_norm_eps: LayerNorm epsilon.
        hidden_act: Feed-forward activation (exact GELU).
        attention_dropout: Dropout on attention probabilities.
        reparameterized: Whether the RepMixer blocks are stored in their fused (inference) form.
        initializer_range: Standard deviation used by `_init_weights` for generic layers.
    """

    model_type = "mobileclip_text_model"
    base_config_key = "text_config"

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    projection_dim: int = 512
    causal: bool = False
    num_repmixer_blocks: int = 0
    repmixer_kernel_size: int = 11
    # `float | int`: hand-written configs say 4 or 0 for whole numbers; a bare `float` would make @strict reject them.
    repmixer_mlp_ratio: float | int = 4.0
    layer_scale_init_value: float | int = 1e-5
    layer_norm_eps: float | int = 1e-5
    hidden_act: str = "gelu"
    attention_dropout: float | int = 0.0
    reparameterized: bool = False
    initializer_range: float | int = 0.02
    pad_token_id: int | None = 0
    bos_token_id: int | None = 49406
    eos_token_id: int | list[int] | None = 49407

    def __post_init__(self, **kwargs):
        _check_init_kwargs(type(self), kwargs)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Checks the sizes that the modules rely on."""
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.num_repmixer_blocks not in (0, 2):
            raise ValueError(
                f"num_repmixer_blocks must be 0 (Base/Large) or 2 (MCt), got {self.num_repmixer_blocks}."
            )
        if self.repmixer_kernel_size % 2 != 1:
            raise ValueError(f"repmixer_kernel_size must be odd, got {self.repmixer_kernel_size}.")

    @property
    def num_layers(self) -> int:
        """Layers the tower runs: the attention layers plus MCt's RepMixer blocks (`hidden_states` has one more)."""
        return self.num_hidden_layers + self.num_repmixer_blocks


@strict
class MobileCLIPVisionConfig(PreTrainedConfig):
    r"""Configuration of a MobileCLIP image tower: a timm backbone whose classifier is the CLIP projection.

    Args:
        backbone: timm architecture, one of `fastvit_mci0..4`, `vit_base_mci_224`, `vit_large_patch14_clip_224`.
        image_size: Square input resolution.
        projection_dim: Size of the joint embedding (the timm `num_classes`).
        apple_vit_stem: Reproduce Apple's v1 MobileCLIP-B image tower: first stem conv padding 1 and LayerNorm
            eps 1e-5, where timm / open_clip (and MobileCLIP2-B) use padding 0 and eps 1e-6. Only for
            `vit_base_mci_224`.
        drop_path_rate: Stochastic depth rate used in training.
        reparameterized: Whether the FastViT branches are stored fused (timm `inference_mode`).
        backbone_kwargs: Extra keyword arguments for `timm.create_model` (tiny test models, ablations).
        initializer_range: Unused by timm layers (timm initialises them); kept for `PreTrainedModel`.
    """

    model_type = "mobileclip_vision_model"
    base_config_key = "vision_config"

    backbone: str = "fastvit_mci0"
    image_size: int = 256
    projection_dim: int = 512
    apple_vit_stem: bool = False
    drop_path_rate: float | int = 0.0
    reparameterized: bool = False
    backbone_kwargs: dict | None = None
    initializer_range: float | int = 0.02

    def __post_init__(self, **kwargs):
        _check_init_kwargs(type(self), kwargs)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Checks the backbone choice and the ViT-stem switch."""
        if self.backbone not in TIMM_BACKBONES:
            raise ValueError(f"backbone must be one of {list(TIMM_BACKBONES)}, got {self.backbone!r}.")
        if self.apple_vit_stem and self.backbone != "vit_base_mci_224":
            raise ValueError(f"apple_vit_stem only applies to vit_base_mci_224, got backbone {self.backbone!r}.")

    @property
    def is_fastvit(self) -> bool:
        return self.backbone.startswith("fastvit")


# The plain classes: transformers wraps the values of `sub_configs_defaults` in (non-callable) specs.
_SUB_CONFIG_CLASSES = {"text_config": MobileCLIPTextConfig, "vision_config": MobileCLIPVisionConfig}


@strict
class MobileCLIPConfig(PreTrainedConfig):
    r"""Configuration of a [`MobileCLIPModel`]: an image tower, a text tower and a learned logit scale.

    Build a published variant with `MobileCLIPConfig.from_variant("mobileclip-s2")`; the list is
    `modeling_mobileclip.VARIANTS`.

    Args:
        text_config: [`MobileCLIPTextConfig`] or its dict.
        vision_config: [`MobileCLIPVisionConfig`] or its dict.
        projection_dim: Joint embedding size (must equal both towers' `projection_dim`).
        logit_scale_init_value: Initial `logit_scale` (log of the inverse temperature), ln(1/0.07).
        logit_scale_max: Upper bound of `exp(logit_scale)` (100 in Apple's and open_clip's code).
        variant: Name of the published variant this config was built from, if any.
        image_size / resample / image_mean / image_std: Preprocessing of the official transform (shortest-side
            resize then center crop); `resample` is "bilinear" or "bicubic".

    Example:

    ```python
    >>> from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel
    >>> config = MobileCLIPConfig.from_variant("mobileclip-s0")
    >>> model = MobileCLIPModel(config)
    ```
    """

    model_type = "mobileclip"
    sub_configs_defaults = {"text_config": MobileCLIPTextConfig, "vision_config": MobileCLIPVisionConfig}

    text_config: dict | MobileCLIPTextConfig | None = None
    vision_config: dict | MobileCLIPVisionConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float | int = math.log(1 / 0.07)
    logit_scale_max: float | int = 100.0
    variant: str | None = None
    resample: str = "bilinear"
    image_mean: list | tuple = NO_NORMALIZATION_MEAN
    image_std: list | tuple = NO_NORMALIZATION_STD
    initializer_range: float | int = 0.02

    def __post_init__(self, **kwargs):
        _check_init_kwargs(type(self), kwargs)
        for key, sub_class in _SUB_CONFIG_CLASSES.items():
            value = getattr(self, key)
            if value is None:
                setattr(self, key, sub_class())
            elif isinstance(value, dict):
                _check_keywords(value, sub_class, f"{type(self).__name__}({key}=...)", _transformers_keys(sub_class))
                try:
                    setattr(self, key, sub_class(**value))
                except StrictDataclassFieldValidationError as error:
                    # The sub-config's error names the field only ("causal"); say which sub-config it lives in.
                    raise StrictDataclassFieldValidationError(field=key, cause=error.__cause__ or error) from error
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Both towers must project into the same joint space."""
        for name, sub in (("text_config", self.text_config), ("vision_config", self.vision_config)):
            if sub.projection_dim != self.projection_dim:
                raise ValueError(
                    f"{name}.projection_dim ({sub.projection_dim}) must equal projection_dim ({self.projection_dim})."
                )
        if self.resample not in ("bilinear", "bicubic"):
            raise ValueError(f"resample must be 'bilinear' or 'bicubic', got {self.resample!r}.")

    @property
    def image_size(self) -> int:
        return self.vision_config.image_size

    @property
    def reparameterized(self) -> bool:
        return self.vision_config.reparameterized and self.text_config.reparameterized

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedConfig.from_pretrained`; a config.json that fails validation raises naming its path.

        The error keeps its type (`StrictDataclassFieldValidationError` for a wrongly typed value, TypeError for an
        unknown key, `StrictDataclassClassValidationError` from `validate_architecture`); only the message gains the
        file.
        `MobileCLIPModel.from_pretrained` reads its config through here.
        """
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except (StrictDataclassError, TypeError, ValueError) as error:
            path = _config_file_path(pretrained_model_name_or_path, kwargs)
            if error.args and isinstance(error.args[0], str):
                error.args = (f"Invalid config {path}: {error.args[0]}", *error.args[1:])
            else:
                error.add_note(f"(while reading the config {path})")
            raise

    @classmethod
    def from_variant(cls, name: str, **overrides: Any) -> "MobileCLIPConfig":
        """Builds the configuration of a published variant, e.g. `"mobileclip-s0"` or `"mobileclip2-l-14"`.

        `overrides` replace top-level fields; `text_config` / `vision_config` dicts are merged into the preset (a
        config object replaces it). Unknown names raise a TypeError with close matches: `PreTrainedConfig` would
        otherwise store a misspelt `projection_dm=256` as a new attribute and silently keep the preset's value.
        """
        preset = variant_preset(name)
        _check_keywords(overrides, cls, "MobileCLIPConfig.from_variant()")
        for key, sub_class in _SUB_CONFIG_CLASSES.items():
            if key not in overrides:
                continue
            value = overrides.pop(key)
            if isinstance(value, dict):
                _check_keywords(value, sub_class, f"MobileCLIPConfig.from_variant({key}=...)")
                preset[key].update(value)
            elif isinstance(value, sub_class):
                preset[key] = value
            else:
                raise TypeError(
                    f"MobileCLIPConfig.from_variant(): {key} must be a dict of overrides or a {sub_class.__name__}, "
                    f"got {type(value).__name__} ({value!r}). Example: {key}={{'projection_dim': 256}}."
                )
        preset.update(overrides)
        return cls(**preset)


def _config_file_path(pretrained_model_name_or_path, kwargs: dict) -> str:
    """The config.json that `from_pretrained` read (a local file, a folder's file or the Hub cache's copy)."""
    name, subfolder = str(pretrained_model_name_or_path), kwargs.get("subfolder") or ""
    if os.path.isfile(os.path.join(subfolder, name)):
        return name
    try:
        path = cached_file(
            name,
            kwargs.get("_configuration_file", CONFIG_NAME),
            subfolder=subfolder,
            cache_dir=kwargs.get("cache_dir"),
            revision=kwargs.get("revision"),
            local_files_only=True,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except Exception:  # only for the message: never hide the original error behind a lookup failure
        path = None
    return str(path) if path else f"{CONFIG_NAME} of {name!r}"


@functools.lru_cache(maxsize=None)
def _transformers_keys(config_class: type) -> frozenset:
    """Keywords that are no dataclass field of `config_class` but that transformers' `PreTrainedConfig` knows.

    `from_pretrained` / `from_dict` pass every key of a saved config.json (`model_type`, `auto_map`, legacy
    `torch_dtype`, ...) and load-time overrides (`attn_implementation`, `num_labels`, ...) to the constructor, and
    `PreTrainedConfig.__post_init__` consumes or stores them: those stay accepted. So do its other attributes and
    properties (`name_or_path`, `use_return_dict`, ...) and the generation parameters it drops from old configs.
    """
    base = PreTrainedConfig
    attributes = {
        name
        for name in dir(base)
        if not name.startswith("__")
        and not isinstance(inspect.getattr_static(base, name), (classmethod, staticmethod))
        and not callable(inspect.getattr_static(base, name))
    }
    try:
        generation = set(GenerationConfig._get_default_generation_params())
    except Exception:  # a private helper of transformers: its absence must not break loading
        generation = set()
    consumed = {
        "model_type", "auto_map", "torch_dtype", "num_labels", "name_or_path", "_name_or_path", "_commit_hash",
        "output_attentions", "attn_implementation", "experts_implementation", "per_layer_config",
        "_attn_implementation_internal", "_experts_implementation_internal", "rope_scaling", "rope_theta",
        "rope_parameters",
    }  # fmt: skip
    return frozenset(attributes | generation | consumed | set(getattr(config_class, "attribute_map", {}) or {}))


def _check_init_kwargs(config_class: type, kwargs: dict) -> None:
    """`__post_init__` receives the keywords that are no field: refuse those transformers does not know either.

    `PreTrainedConfig` would otherwise store a misspelt `projection_dm=256` (or a misspelt key of a config.json)
    as a new attribute and silently keep the default.
    """
    _check_keywords(kwargs, config_class, f"{config_class.__name__}()", _transformers_keys(config_class))


def _check_keywords(given: dict, config_class: type, where: str, also_allowed=frozenset()) -> None:
    """Raises a TypeError naming every keyword that is no field of `config_class` (nor in `also_allowed`), with
    difflib's close matches among the fields."""
    valid = [field.name for field in fields(config_class)]
    unknown = [key for key in given if key not in valid and key not in also_allowed]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), valid, n=3)
            hints.append(f"{key!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
        raise TypeError(
            f"{where} got unknown keyword(s) {', '.join(hints)}. Valid keywords of {config_class.__name__}: "
            f"{', '.join(valid)}."
        )


_BASE_TEXT = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
_LARGE_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
# MCt: RepMixer block, 4 attention layers, RepMixer block (Apple `mobileclip/text_encoder.py`).
_MCT_TEXT = dict(_BASE_TEXT, num_hidden_layers=4, num_repmixer_blocks=2)

_NO_NORM = dict(resample="bilinear", image_mean=NO_NORMALIZATION_MEAN, image_std=NO_NORMALIZATION_STD)
_OPENAI_BILINEAR = dict(resample="bilinear", image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
_OPENAI_BICUBIC = dict(resample="bicubic", image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)


def _variant(backbone, image_size, text, embed_dim=512, causal=False, preprocess=_NO_NORM, **vision):
    return dict(
        projection_dim=embed_dim,
        text_config=dict(text, projection_dim=embed_dim, causal=causal),
        vision_config=dict(backbone=backbone, image_size=image_size, projection_dim=embed_dim, **vision),
        **preprocess,
    )


# Name -> preset. v1 S3/S4/L-14 were released with MobileCLIP2 (DataCompDR-1B) and share its architectures and
# preprocessing (OpenAI mean/std; bicubic for L-14). v1 B follows Apple's ViT stem, MobileCLIP2-B timm's
# (open_clip `MobileCLIP-B` / timm `vit_base_mci_224` also use timm's: see README "MobileCLIP-B stems").
VARIANTS: dict[str, dict] = {
    "mobileclip-s0": _variant("fastvit_mci0", 256, _MCT_TEXT),
    "mobileclip-s1": _variant("fastvit_mci1", 256, _BASE_TEXT),
    "mobileclip-s2": _variant("fastvit_mci2", 256, _BASE_TEXT),
    "mobileclip-b": _variant("vit_base_mci_224", 224, _BASE_TEXT, causal=True, apple_vit_stem=True),
    "mobileclip-s3": _variant("fastvit_mci3", 256, _LARGE_TEXT, 768, preprocess=_OPENAI_BILINEAR),
    "mobileclip-s4": _variant("fastvit_mci4", 256, _LARGE_TEXT, 768, preprocess=_OPENAI_BILINEAR),
    "mobileclip-l-14": _variant("vit_large_patch14_clip_224", 224, _LARGE_TEXT, 768, preprocess=_OPENAI_BICUBIC),
    "mobileclip2-s0": _variant("fastvit_mci0", 256, _BASE_TEXT),
    "mobileclip2-s2": _variant("fastvit_mci2", 256, _BASE_TEXT),
    "mobileclip2-b": _variant("vit_base_mci_224", 224, _BASE_TEXT, causal=True),
    "mobileclip2-s3": _variant("fastvit_mci3", 256, _LARGE_TEXT, 768, preprocess=_OPENAI_BILINEAR),
    "mobileclip2-s4": _variant("fastvit_mci4", 256, _LARGE_TEXT, 768, preprocess=_OPENAI_BILINEAR),
    "mobileclip2-l-14": _variant(
        "vit_large_patch14_clip_224", 224, _LARGE_TEXT, 768, preprocess=_OPENAI_BICUBIC, drop_path_rate=0.1
    ),
}


# Not published models: tiny towers with every block type (RepMixer, attention stage, MCt RepMixer text blocks)
# for tests, CPU demos and smoke runs. Selectable by name but not listed in VARIANTS.
DEV_VARIANTS: dict[str, dict] = {
    "mobileclip-tiny": _variant(
        "fastvit_mci0",
        64,
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_repmixer_blocks=2),
        embed_dim=32,
        backbone_kwargs=dict(layers=(1, 1, 1, 1), embed_dims=(16, 32, 64, 64)),
    ),
    # Twice as wide, a deeper attention stage: the teacher of the quickstart's learning-efficiency experiment.
    "mobileclip-tiny-wide": _variant(
        "fastvit_mci0",
        64,
        dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_repmixer_blocks=2),
        embed_dim=64,
        backbone_kwargs=dict(layers=(1, 1, 2, 1), embed_dims=(32, 64, 128, 128)),
    ),
    # The L-14 architecture (a timm ViT, stochastic depth) at tiny size: the ViT paths of training and locking.
    "mobileclip-tiny-vit": _variant(
        "vit_large_patch14_clip_224",
        64,
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        embed_dim=32,
        preprocess=_OPENAI_BICUBIC,
        drop_path_rate=0.1,
        backbone_kwargs=dict(depth=2, embed_dim=64, num_heads=4, patch_size=16),
    ),
}


def variant_preset(name: str) -> dict:
    """Returns a deep copy of the preset of a published (or dev) variant; unknown names list the valid ones."""
    key = name.lower().replace("_", "-")
    presets = {**VARIANTS, **DEV_VARIANTS}
    if key not in presets:
        raise ValueError(
            f"Unknown MobileCLIP variant {name!r}. Valid variants: {', '.join(VARIANTS)} "
            f"(and for tests: {', '.join(DEV_VARIANTS)})."
        )
    preset = copy.deepcopy(presets[key])
    preset["variant"] = key
    return preset


__all__ = [
    "MobileCLIPConfig",
    "MobileCLIPTextConfig",
    "MobileCLIPVisionConfig",
    "VARIANTS",
    "DEV_VARIANTS",
    "variant_preset",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
]
