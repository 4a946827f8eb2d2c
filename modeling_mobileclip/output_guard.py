"""The one output-folder guard: a job writes only into a folder that is empty, or that holds this same job's output.

Reinforcement, conversion, training and export all follow it, each with its own idea of "the same job" (the caller
compares its fingerprint and passes the reasons it found):

1. every process checks, read-only, and reaches the same verdict from the same files;
2. a folder that holds something else is refused, naming why and how to proceed, unless `overwrite`: then the main
   process says what it removes and removes it;
3. all processes meet at `barrier`, so none is still checking while the folder is cleared or recorded;
4. the main process records this job's fingerprint (`record`), which the next run compares against.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterable


class OutputFolderError(ValueError):
    """The output folder holds something this job did not write; the message says what and how to proceed."""


def folder_entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def remove_paths(paths: Iterable[Path]) -> None:
    for path in paths:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def guard_output_folder(folder: Path, reasons: list[str], *, overwrite: bool, how_to_proceed: str,
                        remove: Iterable[Path] | None = None, record: Callable[[], None] | None = None,
                        is_main: bool = True, barrier: Callable[[], None] = lambda: None,
                        log: Callable[[str], None] = print, flag: str = "--overwrite",
                        error: Callable[[str], Exception] = OutputFolderError) -> None:
    """Refuse (raise `error`) or, with `overwrite`, clear `folder` when `reasons` say it is not this job's; then
    wait for every process and record this job's ownership.

    `remove`: what overwriting removes (default: everything in the folder); `how_to_proceed` ends the refusal;
    `flag` names the overwrite option in the log line.
    """
    if reasons and not overwrite:
        raise error(f"{folder}: " + "; ".join(reasons) + f". {how_to_proceed}")
    if reasons and is_main:
        removed = list(remove) if remove is not None else folder_entries(folder)
        log(f"{flag}: removing {', '.join(str(p.relative_to(folder)) for p in removed)} from {folder} "
            f"({'; '.join(reasons)}).")
        remove_paths(removed)
    barrier()
    if is_main and record is not None:
        record()


__all__ = ["OutputFolderError", "folder_entries", "guard_output_folder", "remove_paths"]
