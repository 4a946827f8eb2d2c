"""Conversion end to end: a checkpoint (file, folder or Hub id) -> a strictly loaded `MobileCLIPModel` -> a model
folder with its card, written atomically (all of it or nothing)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_folder
from ..configuration_mobileclip import MobileCLIPConfig
from ..model_card import build_model_card
from ..model_folder import write_model_folder
from ..modeling_mobileclip import MobileCLIPModel
from ..output_guard import guard_output_folder
from .checkpoint import SOURCES, CheckpointMismatchError, default_config, load_checkpoint
from .key_maps import convert_state_dict, load_converted
from .official import OfficialCheckpoint, detect_source, detect_variant, looks_like_repo_id, resolve_checkpoint


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
    source_repo = official.repo_id if official else (str(spec) if looks_like_repo_id(str(spec)) else None)
    return Conversion(model, source, model.config.variant, path, official, source_repo)


def model_card_for(conversion: Conversion, repo_id: str | None = None, reparameterized: bool = False):
    return build_model_card(
        conversion.variant, repo_id=repo_id, source=conversion.source, source_repo=conversion.source_repo,
        published_row=conversion.official.row if conversion.official else None, reparameterized=reparameterized)


PUSH_MESSAGE = "Upload MobileCLIP converted with modeling_mobileclip.convert"


def earlier_conversion_conflicts(output: Path) -> list[str]:
    """Why `output` may not be replaced by a conversion (empty: it is free, or an earlier MobileCLIP folder)."""
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return []
    config = output / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("model_type") == MobileCLIPConfig.model_type:
        return []
    return ["it exists and is not a MobileCLIP folder (no config.json of model_type 'mobileclip')"]


def write_converted(conversion: Conversion, output: str | Path, repo_id: str | None = None,
                    reparameterize: bool = False, reparameterized_subfolder: bool = False,
                    overwrite: bool = False) -> Path:
    """Writes the folder (weights, code, processor, README.md card) atomically: all of it or nothing. An `output` that
    holds anything but an earlier MobileCLIP folder is refused unless `overwrite` (the project's output-folder guard).

    `reparameterize`: the folder holds the fused form; `reparameterized_subfolder`: the train-time form plus a fused
    copy in `reparameterized/`.
    """
    guard_output_folder(Path(output), earlier_conversion_conflicts(Path(output)), overwrite=overwrite,
                        how_to_proceed="Choose a new --output, remove it, or pass --overwrite to replace it.",
                        error=lambda message: ValueError(f"--output {message}"))
    model = copy.deepcopy(conversion.model).reparameterize() if reparameterize else conversion.model
    with atomic_folder(output) as staging:
        write_model_folder(model, staging, reparameterized_subfolder=reparameterized_subfolder,
                           model_card=lambda fused: model_card_for(conversion, repo_id, reparameterized=fused))
    return Path(output)
