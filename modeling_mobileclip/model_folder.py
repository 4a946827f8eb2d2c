"""The one way a MobileCLIP model folder is written and pushed: weights + config (auto_map) + remote code, the
processor's files, a README.md model card and, on request, the reparameterized (fused) copy in
:data:`REPARAMETERIZED_SUBFOLDER`.

Used by `MobileCLIPModel.push_to_hub`, `modeling_mobileclip.convert`, `training.hub` (trained models) and
`dataset_scripts.hub_push` (reinforced datasets go through :func:`push_folder`). This file is also copied into saved
folders as remote code (reached from `modeling_mobileclip.py`), so it imports only the standard library, third-party
packages and its sibling files.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable

REPARAMETERIZED_SUBFOLDER = "reparameterized"
"""Where a folder keeps its fused copy (one forward branch per block, the form to deploy)."""


def write_model_folder(model, folder: str | os.PathLike, processor=None,
                       model_card: Callable[[bool], Any] | None = None, reparameterized_subfolder: bool = False,
                       max_shard_size: int | str | None = None) -> Path:
    """Writes `model` and `processor` (default: the processor of the config's variant, at its text context length)
    into `folder`.

    `model_card(reparameterized)` returns the card (a `huggingface_hub.ModelCard`) of each form written;
    `reparameterized_subfolder` adds the fused copy in `REPARAMETERIZED_SUBFOLDER/` (nothing to add when `model` is
    already fused).
    """
    from .processing_mobileclip import MobileCLIPProcessor

    folder = Path(folder)
    if processor is None:
        if not model.config.variant:
            raise ValueError("The model config names no variant, so its processor is unknown: pass processor=.")
        processor = MobileCLIPProcessor.from_model_config(model.config)
    forms = [(folder, model, bool(model.config.vision_config.reparameterized))]
    if reparameterized_subfolder and not model.config.vision_config.reparameterized:
        forms.append((folder / REPARAMETERIZED_SUBFOLDER, copy.deepcopy(model).eval().reparameterize(), True))
    for target, form, fused in forms:
        form.save_pretrained(target, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
        processor.save_pretrained(target)
        if model_card is not None:
            model_card(fused).save(target / "README.md")
    return folder


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool | None = None,
                commit_message: str | None = None, *, repo_type: str = "model",
                ignore_patterns: list[str] | None = None, token: str | None = None, revision: str | None = None,
                create_pr: bool = False):
    """Creates `repo_id` if needed and uploads `folder` (subfolders included, less `ignore_patterns`) in one commit;
    returns `upload_folder`'s `CommitInfo` (a `str`: the commit URL).

    `private=None` leaves a new repo's visibility to the Hub's default (the owner organization's setting);
    `create_repo` ignores it for a repo that exists.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=str(folder),
                             commit_message=commit_message, ignore_patterns=ignore_patterns, revision=revision,
                             create_pr=create_pr)


__all__ = ["REPARAMETERIZED_SUBFOLDER", "push_folder", "write_model_folder"]
