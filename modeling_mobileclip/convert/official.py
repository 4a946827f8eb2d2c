"""The official MobileCLIP checkpoints (:data:`OFFICIAL_CHECKPOINTS`), how a checkpoint's source and variant are
detected from its keys and shapes, and how a file, folder or Hub repo id resolves to a local weight file.

Architecturally identical variants (e.g. MobileCLIP-S3 / MobileCLIP2-S3) are told apart by the repo id or Apple's file
name, else the error names the candidates. Hub ids resolve through `huggingface_hub` (the local cache first;
`HF_HUB_OFFLINE=1` uses only the cache).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_download, scan_cache_dir
from huggingface_hub.errors import CacheNotFound, EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

from ..configuration_mobileclip import VARIANTS
from ..modeling_mobileclip import MobileCLIPModel
from .checkpoint import CheckpointMismatchError, default_config
from .key_maps import convert_state_dict


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


def looks_like_repo_id(spec: str) -> bool:
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
    if not looks_like_repo_id(spec):
        raise FileNotFoundError(
            f"Checkpoint not found: {spec} is neither a file, a folder nor a Hub repo id (ORG/NAME).")
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


def find_official_checkpoints(folder: str | Path | None = None) -> list[tuple[str, str | None]]:
    """(spec, label) of every official checkpoint in the Hugging Face cache (`folder` None: `HF_HUB_CACHE`) or in a
    plain folder (files named like Apple's, or open_clip/timm files in subfolders)."""
    found = []
    folder_path = Path(folder) if folder is not None else None
    if folder_path is not None and not folder_path.is_dir():
        raise FileNotFoundError(f"--all: {folder_path} is not a folder.")
    if folder_path is None or any(folder_path.glob("models--*")):
        try:
            # scan_cache_dir's own default is the cache path at its import time, not the current one.
            repos = scan_cache_dir(folder_path or hub_constants.HF_HUB_CACHE).repos
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
