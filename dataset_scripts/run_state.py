"""Resume state, report and process coordination shared by `reinforce` and `convert_official`.

An output folder keeps one small JSON state file per written part under `.reinforce_state/<split>/`; the report
and the resume point are both derived from those files, so they never disagree with what is on disk. A part is
written in one order, each file atomically (`atomic.py`): its Parquet file, then its state file, so a crash leaves
it either recorded as done or to be redone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import torch.distributed as dist

from modeling_mobileclip.atomic import write_json_atomic
from .dr_format import (REPORT_FILENAME, ReinforcementMetadata, card_split_sizes, shard_filename, write_dataset_card,
                        write_parquet_shard)
from .ownership import record_card


STATE_DIR = ".reinforce_state"
# Why a source row was not written (the report counts samples by these; `official.MISSING_IMAGE` is another).
SKIP_UNDECODABLE = "undecodable_image"
SKIP_EMPTY_CAPTION = "empty_caption"


@dataclass
class UnitProgress:
    """What earlier runs finished in one unit: parts written, source rows consumed, whether it is exhausted."""

    parts_done: int = 0
    rows_done: int = 0
    finished: bool = False


def state_dir(output: Path, split: str) -> Path:
    return output / STATE_DIR / split


def part_state_path(output: Path, split: str, unit: int, part: int) -> Path:
    return state_dir(output, split) / f"{unit:05d}-{part:04d}.json"


def has_part_states(output: Path, split: str) -> bool:
    return any(state_dir(output, split).glob("*.json"))


def skipped_sample(uid: str, unit: int, row: int, reason: str, error: BaseException | None = None) -> dict[str, Any]:
    """A skipped source row as the report lists it; `error`: the exception that made the row unusable."""
    record = {"uid": uid, "unit": unit, "row": row, "reason": reason}
    if error is not None:
        record["error"] = f"{type(error).__name__}: {error}"
    return record


def write_part(output: Path, split: str, metadata: ReinforcementMetadata, unit: int, part: int,
               examples: Sequence[dict[str, Any]], skipped: list[dict[str, Any]], rows: int, unit_finished: bool,
               **facts: Any) -> None:
    """Write one part: its Parquet file (when it kept samples), then its state file (`rows` source rows read,
    what was written and skipped, whether the unit ends here, plus `facts` such as the shard it came from)."""
    if examples:
        write_parquet_shard(examples, metadata, output / shard_filename(split, unit, part))
    write_json_atomic(part_state_path(output, split, unit, part), {
        "unit": unit, "part": part, "rows": rows, "written": len(examples), "skipped": skipped,
        "unit_finished": unit_finished, **facts})


def read_part_states(output: Path, split: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(state_dir(output, split).glob("*.json"))]


def unit_progress(states: list[dict[str, Any]]) -> dict[int, UnitProgress]:
    """Per unit, the contiguous run of finished parts from part 0 (later parts are redone)."""
    by_unit: dict[int, dict[int, dict[str, Any]]] = {}
    for state in states:
        by_unit.setdefault(state["unit"], {})[state["part"]] = state
    progress = {}
    for unit, parts in by_unit.items():
        done = UnitProgress()
        while done.parts_done in parts:
            state = parts[done.parts_done]
            done.rows_done += state["rows"]
            done.finished = state["unit_finished"]
            done.parts_done += 1
        progress[unit] = done
    return progress


def write_report(output: Path, split: str, states: list[dict[str, Any]], num_units: int, extra: dict,
                 write: bool = True) -> dict:
    """Aggregate the part states of a split into `reinforce_report.json` (other splits' entries are kept);
    `write=False` only computes the entry (processes other than the main one must not race on the file)."""
    skipped = [s for state in states for s in state["skipped"]]
    reasons: dict[str, int] = {}
    for item in skipped:
        reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
    finished_units = {s["unit"] for s in states if s["unit_finished"]}
    entry = {
        "complete": len(finished_units) == num_units,
        "units": num_units,
        "units_finished": len(finished_units),
        "source_rows": sum(s["rows"] for s in states),
        "written": sum(s["written"] for s in states),
        "skipped": len(skipped),
        "skipped_by_reason": reasons,
        "skipped_samples": skipped,
        **extra,
    }
    if not write:
        return entry
    path = output / REPORT_FILENAME
    report = json.loads(path.read_text()) if path.exists() else {}
    report[split] = {**report.get(split, {}), **entry}
    write_json_atomic(path, report)
    return entry


def write_split_card(output: Path, split: str, metadata: ReinforcementMetadata, written: int) -> None:
    """The dataset card once a split is complete: its size now, the other splits' as the card recorded them;
    remembered as this run's card (`ownership.record_card`)."""
    split_sizes = card_split_sizes(output)
    split_sizes[split] = written
    record_card(output / STATE_DIR, write_dataset_card(output, metadata, split_sizes))


# ----------------------------------------------------------------------------------------------- process failures


class ProcessFailedError(RuntimeError):
    """Another process of a multi-process run failed; the message names its rank and its error."""


def failure_exchange_group(num_processes: int):
    """A gloo group for the end-of-run status exchange, or None for a single process.

    Its own group, because the default one carries the default timeout (30 min): a process that finishes its units
    hours before the slowest one must wait that long without failing. gloo also serves NCCL runs (the statuses are
    small Python objects) and reports a peer that died (connection closed) instead of waiting for it. Every process
    must call this at the same point of the run.
    """
    if num_processes == 1:
        return None
    return dist.new_group(backend="gloo", timeout=timedelta(days=7))


def raise_on_any_failure(error: BaseException | None, group, process_index: int, num_processes: int) -> None:
    """Every process calls this after its work, failed (`error`) or not, and all of them raise if any failed.

    Without it a process whose DataLoader worker (or teacher, or writer) raised would leave, and the others would
    end "successfully" with an incomplete output or wait for it forever in the next collective. Each process
    contributes its error text to one all-gather, so the others leave the collective they would wait in with the
    failing rank's error; finished parts stay on disk and a rerun resumes.
    """
    if group is None:
        if error is not None:
            raise error
        return
    mine = None if error is None else f"{type(error).__name__}: {error}"
    statuses: list[str | None] = [None] * num_processes
    try:
        dist.all_gather_object(statuses, mine, group=group)
    except Exception as exchange_error:  # a peer died without reaching the exchange (killed, crashed hard)
        if error is not None:
            raise error  # this process's own failure is the one to show
        raise ProcessFailedError(f"[rank {process_index}] another process ended without reporting its status "
                                 f"(killed or crashed; see its log): {exchange_error}") from exchange_error
    failures = [f"rank {rank}: {status}" for rank, status in enumerate(statuses) if status is not None]
    if not failures:
        return
    message = (f"Reinforcement failed in {len(failures)} of {num_processes} processes (finished parts are kept; "
               f"fix the cause and rerun the same command to resume). " + " | ".join(failures))
    if error is not None:
        raise ProcessFailedError(f"[rank {process_index}] " + message) from error
    raise ProcessFailedError(f"[rank {process_index}] " + message)
