"""Who owns a reinforcement output folder, and duplicated uids in a source.

A reinforced output folder is written part by part over many (possibly interrupted) runs, so a rerun must know
whether the folder holds *its own* run before it appends to it. `.reinforce_state/` records:

    metadata.json      the reinforcement settings (teachers, N, K, augmentation, captioner, seed, shard size)
    fingerprint.json   per split, what was read: source path/id (absolute for local paths), configuration,
                       split expression, streaming or not, row count and local file sizes where cheap, and
                       the columns used; plus the sha256 of the dataset card this run wrote

`claim_output` compares a new run against them and refuses (unless `--overwrite`) to write into a folder that
holds another run (other settings, another source for the split) or files no run of ours wrote (a dataset pulled
from the Hub, an own README.md, ...). With `--overwrite` it says what it removes and removes it; a folder holding
this same run is resumed either way, so a command with `--overwrite` can still be rerun after a crash.
`convert_official` claims its output folders the same way (its source: the shards and the sample-selection options).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections import Counter
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq

from modeling_mobileclip.atomic import write_json_atomic
from modeling_mobileclip.output_guard import guard_output_folder
from .dataset_specs import split_name
from .dr_format import CARD_FILENAME, DATA_DIR, REPORT_FILENAME, ReinforcementMetadata, load_reinforcement_metadata
from .reinforce_config import ReinforceConfig


FINGERPRINT_FILE = "fingerprint.json"
METADATA_FILE = "metadata.json"
SHOWN = 10  # paths / uids named in one message; the rest are counted


class OutputOwnershipError(ValueError):
    """The output folder holds another run or foreign files; the message says what and how to proceed."""


def source_identity(config: ReinforceConfig, rows: int | None, units: int, uid_column: str | None,
                    syn_column: str | None, source_columns: list[str]) -> dict[str, Any]:
    """What a run reads for one split. Local paths are made absolute (a rerun from another working directory is
    the same source); local files matched by a file or glob source are listed with their sizes (cheap, and a
    regenerated source of another length shows up). Folders and Hub ids are identified by id, configuration, row
    count (before --drop-duplicate-uids) and columns only: listing every file of an image folder is not cheap.
    Streaming and the unit count are part of it because they fix how the work is cut into parts."""
    source = config.source
    local = os.path.exists(source) or bool(glob.glob(source))
    files = None
    if local and not os.path.isdir(source):
        files = [[os.path.abspath(p), os.path.getsize(p)] for p in sorted(glob.glob(source)) if os.path.isfile(p)]
    return {
        "source": os.path.abspath(source) if local else source,
        "source_config": config.source_config,
        "split": config.split,
        "streaming": bool(config.streaming),
        "rows": rows,
        "units": units,
        "files": files,
        "columns": {"image": config.image_column, "caption": config.caption_column, "uid": uid_column,
                    "synthetic": syn_column},
        "source_columns": sorted(source_columns),
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _listing(paths: list[str]) -> str:
    shown = ", ".join(paths[:SHOWN])
    return shown + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def _files_under(output: Path) -> list[str]:
    return sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _is_reinforced_card(path: Path) -> bool:
    try:
        load_reinforcement_metadata(path.parent)
        return True
    except Exception:  # unreadable or without our metadata block: not a card this pipeline wrote
        return False


def _identity_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(recorded) | set(current))
    return [f"{k}: existing {recorded.get(k)!r}, requested {current.get(k)!r}" for k in keys
            if recorded.get(k) != current.get(k)]


def ownership_conflicts(output: Path, state_root: Path, split: str, identity: dict[str, Any],
                        metadata: ReinforcementMetadata, has_part_states: bool) -> tuple[list[str], bool]:
    """(reasons the folder is not this run's, whether only the card is affected). Reads only."""
    if not output.exists():
        return [], False
    existing_metadata = _read_json(state_root / METADATA_FILE)
    if existing_metadata is None:
        files = _files_under(output)
        if not files:
            return [], False
        return [f"it holds {len(files)} file(s) that no reinforcement run wrote (no {state_root.name}/"
                f"{METADATA_FILE}): {_listing(files)}"], False
    reasons = []
    mismatches = metadata.resume_mismatches(ReinforcementMetadata.from_dict(existing_metadata))
    if mismatches:
        reasons.append("it was reinforced with other settings: " + "; ".join(mismatches))
    fingerprint = _read_json(state_root / FINGERPRINT_FILE) or {}
    recorded = (fingerprint.get("splits") or {}).get(split)
    if recorded is not None:
        differences = _identity_differences(recorded, identity)
        if differences:
            reasons.append(f"its split {split!r} was reinforced from another source: " + "; ".join(differences))
    elif has_part_states:
        # Written before fingerprints existed: the settings record names the source and split it started with.
        # Only comparable when that record is about this split (it names the first split reinforced).
        legacy, requested = existing_metadata.get("source"), metadata.source
        legacy_split = split_name(str(legacy).rsplit(" (", 1)[-1].rstrip(")")) if legacy else None
        if legacy_split == split and requested and legacy != requested:
            reasons.append(f"its split {split!r} was reinforced from {legacy!r}, not {requested!r}")
    if reasons:
        return reasons, False
    card = output / CARD_FILENAME
    if card.is_file():
        written = fingerprint.get("card_sha256")
        if (written is not None and written != _sha256(card)) or (written is None and not _is_reinforced_card(card)):
            return [f"its {CARD_FILENAME} is not the dataset card this run wrote (edited or someone else's)"], True
    return [], False


def claim_output(output: Path, state_root: Path, split: str, identity: dict[str, Any],
                 metadata: ReinforcementMetadata, overwrite: bool, is_main: bool, has_part_states: bool,
                 barrier: Callable[[], None] = lambda: None, log: Callable[[str], None] = print) -> None:
    """Refuse, or (with `overwrite`) clear, an output folder that is not this run's; record this run's ownership,
    through the project's one output-folder guard. The barrier before recording matters here: a check that saw
    `metadata.json.tmp` mid-write took it for a foreign file and refused the run."""
    reasons, card_only = ownership_conflicts(output, state_root, split, identity, metadata, has_part_states)

    def record() -> None:
        if not (state_root / METADATA_FILE).is_file():
            write_json_atomic(state_root / METADATA_FILE, metadata.to_dict())
        record_split(state_root, split, identity)

    guard_output_folder(
        output, reasons, overwrite=overwrite, is_main=is_main, barrier=barrier, log=log, record=record,
        how_to_proceed="Use a new --output, rerun with the settings and source that made it, or pass --overwrite to "
                       "replace " + (f"its {CARD_FILENAME}." if card_only else "its contents."),
        remove=[output / CARD_FILENAME] if card_only else None,
        error=lambda message: OutputOwnershipError(f"Refusing to write into {message}"))


def code_version() -> str:
    """`mobileclip-hf <version>`: recorded with every fingerprint, not compared (a fixed release may resume a run)."""
    try:
        return f"mobileclip-hf {package_metadata.version('mobileclip-hf')}"
    except package_metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "mobileclip-hf (not installed)"


def record_split(state_root: Path, split: str, identity: dict[str, Any]) -> None:
    fingerprint = _read_json(state_root / FINGERPRINT_FILE) or {}
    if (fingerprint.get("splits") or {}).get(split) != identity or "code_versions" not in fingerprint:
        fingerprint.setdefault("splits", {})[split] = identity
        versions = fingerprint.setdefault("code_versions", [])
        if code_version() not in versions:
            versions.append(code_version())
        write_json_atomic(state_root / FINGERPRINT_FILE, fingerprint)


def record_card(state_root: Path, card: Path) -> None:
    """Remember the card this run wrote, so a later run can tell it from a README.md someone else put there."""
    fingerprint = _read_json(state_root / FINGERPRINT_FILE) or {}
    fingerprint["card_sha256"] = _sha256(card)
    write_json_atomic(state_root / FINGERPRINT_FILE, fingerprint)


# ----------------------------------------------------------------------------------------------- duplicated uids


def duplicated_uids(uids: list[Any]) -> dict[str, list[int]]:
    """uid -> the rows holding it, for every uid held by more than one row (None uids are generated: skipped)."""
    counts = Counter(str(u) for u in uids if u is not None)
    repeated = {u for u, n in counts.items() if n > 1}
    rows: dict[str, list[int]] = {}
    for row, uid in enumerate(uids):
        if uid is not None and str(uid) in repeated:
            rows.setdefault(str(uid), []).append(row)
    return rows


def describe_duplicates(duplicates: dict[str, list[int]]) -> str:
    items = [f"{uid!r} (rows {', '.join(map(str, rows[:5]))}{', ...' if len(rows) > 5 else ''})"
             for uid, rows in list(duplicates.items())[:SHOWN]]
    more = f" and {len(duplicates) - SHOWN} more uids" if len(duplicates) > SHOWN else ""
    return ", ".join(items) + more


def rows_to_keep(num_rows: int, duplicates: dict[str, list[int]]) -> tuple[list[int], list[dict[str, Any]]]:
    """All rows but the repeats of a duplicated uid (its first row is kept); and what was dropped."""
    dropped = [{"uid": uid, "row": row} for uid, rows in duplicates.items() for row in rows[1:]]
    drop = {item["row"] for item in dropped}
    return [row for row in range(num_rows) if row not in drop], sorted(dropped, key=lambda item: item["row"])


def without_duplicate_uids(source, uid_column: str, source_name: str, split: str, drop: bool):
    """(source, dropped rows): the source unchanged when its uids are unique; else an error naming them, or (with
    `drop`, --drop-duplicate-uids) the source without the later rows of each duplicated uid."""
    duplicates = duplicated_uids(source.select_columns([uid_column]).with_format("arrow")[uid_column].to_pylist())
    if not duplicates:
        return source, []
    if not drop:
        raise ValueError(f"Source {source_name!r} split {split!r}: {len(duplicates)} uid(s) in column {uid_column!r} "
                         f"occur on several rows: {describe_duplicates(duplicates)}. Each row needs its own uid (it "
                         "keys the stored augmentations and every later lookup); deduplicate the source, pick another "
                         "--uid-column, or pass --drop-duplicate-uids to keep only each uid's first row.")
    keep, dropped = rows_to_keep(len(source), duplicates)
    print(f"--drop-duplicate-uids: dropping {len(dropped)} row(s) repeating {len(duplicates)} uid(s): "
          f"{describe_duplicates(duplicates)} (listed in {REPORT_FILENAME} as dropped_duplicate_uids).")
    return source.select(keep).flatten_indices(), dropped


def check_written_uids(output: Path, split: str) -> None:
    """Streaming runs cannot read the uid column up front: check the written parts before the card is written."""
    uids = [u for path in sorted(output.glob(f"{DATA_DIR}/{split}-*.parquet"))
            for u in pq.read_table(path, columns=["uid"]).column("uid").to_pylist()]
    duplicates = duplicated_uids(uids)
    if duplicates:
        raise ValueError(f"{output}: the streamed source holds duplicated uids, now stored on several rows of split "
                         f"{split!r} (rows counted over its parts in file order): {describe_duplicates(duplicates)}. "
                         "The dataset card was not written. Deduplicate the source and reinforce into a new --output "
                         "(or without --streaming, with --drop-duplicate-uids).")


__all__ = ["FINGERPRINT_FILE", "OutputOwnershipError", "check_written_uids", "claim_output", "describe_duplicates",
           "duplicated_uids", "ownership_conflicts", "record_card", "record_split", "rows_to_keep", "source_identity",
           "without_duplicate_uids"]
