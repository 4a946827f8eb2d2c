"""The push of a reinforced dataset (`reinforce`, `convert_official` with `--push-to-hub`) through the project's one
upload, `modeling_mobileclip.model_folder.push_folder`."""

from __future__ import annotations

import os

from modeling_mobileclip.atomic import TEMPORARY_PATTERNS
from modeling_mobileclip.model_folder import push_folder

from .run_state import STATE_DIR


def push_reinforced_dataset(output: str | os.PathLike, repo_id: str):
    """Upload a reinforced dataset folder (data, card, report) to a Hub dataset repo; its resume state and what an
    interrupted write left behind stay local."""
    return push_folder(output, repo_id, repo_type="dataset", ignore_patterns=[f"{STATE_DIR}/**", *TEMPORARY_PATTERNS],
                       commit_message="Upload reinforced dataset (DataCompDR format)")


__all__ = ["push_reinforced_dataset"]
