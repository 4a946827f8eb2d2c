"""Atomic writes: a file or folder appears complete at its final path, or not at all.

Every writer of the project that a crash must not leave half-done goes through here: the resume state and report of
`reinforce` / `convert_official`, their Parquet parts and dataset card, output-folder ownership records, the
training run guard and checkpoints. The protocol is one: write under a temporary name *in the same folder* (so the
final `os.replace` is a rename within one file system, which POSIX makes atomic), then rename.

Temporary names end in `.tmp` (`part.json.tmp`, `step_10.tmp/`), and scratch folders start with `.tmp-`: a crash
leaves only names that readers skip (state files are globbed as `*.json`) and that :data:`TEMPORARY_PATTERNS`
keeps out of Hub uploads.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator


TEMPORARY_SUFFIX = ".tmp"
SCRATCH_PREFIX = ".tmp-"
TEMPORARY_PATTERNS = (f"**/{SCRATCH_PREFIX}*", f"*{TEMPORARY_SUFFIX}")
"""Upload ignore patterns (`huggingface_hub` `ignore_patterns`) matching what an interrupted write leaves behind."""


def temporary_path(path: str | os.PathLike) -> Path:
    """The name `path` is written under before it is renamed into place."""
    path = Path(path)
    return path.with_name(path.name + TEMPORARY_SUFFIX)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path for a writer that wants a file name (Parquet, a model card, a figure); the file
    written there becomes `path` when the block ends without error, and is removed otherwise.

    The temporary name ends in `.tmp`: writers that infer the format from the suffix must be told it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = temporary_path(path)
    try:
        yield staged
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    os.replace(staged, path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as staged:
        staged.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, payload: Any, indent: int = 1) -> None:
    write_text_atomic(path, json.dumps(payload, indent=indent))


def staging_folder(path: str | os.PathLike) -> Path:
    """An empty folder next to `path` to build its new content in (a leftover of an interrupted build is
    cleared); :func:`publish_folder` then puts it in place. Two calls, not one context, because a multi-process
    writer (checkpoints) creates the folder on one process, lets every process write into it, and publishes it
    from one process again after a barrier."""
    staging = temporary_path(path)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish_folder(staging: Path, path: str | os.PathLike) -> None:
    """Replace `path` (if any) by the finished `staging` folder. Readers never see a partly written folder at
    `path`; a crash between the removal and the rename leaves the complete staging folder and no `path`."""
    shutil.rmtree(path, ignore_errors=True)
    os.replace(staging, path)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Single-process form of :func:`staging_folder` + :func:`publish_folder`: fill the yielded folder, and it
    replaces `path` when the block ends without error."""
    staging = staging_folder(path)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_folder(staging, path)


__all__ = [
    "SCRATCH_PREFIX",
    "TEMPORARY_PATTERNS",
    "TEMPORARY_SUFFIX",
    "atomic_folder",
    "atomic_path",
    "publish_folder",
    "staging_folder",
    "temporary_path",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
