"""Source key layouts -> ours: Apple's and open_clip's text towers (our rules), the image towers (timm's own
`checkpoint_filter_fn`s), and the strict load that names every missing, unexpected or mis-shaped key.

Sources: `apple` (Apple's `mobileclip_*.pt`: `image_encoder.model.*`, `text_encoder.*`), `open_clip`
(`visual.trunk.*`, `text.*`) and `timm` (an image tower only; its text tower comes from a second checkpoint).
"""

from __future__ import annotations

import re

import torch
from timm.models.fastvit import checkpoint_filter_fn as fastvit_filter
from timm.models.vision_transformer_hybrid import checkpoint_filter_fn as hybrid_vit_filter

from ..modeling_mobileclip import MobileCLIPModel
from .checkpoint import SOURCES, CheckpointMismatchError


# Apple text-tower key fragments -> ours, applied in order on the part after `text_encoder.transformer.{i}.`.
_APPLE_TEXT_LAYER_RULES = [
    (r"^pre_norm_mha\.0\.", "layer_norm1."),
    (r"^pre_norm_mha\.1\.qkv_proj\.", "self_attn.qkv_proj."),
    (r"^pre_norm_mha\.1\.out_proj\.", "self_attn.out_proj."),
    (r"^pre_norm_ffn\.0\.", "layer_norm2."),
    (r"^pre_norm_ffn\.1\.", "mlp.fc1."),
    (r"^pre_norm_ffn\.4\.", "mlp.fc2."),
    # MCt RepMixer blocks (MobileCLIP-S0 text layers 0 and 5)
    (r"^token_mixer\.norm\.rbr_skip\.", "token_mixer.norm_skip."),
    (r"^token_mixer\.mixer\.rbr_skip\.", "token_mixer.mixer_skip."),
    (r"^token_mixer\.mixer\.rbr_conv\.0\.conv\.", "token_mixer.mixer_conv."),
    (r"^token_mixer\.mixer\.rbr_conv\.0\.bn\.", "token_mixer.mixer_conv_bn."),
    (r"^convffn\.conv\.conv\.", "conv_ffn.dw_conv."),
    (r"^convffn\.conv\.bn\.", "conv_ffn.dw_bn."),
    (r"^convffn\.fc([12])\.", r"conv_ffn.fc\1."),
]

_OPEN_CLIP_TEXT_LAYER_RULES = [
    (r"^ln_1\.", "layer_norm1."),
    (r"^attn\.in_proj_weight$", "self_attn.qkv_proj.weight"),
    (r"^attn\.in_proj_bias$", "self_attn.qkv_proj.bias"),
    (r"^attn\.out_proj\.", "self_attn.out_proj."),
    (r"^ln_2\.", "layer_norm2."),
    (r"^mlp\.c_fc\.", "mlp.fc1."),
    (r"^mlp\.c_proj\.", "mlp.fc2."),
]


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    return key


def convert_apple_text(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps Apple's `text_encoder.*` keys (Base and MCt) onto ours; 4-D (1, k) conv kernels become 1-D."""
    converted = {}
    for key, value in state_dict.items():
        if not key.startswith("text_encoder."):
            continue
        key = key.removeprefix("text_encoder.")
        if key == "embedding_layer.weight":
            converted["text_model.token_embedding.weight"] = value
        elif key == "positional_embedding.pos_embed.pos_embed":
            converted["text_model.position_embedding"] = value.reshape(value.shape[-2], value.shape[-1])
        elif key == "projection_layer":
            converted["text_projection.weight"] = value.t().contiguous()
        elif key.startswith("final_layer_norm."):
            converted[f"text_model.{key}"] = value
        elif match := re.match(r"^transformer\.(\d+)\.(.*)$", key):
            index, rest = match.groups()
            rest = _rename(rest, _APPLE_TEXT_LAYER_RULES)
            if re.match(r"^conv_ffn\.fc[12]\.weight$", rest):  # 1x1 conv (C_out, C_in, 1, 1) -> Linear
                value = value.reshape(value.shape[0], -1)
            elif value.dim() == 4 and value.shape[2] == 1:  # (C, C_in, 1, k) conv over (1, L) -> Conv1d (C, C_in, k)
                value = value.squeeze(2)
            elif rest == "layer_scale":  # block scale (C, 1, 1), applied over (batch, length, C) -> (C,)
                value = value.reshape(-1)
            elif rest.endswith("layer_scale") and value.dim() == 3:  # token-mixer scale (C, 1, 1) -> (C, 1)
                value = value.reshape(-1, 1)
            converted[f"text_model.layers.{index}.{rest}"] = value
        else:
            converted[f"text_model.{key}"] = value  # left unmapped on purpose: strict loading names it
    return converted


def convert_open_clip_text(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps open_clip's `text.*` (CustomTextCLIP TextTransformer) keys onto ours."""
    converted = {}
    for key, value in state_dict.items():
        if not key.startswith("text."):
            continue
        key = key.removeprefix("text.")
        if key == "attn_mask":
            continue  # a causal-mask buffer, rebuilt from the config
        if key == "token_embedding.weight":
            converted["text_model.token_embedding.weight"] = value
        elif key == "positional_embedding":
            converted["text_model.position_embedding"] = value
        elif key == "text_projection":
            converted["text_projection.weight"] = value.t().contiguous()
        elif key == "text_projection.weight":  # nn.Linear projection variant
            converted["text_projection.weight"] = value
        elif key.startswith("ln_final."):
            converted[f"text_model.final_layer_norm.{key.removeprefix('ln_final.')}"] = value
        elif match := re.match(r"^transformer\.resblocks\.(\d+)\.(.*)$", key):
            index, rest = match.groups()
            converted[f"text_model.layers.{index}.{_rename(rest, _OPEN_CLIP_TEXT_LAYER_RULES)}"] = value
        else:
            converted[f"text_model.{key}"] = value
    return converted


def convert_apple_image(state_dict: dict[str, torch.Tensor], model: MobileCLIPModel) -> dict[str, torch.Tensor]:
    """Maps Apple's `image_encoder.model.*` keys onto the timm backbone with timm's own filters."""
    image_part = {k: v for k, v in state_dict.items() if k.startswith("image_encoder.")}
    if any("reparam_conv" in k or "lkb_reparam" in k for k in image_part):
        raise CheckpointMismatchError(
            "This Apple checkpoint is already reparameterized (keys with 'reparam_conv'/'lkb_reparam'); convert the "
            "released train-time checkpoint and pass --reparameterize instead."
        )
    backbone = model.vision_model.backbone
    checkpoint_filter_fn = fastvit_filter if model.config.vision_config.is_fastvit else hybrid_vit_filter
    mapped = checkpoint_filter_fn(image_part, backbone)
    return {f"vision_model.backbone.{k}": v for k, v in mapped.items()}


def convert_state_dict(
    state_dict: dict[str, torch.Tensor],
    source: str,
    model: MobileCLIPModel,
    text_state_dict: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Converts a source checkpoint into our key layout (not yet loaded); see the module docstring for the sources."""
    if source == "apple":
        converted = {**convert_apple_image(state_dict, model), **convert_apple_text(state_dict)}
        if "logit_scale" in state_dict:
            converted["logit_scale"] = state_dict["logit_scale"].reshape(())
        return converted
    if source == "open_clip":
        converted = {
            f"vision_model.backbone.{k.removeprefix('visual.trunk.')}": v
            for k, v in state_dict.items()
            if k.startswith("visual.trunk.")
        }
        converted.update(convert_open_clip_text(state_dict))
        if "logit_scale" in state_dict:
            converted["logit_scale"] = state_dict["logit_scale"].reshape(())
        unknown = [k for k in state_dict if not k.startswith(("visual.trunk.", "text.", "logit_scale"))]
        converted.update({f"<unmapped open_clip key>{k}": state_dict[k] for k in unknown})
        return converted
    if source == "timm":
        converted = {f"vision_model.backbone.{k}": v for k, v in state_dict.items()}
        if text_state_dict is not None:
            text_source = "apple" if any(k.startswith("text_encoder.") for k in text_state_dict) else "open_clip"
            text_converted = convert_state_dict(text_state_dict, text_source, model)
            converted.update({k: v for k, v in text_converted.items() if not k.startswith("vision_model.")})
        return converted
    raise ValueError(f"Unknown source {source!r}; expected one of {SOURCES}.")


def load_converted(model: MobileCLIPModel, converted: dict[str, torch.Tensor], checkpoint: str = "checkpoint") -> None:
    """Loads strictly; any missing, unexpected or mis-shaped key raises :class:`CheckpointMismatchError`."""
    expected = model.state_dict()
    # A fixed logit scale is a legitimate omission (timm image towers carry none): keep the model's init.
    if "logit_scale" not in converted:
        converted["logit_scale"] = expected["logit_scale"]
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(converted))
        if converted[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        def show(keys):
            return ", ".join(keys[:25]) + (f" ... (+{len(keys) - 25} more)" if len(keys) > 25 else "")

        parts = [f"{checkpoint} does not match {model.config.variant or 'the configured'} architecture:"]
        if missing:
            parts.append(f"{len(missing)} missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {show(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches: {show(mismatched)}")
        raise CheckpointMismatchError("\n".join(parts))
    model.load_state_dict(converted, strict=True)
