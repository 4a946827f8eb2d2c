"""What is exported: the two encoder graphs (each ends in the L2-normalised embedding), the fused fp32 model they
are traced from, the tracing inputs, and the source checkpoint with its processor."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.image_utils import PILImageResampling

from ..loading import is_mobileclip_config, load_model_and_processor, read_config
from ..text_mobileclip import fold_batchnorm
from .errors import ExportInputError

MAX_DYNAMIC_BATCH = 256  # upper bound of Core ML's batch range (ONNX records a free "batch" dimension)
FILE_STEMS = {"image": "image_encoder", "text": "text_encoder"}
INPUT_NAMES = {"image": "pixel_values", "text": "input_ids"}
OUTPUT_NAMES = {"image": "image_embeds", "text": "text_embeds"}
# Checkpoint folders must carry the processor: one of these and a tokenizer (tokenizer.json or vocab.json + merges.txt).
PROCESSOR_CONFIGS = ("processor_config.json", "preprocessor_config.json")
# Keys of a config that say where, with what or in which dtype it was saved or loaded, not which model it is.
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "name_or_path", "_commit_hash", "dtype",
                         "torch_dtype")
# timm blocks whose forward is conv -> bn (-> act): their BatchNorm folds into the conv.
_CONV_THEN_NORM = ("ConvNormAct", "ConvNormActAa", "ConvBnAct")


class MobileCLIPImageEncoder(nn.Module):
    """`pixel_values` -> L2-normalised image embeddings (the exported image graph)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.vision_model = model.vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_model(pixel_values).image_embeds, dim=-1)


class MobileCLIPTextEncoder(nn.Module):
    """`input_ids` (batch, 77, padded by the processor) -> L2-normalised text embeddings (the exported text graph).

    All 77 positions are computed (no `pooled_only` cut, whose length depends on the data): the causal towers give
    the same embedding, the bidirectional ones need the padding anyway.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.text_model = model.text_model
        self.text_projection = model.text_projection

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(self.text_model(input_ids).pooler_output), dim=-1)


ENCODERS = {"image": MobileCLIPImageEncoder, "text": MobileCLIPTextEncoder}


@torch.no_grad()
def fold_remaining_batchnorm_(model: nn.Module) -> list[str]:
    """Folds every BatchNorm that `reparameterize()` leaves (timm conv-norm-act blocks such as MobileCLIP-B's stem,
    `nn.Sequential(conv, bn)` pairs) into its convolution, in place; returns the folded modules' names.

    Export only: the fused layout is not a checkpoint layout (a `reparameterized: true` config rebuilds these blocks
    with their BatchNorm), so the model classes keep them.
    """
    folded = []
    for name, module in model.named_modules():
        pairs = []
        if type(module).__name__ in _CONV_THEN_NORM:
            pairs.append(("conv", "bn"))
        elif isinstance(module, nn.Sequential):
            keys = list(module._modules)
            pairs += [(a, b) for a, b in zip(keys, keys[1:])]
        for conv_key, bn_key in pairs:
            conv, bn = module._modules.get(conv_key), module._modules.get(bn_key)
            if not (isinstance(conv, nn.modules.conv._ConvNd) and isinstance(bn, nn.modules.batchnorm._BatchNorm)):
                continue
            kernel, bias = fold_batchnorm(conv.weight, bn, bias=conv.bias)
            conv.weight.copy_(kernel)
            conv.bias = nn.Parameter(bias)
            # timm's BatchNormAct2d applies dropout (identity in eval) and its activation after normalising.
            after = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
            module._modules[bn_key] = nn.Sequential(*after) if after else nn.Identity()
            folded.append(f"{name}.{bn_key}".lstrip("."))
    return folded


def reparameterize_for_export(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A fused eval-mode copy of `model` (the caller's model is untouched) and the BatchNorms folded beyond
    `reparameterize()`; raises if any BatchNorm is left."""
    fused = copy.deepcopy(model).eval().float()
    fused.reparameterize()
    folded = fold_remaining_batchnorm_(fused)
    left = [name for name, m in fused.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise ExportInputError(f"BatchNorm layers left after reparameterization that no fold handles: {left}.")
    return fused, folded


def config_sha256(config) -> str:
    """SHA-256 of the config as canonical JSON (sorted keys), without the keys (at any depth) that only say where,
    with what or in which dtype it was saved or loaded: the same checkpoint hashes the same however it is loaded."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in _VOLATILE_CONFIG_KEYS}
        return value

    return hashlib.sha256(json.dumps(strip(config.to_dict()), sort_keys=True, default=str).encode()).hexdigest()


def load_exportable(model_id: str):
    """(MobileCLIPModel in fp32 eval mode, MobileCLIPProcessor) of a saved folder or Hub id, through the project's one
    loader; a folder without the processor's files raises ExportInputError naming what is missing."""
    folder = Path(model_id)
    if folder.is_dir():
        present = {p.name for p in folder.iterdir()}
        missing = []
        if "config.json" not in present:
            missing.append("config.json")
        if not present & set(PROCESSOR_CONFIGS):
            missing.append(" or ".join(PROCESSOR_CONFIGS))
        if "tokenizer.json" not in present and not {"vocab.json", "merges.txt"} <= present:
            missing.append("tokenizer.json (or vocab.json + merges.txt)")
        if missing:
            raise ExportInputError(
                f"{model_id} is not a complete MobileCLIP folder: missing {', '.join(missing)}. The export copies the "
                "processor's files beside the graphs and records its preprocessing; save the processor there first "
                "(`MobileCLIPProcessor.from_variant(VARIANT).save_pretrained(DIR)`)."
            )
    try:
        config = read_config(model_id)
    except OSError as error:
        raise ExportInputError(f"Cannot read the config of {model_id!r}: {error}") from error
    if not is_mobileclip_config(config):
        raise ExportInputError(f"{model_id} is model_type {config.get('model_type')!r}, not a MobileCLIP checkpoint.")
    try:
        return load_model_and_processor(model_id, dtype=torch.float32)
    except (OSError, ValueError, TypeError) as error:
        raise ExportInputError(f"{model_id} has no loadable processor or weights ({error}); the export needs its "
                               "files.") from error


def preprocessing_manifest(processor) -> dict[str, Any]:
    """What a deployment must do before the graphs: the image processor's and tokenizer's settings."""
    image, tokenizer = processor.image_processor, processor.tokenizer
    crop = image.crop_size
    return {
        "image": {
            "convert_rgb": bool(image.do_convert_rgb),
            "resize": {"shortest_edge": image.size.shortest_edge,
                       "resample": PILImageResampling(image.resample).name.lower(),
                       "library": "PIL (antialiased)", "long_edge": "int(shortest_edge * long / short)"}
            if image.do_resize else None,
            "center_crop": {"height": crop.height, "width": crop.width,
                            "offsets": "round((resized - crop) / 2) (torchvision)"} if image.do_center_crop else None,
            "rescale_factor": image.rescale_factor,
            "normalize": bool(image.do_normalize),
            "mean": list(image.image_mean) if image.do_normalize else [0.0, 0.0, 0.0],
            "std": list(image.image_std) if image.do_normalize else [1.0, 1.0, 1.0],
            "layout": "NCHW, RGB, float32",
        },
        "text": {
            "tokenizer_file": "tokenizer.json",
            "context_length": tokenizer.model_max_length,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "cleaning": "open_clip's: ftfy.fix_text, HTML unescaped twice, whitespace collapsed, lower-cased",
            "truncation": "at context_length, eos kept last",
            "padding": "to context_length with pad_token_id, after eos",
        },
    }


def dynamic_shapes(component: str, batch: int | None):
    if batch is not None:
        return None
    return {INPUT_NAMES[component]: {0: torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)}}


def example_input(model: nn.Module, component: str, batch: int | None) -> torch.Tensor:
    """A tracing input; a dynamic batch is traced at 2 (torch.export specialises a batch of 1 to a constant)."""
    n = batch or 2
    if component == "image":
        size = model.config.vision_config.image_size
        return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    ids = torch.zeros(n, model.config.text_config.max_position_embeddings, dtype=torch.long)
    ids[:, 0], ids[:, 1:4], ids[:, 4] = 49406, 320, 49407
    return ids
