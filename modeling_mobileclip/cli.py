"""How the project's command lines fail: `error: <message>` on stderr and exit status 1, no traceback.

Every `python -m ...` entry point (and `training/train.py` run as a script or under `accelerate launch`) ends with

    if __name__ == "__main__":
        from modeling_mobileclip.cli import run_main

        run_main(main)

`run_main` calls `main(argv)` and turns the errors a user can fix (a bad checkpoint, config key, data folder, export
request, an output folder owned by another run, a missing file...) into one `error: ...` line. `--debug` anywhere
on the command line (before a lone `--`; it is taken out before `main` parses the rest) or `MOBILECLIP_DEBUG=1` in the
environment shows the full traceback instead; `--debug` also sets `MOBILECLIP_DEBUG=1` for the processes the command
starts. argparse's usage errors keep their usage message and exit status 2. Ctrl-C exits with status 130, silently.

User-facing errors (`is_user_error`): `ValueError` (the project's ConfigError, DataValidationError,
OutputOwnershipError, CheckpointMismatchError, ExportInputError, EvaluationInputError, ShardReadError derive from
it, and so do JSON, Arrow and Hub-id errors of bad input), `OSError` (FileNotFoundError, PermissionError, the Hub's
and transformers' "cannot find / load this model" errors), `ImportError` (an optional package to install),
`yaml.YAMLError` (a malformed config file), and any other exception raised by a `raise` statement of the project's own
packages (e.g. ProcessFailedError, the "launched N processes but Accelerate runs each alone" refusal) except
`NotImplementedError`. Anything else (AssertionError, TypeError or RuntimeError from inside torch, ...) is a bug and
keeps its traceback.

Several processes (`accelerate launch`, torchrun: the RANK environment variable): the process of rank 0 prints the
line at once and exits 1. A process of another rank that hits a user-facing error waits `OTHER_RANK_GRACE_S` seconds
before printing: when every process fails on the same input (the usual case: a bad config or data path), rank 0's
exit makes the launcher stop the others during that wait, and the message appears once; when only that rank fails
(its shard, its node's disk), it prints `error: [rank N] <message>` after the wait and exits 1, so the message is not
lost. With `--debug`, every process shows its traceback.

This module is for command lines only: the remote-code files copied next to saved checkpoints never import it, and
it imports nothing from dataset_scripts, evaluation or training.
"""

from __future__ import annotations

import linecache
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEBUG_FLAG = "--debug"
DEBUG_ENV = "MOBILECLIP_DEBUG"
OTHER_RANK_GRACE_S = 10.0
RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
# The folders of the project's packages (siblings of this one): a `raise` in their code is a deliberate message.
PROJECT_PACKAGES = tuple(
    str(Path(__file__).resolve().parent.parent / name) + os.sep
    for name in ("modeling_mobileclip", "dataset_scripts", "evaluation", "training")
)


def debug_enabled() -> bool:
    """`MOBILECLIP_DEBUG` is set to something other than empty, 0, false, no or off."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def split_debug_flag(argv: Sequence[str]) -> tuple[list[str], bool]:
    """`argv` without `--debug` (looked for before a lone `--` only) and whether it was there."""
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    found = DEBUG_FLAG in argv[:end]
    return [arg for i, arg in enumerate(argv) if not (i < end and arg == DEBUG_FLAG)], found


def process_rank() -> int:
    """This process's global rank under a multi-process launcher, 0 when none is set."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def _raised_by_project(error: BaseException) -> bool:
    """The innermost frame of `error`'s traceback is a `raise` statement in one of the project's packages."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = os.path.realpath(tb.tb_frame.f_code.co_filename)
    if not filename.startswith(PROJECT_PACKAGES):
        return False
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise ")


def is_user_error(error: BaseException) -> bool:
    """An error of the input (see the module docstring), to report as one line rather than a traceback."""
    if not isinstance(error, Exception) or isinstance(error, NotImplementedError):
        return False
    if isinstance(error, (ValueError, OSError, ImportError)):
        return True
    yaml = sys.modules.get("yaml")  # only a loaded yaml can have raised its errors: no import here
    if yaml is not None and isinstance(error, getattr(yaml, "YAMLError", ())):
        return True
    return _raised_by_project(error)


def error_message(error: BaseException) -> str:
    """The exception's own text (a KeyError's key without repr quotes); its type name when it has none."""
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        text = error.args[0]
    else:
        text = str(error)
    text = text.strip()
    return text or type(error).__name__


def close_progress_bars() -> None:
    """Closes the live tqdm bars, so that the message starts on its own line and no bar is redrawn after it (a bar
    left open by the exception would be closed, and printed again, when the interpreter exits)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        try:
            bar.close()
        except Exception:  # a half-built bar: nothing to redraw
            pass


def report_error(error: BaseException, rank: int | None = None) -> None:
    """Prints `error: <message>` on stderr for rank 0; see the module docstring for the other ranks."""
    rank = process_rank() if rank is None else rank
    message = error_message(error)
    if rank != 0:
        time.sleep(OTHER_RANK_GRACE_S)  # rank 0 usually fails alike: the launcher stops this process meanwhile
        message = f"[rank {rank}] {message}"
    close_progress_bars()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream must not hide the message
            pass
    print(f"error: {message}", file=sys.stderr, flush=True)


def run_main(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> Any:
    """Runs a command-line `main(argv)` with the project's error handling; returns what `main` returns.

    `argv` defaults to `sys.argv[1:]`. User-facing errors exit with status 1 after one `error: ...` line; other
    exceptions propagate (traceback), as everything does with `--debug` / `MOBILECLIP_DEBUG=1`.
    """
    argv, debug_flag = split_debug_flag(sys.argv[1:] if argv is None else argv)
    if debug_flag:
        os.environ[DEBUG_ENV] = "1"  # and for the processes this command starts
    debug = debug_enabled()
    try:
        return main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        raise SystemExit(130) from None
    except BrokenPipeError:  # `... | head`: the reader left; nothing more to say
        if debug:
            raise
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        except (OSError, ValueError):
            pass
        raise SystemExit(1) from None
    except Exception as error:
        if debug or not is_user_error(error):
            raise
        report_error(error)
        raise SystemExit(1) from None
