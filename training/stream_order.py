"""A stream's order and where it stands: shards dealt to slots, each slot's seeded reading order, the slots a
process owns, and the per-slot positions a checkpoint stores and a resumed run starts from.

The shards are dealt once (seeded) to `S` *slots*; slot `s` owns a fixed set of shards. In each of its epochs a
slot reads its shards in an order drawn from `(seed, slot, epoch)` and shuffles its rows in consecutive blocks of
`shuffle_block_size` rows (a seeded permutation per block): a bounded in-memory shuffle whose state is just a
position. Process `r` of `W` owns the contiguous slots `[r S/W, (r+1) S/W)`.

After each step every slot's position (epoch, where its current block starts, how far into the block it is) is
known; checkpoints store them (`stream_state_<rank>.json`) and a resumed stream re-reads the current block and goes
on from there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError, TrainingConfig
from .data import DataValidationError
from .stream_source import StreamSource


STREAM_STATE_FILE = "stream_state_{}.json"
MAX_DEFAULT_SLOTS = 1024


def default_slots(num_shards: int, global_batch: int) -> int:
    """The largest power of two <= min(shards, MAX_DEFAULT_SLOTS) that divides the global batch; it depends on the
    data and the global batch only, never on the number of processes."""
    slots = 1
    while slots * 2 <= min(num_shards, MAX_DEFAULT_SLOTS) and global_batch % (slots * 2) == 0:
        slots *= 2
    return slots


def deal_shards(num_shards: int, slots: int, seed: int) -> list[list[int]]:
    """Slot s -> its shards (fixed for the whole run): a seeded shuffle of all shards dealt round-robin."""
    order = np.random.default_rng([seed, 0x5107]).permutation(num_shards)
    return [order[slot::slots].tolist() for slot in range(slots)]


@dataclass(frozen=True)
class SlotPosition:
    """Where a slot's stream stands: its epoch, the (shard position, row) its current block starts at, and how many
    rows of that block it has emitted."""

    epoch: int = 0
    shard: int = 0
    row: int = 0
    emitted: int = 0

    def to_list(self) -> list[int]:
        return [self.epoch, self.shard, self.row, self.emitted]


class SlotStream:
    """The infinite, exactly resumable row stream of one slot (see the module docstring)."""

    def __init__(self, source: StreamSource, slot: int, shards: list[int], seed: int, block_size: int,
                 start: SlotPosition):
        self.source, self.slot, self.shards = source, slot, shards
        self.seed, self.block_size, self.start = seed, block_size, start
        self.unreadable: list[tuple[str, str]] = []
        self.skipped: dict[str, int] = {}

    def shard_order(self, epoch: int) -> list[int]:
        order = np.random.default_rng([self.seed, 0xE90C, self.slot, epoch]).permutation(len(self.shards))
        return [self.shards[i] for i in order]

    def _rows_from(self, order: list[int], position: int, row: int) -> Iterator[tuple[int, int, Any]]:
        for at in range(position, len(order)):
            shard = order[at]
            skip = row if at == position else 0
            index = 0
            try:
                for index, value in enumerate(self.source.rows(shard, self.skipped)):
                    if index >= skip:
                        yield at, index, value
            except Exception as error:  # noqa: BLE001 - any read error: skip the rest of the shard, keep training
                self.unreadable.append((self.source.shards[shard], f"{type(error).__name__}: {error}"))

    def __iter__(self) -> Iterator[tuple[Any, int, str, SlotPosition]]:
        """(row, epoch, row key, position after this row)."""
        epoch, position, row, emitted = self.start.epoch, self.start.shard, self.start.row, self.start.emitted
        while True:
            order = self.shard_order(epoch)
            rows = self._rows_from(order, position, row)
            produced = False
            while block := list(islice(rows, self.block_size)):
                first_shard, first_row = block[0][0], block[0][1]
                permutation = np.random.default_rng(
                    [self.seed, 0xB10C, self.slot, epoch, first_shard, first_row]).permutation(len(block))
                for index in range(emitted, len(block)):
                    at, row_in_shard, value = block[permutation[index]]
                    produced = True
                    yield value, epoch, f"{order[at]}:{row_in_shard}", SlotPosition(
                        epoch, first_shard, first_row, index + 1)
                emitted = 0
            if not produced and (position, row) == (0, 0):
                names = [self.source.shards[i] for i in self.shards]
                raise DataValidationError(f"Stream slot {self.slot} read no rows in epoch {epoch}: its shards "
                                          f"{names[:4]}{' ...' if len(names) > 4 else ''} are empty or unreadable.")
            epoch, position, row, emitted = epoch + 1, 0, 0, 0



@dataclass
class StreamPlan:
    """Everything a process needs to build its stream: the slots it owns and where each one starts."""

    num_slots: int
    slot_shards: list[list[int]]
    local_slots: list[int]
    rows_per_slot: int
    """Samples each slot gives every global batch (global batch / slots)."""
    start: dict[int, SlotPosition] = field(default_factory=dict)


def plan_stream(num_shards: int, config: TrainingConfig, global_batch: int, rank: int, world_size: int,
                saved: dict[int, SlotPosition] | None = None) -> StreamPlan:
    """Checks slots against shards, batch and processes; the error says which setting to change."""
    slots = config.stream_slots or default_slots(num_shards, global_batch)
    if slots > num_shards:
        raise ConfigError(f"stream_slots {slots} exceeds the {num_shards} shards of the training data: every slot "
                          "needs at least one shard. Lower stream_slots.")
    if global_batch % slots:
        raise ConfigError(f"global batch {global_batch} is not a multiple of stream_slots {slots}: every slot gives "
                          "the same number of samples to each batch.")
    if slots % world_size:
        raise ConfigError(
            f"stream_slots {slots} cannot be split over {world_size} processes (each owns S / W contiguous slots); "
            f"set stream_slots to a multiple of {world_size} that divides the global batch {global_batch} and is at "
            f"most the {num_shards} shards.")
    per_process = slots // world_size
    local = list(range(rank * per_process, (rank + 1) * per_process))
    start = {slot: SlotPosition() for slot in local}
    if saved is not None:
        missing = [slot for slot in local if slot not in saved]
        if missing:
            raise ConfigError(f"The checkpoint holds no stream position for slot(s) {missing}; it was written with "
                              "other stream settings. Resume with the same stream_slots.")
        start = {slot: saved[slot] for slot in local}
    return StreamPlan(slots, deal_shards(num_shards, slots, config.seed), local, global_batch // slots, start)



def read_stream_state(checkpoint: Path, num_slots: int) -> dict[int, SlotPosition]:
    """Every process's slot positions saved in `checkpoint` (any number of processes wrote them)."""
    files = sorted(Path(checkpoint).glob(STREAM_STATE_FILE.format("*")))
    if not files:
        raise ConfigError(f"{checkpoint} holds no stream positions ({STREAM_STATE_FILE.format('<rank>')}): it was "
                          "written by a map-style run. Resume with `streaming: false`, or start a new output_dir.")
    positions: dict[int, SlotPosition] = {}
    for path in files:
        state = json.loads(path.read_text())
        if state["num_slots"] != num_slots:
            raise ConfigError(f"{path} was written with stream_slots {state['num_slots']}, this run has {num_slots}; "
                              "resume with the same stream_slots.")
        positions.update({int(k): SlotPosition(*v) for k, v in state["positions"].items()})
    return positions



__all__ = ["STREAM_STATE_FILE", "SlotPosition", "SlotStream", "StreamPlan", "deal_shards", "default_slots",
           "plan_stream", "read_stream_state"]
