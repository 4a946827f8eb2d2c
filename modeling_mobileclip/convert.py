"""Convert official MobileCLIP checkpoints (Apple, open_clip, timm) into a Hugging Face folder.

    python -m modeling_mobileclip.convert --checkpoint apple/MobileCLIP-S0 --output mobileclip-s0-hf
    python -m modeling_mobileclip.convert --checkpoint mobileclip_s0.pt --output mobileclip-s0-hf [--reparameterize]
    python -m modeling_mobileclip.convert --all [FOLDER] --output converted/   # every official checkpoint found
    python -m modeling_mobileclip.convert --checkpoint timm/MobileCLIP2-S4-OpenCLIP --output out \
        --push-to-hub me/MobileCLIP2-S4-hf [--push-reparameterized]

`--checkpoint` is a local file, a folder or a Hub repo id: an official repo (:data:`OFFICIAL_CHECKPOINTS`) resolves
through `huggingface_hub` (the local cache first; `HF_HUB_OFFLINE=1` uses only the cache) to the file that repo
holds. `--source` and `--variant` are detected from the checkpoint's keys and shapes when omitted (architecturally
identical variants, e.g. MobileCLIP-S3 / MobileCLIP2-S3, are told apart by the repo id or Apple's file name, else the
error names the candidates). Every output folder gets a model card (`model_card.build_model_card`).

The output folder holds `config.json` (with `auto_map`), `model.safetensors`, the remote-code files and the processor
files, so `AutoModel.from_pretrained(DIR, trust_remote_code=True)` works anywhere. Sources:

- `apple`: Apple's `mobileclip_*.pt` / `mobileclip2_*.pt` (`image_encoder.model.*`, `text_encoder.*`).
- `open_clip`: `open_clip_model.safetensors` / `open_clip_pytorch_model.bin` (`visual.trunk.*`, `text.*`).
- `timm`: a timm image tower (`apple/mobileclip_*_timm`); the text tower comes from `--text-checkpoint`
  (an Apple or open_clip checkpoint of the same variant).

The image-tower key mappings from Apple's layout are timm's own `checkpoint_filter_fn`s; the text mappings are ours.
"""

from __future__ import annotations

import argparse
import copy
import functools
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_folder
from .configuration_mobileclip import VARIANTS, MobileCLIPConfig
from .model_folder import push_folder, write_model_folder
from .modeling_mobileclip import MobileCLIPModel


SOURCES = ("apple", "open_clip", "timm")

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


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the architecture: names the missing and unexpected keys."""


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a state dict from `.safetensors` or a torch file (`weights_only=True`, never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state_dict = load_file(str(path))
        except SafetensorError as error:  # its message names no file
            raise OSError(f"{path} is truncated or corrupt ({error}): download it again.") from error
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except (EOFError, RuntimeError, pickle.UnpicklingError) as error:  # a cut zip archive / pickle stream / text
            raise OSError(f"{path} is truncated or corrupt, or not a torch checkpoint ({error}).") from error
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state_dict, dict) and wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state_dict).__name__}).")
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


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
    if model.config.vision_config.is_fastvit:
        from timm.models.fastvit import checkpoint_filter_fn
    else:
        from timm.models.vision_transformer_hybrid import checkpoint_filter_fn
    mapped = checkpoint_filter_fn(image_part, backbone)
    return {f"vision_model.backbone.{k}": v for k, v in mapped.items()}


def convert_state_dict(
    state_dict: dict[str, torch.Tensor],
    source: str,
    model: MobileCLIPModel,
    text_state_dict: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Converts a source checkpoint into our key layout (not yet loaded); see the module docstring for sources."""
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


def default_config(variant: str, source: str) -> MobileCLIPConfig:
    """The config of `variant` as `source` built it: open_clip / timm MobileCLIP-B use timm's ViT stem."""
    overrides = {}
    if variant == "mobileclip-b" and source != "apple":
        overrides["vision_config"] = dict(apple_vit_stem=False)
    return MobileCLIPConfig.from_variant(variant, **overrides)


def convert_checkpoint(
    source: str | None,
    variant: str | None,
    checkpoint: str | Path,
    text_checkpoint: str | Path | None = None,
    reparameterize: bool = False,
    config: MobileCLIPConfig | None = None,
    hint: str | None = None,
) -> MobileCLIPModel:
    """Builds `variant`, loads `checkpoint` from `source` strictly and returns the model in eval mode.

    `source` / `variant` None: detected from the checkpoint (:func:`detect_source`, :func:`detect_variant`; `hint`,
    e.g. a repo id or file name, tells architecturally identical variants apart).
    """
    if source is not None and source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; expected one of {SOURCES}.")
    state_dict = load_checkpoint(checkpoint)
    source = source or detect_source(state_dict, str(checkpoint))
    text_state_dict = load_checkpoint(text_checkpoint) if text_checkpoint else None
    if variant is None:
        variant = config.variant if config is not None and config.variant else detect_variant(
            state_dict, source, hint=hint or str(checkpoint), checkpoint=str(checkpoint),
            text_state_dict=text_state_dict if source == "timm" else None)
    config = config or default_config(variant, source)
    model = MobileCLIPModel(config).eval()
    if source == "timm" and text_state_dict is None:
        raise ValueError(
            "--source timm holds only the image tower; pass --text-checkpoint with an Apple or open_clip checkpoint "
            "of the same variant for the text tower."
        )
    load_converted(model, convert_state_dict(state_dict, source, model, text_state_dict), str(checkpoint))
    if reparameterize:
        model.reparameterize()
    return model


# --- source and variant detection -------------------------------------------------------------------------------

_SOURCE_PREFIXES = {
    "apple": ("image_encoder.", "text_encoder."),
    "open_clip": ("visual.trunk.", "text.transformer.", "text.token_embedding."),
    "timm": ("stem.", "stages.", "final_conv.", "patch_embed.backbone.", "patch_embed.proj.", "blocks."),
}
EXPECTED_LAYOUTS = (
    "Apple `mobileclip_*.pt` (keys `image_encoder.model.*`, `text_encoder.*`), open_clip "
    "`open_clip_model.safetensors` (keys `visual.trunk.*`, `text.*`) or a timm image tower `model.safetensors` "
    "(keys `stem.*`/`stages.*`/`final_conv.*` for FastViT, `patch_embed.*`/`blocks.*` for ViT)"
)


def detect_source(state_dict: dict[str, torch.Tensor], checkpoint: str = "checkpoint") -> str:
    """`apple`, `open_clip` or `timm` from the key layout; anything else raises naming the expected layouts."""
    found = [source for source, prefixes in _SOURCE_PREFIXES.items()
             if any(key.startswith(prefixes) for key in state_dict)]
    if not found:
        sample = ", ".join(list(state_dict)[:6]) or "no keys at all"
        raise CheckpointMismatchError(
            f"{checkpoint} is not a MobileCLIP checkpoint: expected {EXPECTED_LAYOUTS}; found keys like {sample}."
        )
    return found[0]


@functools.lru_cache(maxsize=None)
def _meta_model(variant: str, source: str) -> MobileCLIPModel:
    with torch.device("meta"):
        return MobileCLIPModel(default_config(variant, source)).eval()


@functools.lru_cache(maxsize=None)
def _expected_shapes(variant: str, source: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in _meta_model(variant, source).state_dict().items() if k != "logit_scale"}


def _fit_problems(state_dict: dict[str, torch.Tensor], source: str, variant: str,
                  text_state_dict: dict[str, torch.Tensor] | None = None) -> int:
    """How many keys are missing, unexpected or mis-shaped if `state_dict` were `variant` (0 = fits)."""
    expected = _expected_shapes(variant, source)
    if source in ("open_clip", "timm"):  # cheap first: the image tower's keys map one to one
        image_keys = sum(1 for k in state_dict if k.startswith("visual.trunk.") or source == "timm")
        expected_image = sum(1 for k in expected if k.startswith("vision_model.backbone."))
        if image_keys != expected_image:
            return abs(image_keys - expected_image)
    try:
        converted = convert_state_dict(state_dict, source, _meta_model(variant, source), text_state_dict)
    except Exception:  # a filter that cannot even map these keys: no fit
        return len(expected) + len(state_dict)
    converted = {k: tuple(v.shape) for k, v in converted.items() if k != "logit_scale"}
    if source == "timm" and text_state_dict is None:  # an image tower only
        expected = {k: v for k, v in expected.items() if k.startswith("vision_model.")}
    keys = set(expected) | set(converted)
    return sum(1 for k in keys if expected.get(k) != converted.get(k))


_NAME_HINT = re.compile(r"mobileclip(2)?[-_ ]?(s\d|blt|b[-_]lt|b|l[-_]?14)(?![a-z0-9])", re.IGNORECASE)


def variant_from_name(name: str) -> str | None:
    """`mobileclip2_s3.pt`, `apple/MobileCLIP-L-14`, `mobileclip_blt.pt` -> our variant name; None if none."""
    official = OFFICIAL_BY_REPO.get(name.lower())
    if official is not None:
        return official.variant
    matches = _NAME_HINT.findall(Path(name).name) or _NAME_HINT.findall(name)
    if not matches:
        return None
    two, size = matches[-1]
    size = size.lower().replace("_", "-")
    size = {"blt": "b", "b-lt": "b", "l14": "l-14"}.get(size, size)
    variant = f"mobileclip{two}-{size}"
    return variant if variant in VARIANTS else None


def detect_variant(state_dict: dict[str, torch.Tensor], source: str, hint: str | None = None,
                   checkpoint: str = "checkpoint", text_state_dict: dict[str, torch.Tensor] | None = None) -> str:
    """The published variant whose architecture `state_dict` fits (keys and shapes); raises naming the candidates.

    Architecturally identical variants (MobileCLIP-S2 / MobileCLIP2-S2, -B, -S3, -S4, -L-14) all fit: `hint` (a repo
    id or file name such as `mobileclip2_s3.pt`) picks one; without it the error names them.
    """
    problems = {variant: _fit_problems(state_dict, source, variant, text_state_dict) for variant in VARIANTS}
    candidates = [variant for variant, count in problems.items() if count == 0]
    if source == "apple" and len(candidates) > 1:  # Apple's own key layout was released for v1 weights only
        candidates = [c for c in candidates if not c.startswith("mobileclip2")] or candidates
    hinted = variant_from_name(hint) if hint else None
    if len(candidates) == 1:
        return candidates[0]
    if hinted in candidates:
        return hinted
    if not candidates:
        closest = min(problems, key=problems.get)
        raise CheckpointMismatchError(
            f"{checkpoint} ({source} layout) fits no MobileCLIP variant: expected the keys and shapes of one of "
            f"{', '.join(VARIANTS)}; the closest, {closest}, differs in {problems[closest]} keys (convert with "
            f"--variant {closest} to list them)."
        )
    raise CheckpointMismatchError(
        f"{checkpoint} fits several variants with identical architectures: {', '.join(candidates)}. Pass --variant "
        "(or convert by Hub repo id / Apple's file name, which name the variant)."
    )


# --- official checkpoints on the Hub ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OfficialCheckpoint:
    """An official repo: the variant and source format of its weights, the files it holds (first found wins), the
    published results row, and (timm image towers) the repo holding the matching text tower."""

    repo_id: str
    variant: str
    source: str
    filenames: tuple[str, ...]
    row: str
    text_repo: str | None = None


_OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_TIMM_FILES = ("model.safetensors", "pytorch_model.bin")


def _official() -> list[OfficialCheckpoint]:
    rows = []
    # Apple's v1 `.pt` files (names of apple/ml-mobileclip get_pretrained_models.sh; B-LT is `mobileclip_blt.pt`).
    for size, row in (("s0", "MobileCLIP-S0"), ("s1", "MobileCLIP-S1"), ("s2", "MobileCLIP-S2"), ("b", "MobileCLIP-B")):
        rows.append(OfficialCheckpoint(f"apple/MobileCLIP-{size.upper()}", f"mobileclip-{size}", "apple",
                                       (f"mobileclip_{size}.pt",), row))
    rows.append(OfficialCheckpoint("apple/MobileCLIP-B-LT", "mobileclip-b", "apple", ("mobileclip_blt.pt",),
                                   "MobileCLIP-B (LT)"))
    # Released with v2, open_clip-format `.pt` (file names assumed by the v2 pattern `mobileclip2_s0.pt`).
    for size, suffix, row in (("S3", "s3", "MobileCLIP-S3"), ("S4", "s4", "MobileCLIP-S4"),
                              ("L-14", "l14", "MobileCLIP-L/14")):
        rows.append(OfficialCheckpoint(f"apple/MobileCLIP-{size}", f"mobileclip-{size.lower()}", "open_clip",
                                       (f"mobileclip_{suffix}.pt", *_OPEN_CLIP_FILES), row))
    for size, suffix in (("S0", "s0"), ("S2", "s2"), ("B", "b"), ("S3", "s3"), ("S4", "s4"), ("L-14", "l14")):
        variant, row = f"mobileclip2-{size.lower()}", f"MobileCLIP2-{size.replace('L-14', 'L/14')}"
        rows.append(OfficialCheckpoint(f"apple/MobileCLIP2-{size}", variant, "open_clip",
                                       (f"mobileclip2_{suffix}.pt", *_OPEN_CLIP_FILES), row))
        rows.append(OfficialCheckpoint(f"timm/MobileCLIP2-{size}-OpenCLIP", variant, "open_clip", _OPEN_CLIP_FILES,
                                       row))
    for size, row in (("S1", "MobileCLIP-S1"), ("S2", "MobileCLIP-S2"), ("B", "MobileCLIP-B"),
                      ("B-LT", "MobileCLIP-B (LT)")):
        variant = "mobileclip-b" if size == "B-LT" else f"mobileclip-{size.lower()}"
        rows.append(OfficialCheckpoint(f"apple/MobileCLIP-{size}-OpenCLIP", variant, "open_clip", _OPEN_CLIP_FILES,
                                       row))
    # timm image towers; the text tower comes from Apple's repo of the same weights.
    for name, variant, row, text_repo in (
        ("mobileclip_s0_timm", "mobileclip-s0", "MobileCLIP-S0", "apple/MobileCLIP-S0"),
        ("mobileclip_s1_timm", "mobileclip-s1", "MobileCLIP-S1", "apple/MobileCLIP-S1"),
        ("mobileclip_s2_timm", "mobileclip-s2", "MobileCLIP-S2", "apple/MobileCLIP-S2"),
        ("mobileclip_b_timm", "mobileclip-b", "MobileCLIP-B", "apple/MobileCLIP-B"),
        ("mobileclip_b_lt_timm", "mobileclip-b", "MobileCLIP-B (LT)", "apple/MobileCLIP-B-LT"),
    ):
        rows.append(OfficialCheckpoint(f"apple/{name}", variant, "timm", _TIMM_FILES, row, text_repo))
    return rows


OFFICIAL_CHECKPOINTS: tuple[OfficialCheckpoint, ...] = tuple(_official())
OFFICIAL_BY_REPO = {checkpoint.repo_id.lower(): checkpoint for checkpoint in OFFICIAL_CHECKPOINTS}
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def _looks_like_repo_id(spec: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", spec)) and not Path(spec).exists()


def resolve_checkpoint(spec: str | Path, filename: str | None = None) -> tuple[Path, OfficialCheckpoint | None]:
    """A local file, a folder or a Hub repo id -> (local weight file, official repo entry or None).

    Hub ids resolve with `huggingface_hub.hf_hub_download` (cache first; offline with `HF_HUB_OFFLINE=1`).
    """
    spec = str(spec)
    path = Path(spec)
    if path.is_file():
        return path, None
    if path.is_dir():
        names = [filename] if filename else [n for c in OFFICIAL_CHECKPOINTS for n in c.filenames]
        for name in dict.fromkeys(names):
            if (path / name).is_file():
                return path / name, None
        weights = sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
        if len(weights) == 1:
            return weights[0], None
        raise FileNotFoundError(
            f"{path} holds {'no' if not weights else 'several'} checkpoint files "
            f"({', '.join(p.name for p in weights) or 'none with ' + '/'.join(_WEIGHT_SUFFIXES)}): pass the file.")
    if not _looks_like_repo_id(spec):
        raise FileNotFoundError(
            f"Checkpoint not found: {spec} is neither a file, a folder nor a Hub repo id (ORG/NAME).")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    official = OFFICIAL_BY_REPO.get(spec.lower())
    repo_id = official.repo_id if official else spec
    names = (filename,) if filename else (official.filenames if official else (*_OPEN_CLIP_FILES, *_TIMM_FILES))
    failures = []
    for name in names:
        try:
            return Path(hf_hub_download(repo_id, name)), official
        except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError) as error:
            failures.append(f"{name} ({type(error).__name__})")
    known = ", ".join(c.repo_id for c in OFFICIAL_CHECKPOINTS)
    raise FileNotFoundError(
        f"Hub repo {spec} holds no MobileCLIP checkpoint reachable here: tried {', '.join(failures)}. Expected one of "
        f"the official repos ({known}) or a repo with {', '.join(_OPEN_CLIP_FILES + _TIMM_FILES)}; offline, the repo "
        "must be in the Hugging Face cache (HF_HUB_CACHE)."
    )


@dataclass
class Conversion:
    """A converted model with what its card needs."""

    model: MobileCLIPModel
    source: str
    variant: str
    checkpoint: Path
    official: OfficialCheckpoint | None
    source_repo: str | None


def convert(spec: str | Path, source: str | None = None, variant: str | None = None,
            text_checkpoint: str | Path | None = None, filename: str | None = None) -> Conversion:
    """Resolves `spec` (file, folder or Hub id), detects what is not given and converts (train-time form)."""
    path, official = resolve_checkpoint(spec, filename)
    detected = detect_source(load_checkpoint(path), f"{spec} ({path.name})")  # refuses non-MobileCLIP files first
    if official is not None:
        source, variant = source or official.source, variant or official.variant
        if official.text_repo and text_checkpoint is None:
            text_checkpoint = resolve_checkpoint(official.text_repo)[0]
    hint = official.repo_id if official else str(spec)
    if source is not None and source != detected:
        raise CheckpointMismatchError(f"{spec} ({path.name}) has the {detected} key layout, not {source}'s.")
    source = detected
    if source == "timm" and text_checkpoint is not None and not Path(str(text_checkpoint)).is_file():
        text_checkpoint = resolve_checkpoint(text_checkpoint)[0]
    model = convert_checkpoint(source, variant, path, text_checkpoint, hint=hint)
    source_repo = official.repo_id if official else (str(spec) if _looks_like_repo_id(str(spec)) else None)
    return Conversion(model, source, model.config.variant, path, official, source_repo)


def model_card_for(conversion: Conversion, repo_id: str | None = None, reparameterized: bool = False):
    from .model_card import build_model_card

    return build_model_card(
        conversion.variant, repo_id=repo_id, source=conversion.source, source_repo=conversion.source_repo,
        published_row=conversion.official.row if conversion.official else None, reparameterized=reparameterized)


PUSH_MESSAGE = "Upload MobileCLIP converted with modeling_mobileclip.convert"


def write_converted(conversion: Conversion, output: str | Path, repo_id: str | None = None,
                    reparameterize: bool = False, reparameterized_subfolder: bool = False) -> Path:
    """Writes the folder (weights, code, processor, README.md card) atomically: all of it or nothing.

    `reparameterize`: the folder holds the fused form; `reparameterized_subfolder`: the train-time form plus a fused
    copy in `reparameterized/`.
    """
    model = copy.deepcopy(conversion.model).reparameterize() if reparameterize else conversion.model
    with atomic_folder(output) as staging:
        write_model_folder(model, staging, reparameterized_subfolder=reparameterized_subfolder,
                           model_card=lambda fused: model_card_for(conversion, repo_id, reparameterized=fused))
    return Path(output)


def find_official_checkpoints(folder: str | Path | None = None) -> list[tuple[str, str | None]]:
    """(spec, label) of every official checkpoint in the Hugging Face cache (`folder` None: `HF_HUB_CACHE`) or in a
    plain folder (files named like Apple's, or open_clip/timm files in subfolders)."""
    found = []
    folder_path = Path(folder) if folder is not None else None
    if folder_path is not None and not folder_path.is_dir():
        raise FileNotFoundError(f"--all: {folder_path} is not a folder.")
    if folder_path is None or any(folder_path.glob("models--*")):
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound

        try:
            repos = scan_cache_dir(folder_path).repos
        except CacheNotFound as error:
            raise FileNotFoundError(f"--all: no Hugging Face cache at {error.cache_dir}.") from error
        cached = {repo.repo_id.lower() for repo in repos if repo.repo_type == "model"}
        found += [(c.repo_id, c.repo_id.split("/")[-1]) for c in OFFICIAL_CHECKPOINTS
                  if c.repo_id.lower() in cached and (c.text_repo is None or c.text_repo.lower() in cached)]
        return found
    for path in sorted(folder_path.rglob("*")):
        if path.is_file() and path.suffix in _WEIGHT_SUFFIXES:
            name = variant_from_name(path.name) or variant_from_name(path.parent.name)
            if name is not None:
                found.append((str(path), path.parent.name if path.parent != folder_path else path.stem))
    return found


def main(argv: list[str] | None = None) -> Path | list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a file, a folder or a Hub repo id (e.g. apple/MobileCLIP-S0)")
    parser.add_argument("--all", nargs="?", const="", default=None, metavar="FOLDER",
                        help="convert every official checkpoint in FOLDER (default: the Hugging Face cache) into "
                             "OUTPUT/<name>")
    parser.add_argument("--source", default=None, choices=SOURCES, help="detected from the keys when omitted")
    parser.add_argument("--variant", default=None, help="e.g. mobileclip-s0, mobileclip2-s4; detected when omitted")
    parser.add_argument("--filename", default=None, help="the file inside a Hub repo (default: the repo's known file)")
    parser.add_argument("--text-checkpoint", default=None, help="text-tower weights for --source timm (file or repo)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--reparameterize", action="store_true", help="fuse train-time branches before saving")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="upload the folder to this model repo")
    parser.add_argument("--push-reparameterized", action="store_true",
                        help="also write (and push) the fused copy in the subfolder reparameterized/")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.all is None):
        parser.error("pass exactly one of --checkpoint and --all")
    if args.all is not None:
        if args.push_to_hub or args.variant or args.source:
            parser.error("--all converts each checkpoint as its repo or file names it: no --push-to-hub, --variant "
                         "or --source")
        found = find_official_checkpoints(args.all or None)
        if not found:
            raise FileNotFoundError(
                f"--all found no official MobileCLIP checkpoint in {args.all or 'the Hugging Face cache'}; looked for "
                f"the repos {', '.join(c.repo_id for c in OFFICIAL_CHECKPOINTS)} or files named like mobileclip_s0.pt.")
        outputs = []
        for spec, label in found:
            output = Path(args.output) / label
            write_converted(convert(spec), output, reparameterize=args.reparameterize,
                            reparameterized_subfolder=args.push_reparameterized)
            print(f"Converted {spec} -> {output}")
            outputs.append(output)
        return outputs
    conversion = convert(args.checkpoint, args.source, args.variant, args.text_checkpoint, args.filename)
    output = write_converted(conversion, args.output, args.push_to_hub, args.reparameterize, args.push_reparameterized)
    print(f"Wrote {conversion.variant} ({conversion.source}) to {output}")
    if args.push_to_hub:
        print(f"Pushed to {push_folder(output, args.push_to_hub, args.private or None, PUSH_MESSAGE)}")
    return output


if __name__ == "__main__":
    from modeling_mobileclip.cli import run_main

    run_main(main)
