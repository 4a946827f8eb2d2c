"""The one upload of a finished folder to the Hub: reinforced datasets (`reinforce`, `convert_official`), trained
models (`training.hub`, through `training/train.py`'s `push_to_hub`) and converted official checkpoints
(`python -m modeling_mobileclip.convert --push-to-hub`). `MobileCLIPModel.push_to_hub` makes the same two calls
(`HfApi.create_repo`, `HfApi.upload_folder`) from the model's remote code, which cannot import this package.
"""

from __future__ import annotations

import os

from .atomic import TEMPORARY_PATTERNS
from .run_state import STATE_DIR


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool | None = None,
                commit_message: str | None = None, *, repo_type: str = "model",
                ignore_patterns: list[str] | None = None) -> str:
    """Create `repo_id` if needed and upload `folder` (subfolders included, less `ignore_patterns`); return the
    commit URL.

    `private=None` leaves a new repo's visibility to the Hub's default (the owner organization's setting);
    `create_repo` ignores it for a repo that exists.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=str(folder),
                               commit_message=commit_message, ignore_patterns=ignore_patterns)
    return str(getattr(commit, "commit_url", commit))


def push_reinforced_dataset(output: str | os.PathLike, repo_id: str) -> str:
    """Upload a reinforced dataset folder (data, card, report) to a Hub dataset repo; its resume state and what an
    interrupted write left behind stay local."""
    return push_folder(output, repo_id, repo_type="dataset", ignore_patterns=[f"{STATE_DIR}/**", *TEMPORARY_PATTERNS],
                       commit_message="Upload reinforced dataset (DataCompDR format)")


__all__ = ["push_folder", "push_reinforced_dataset"]
