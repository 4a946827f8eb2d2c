"""Streaming training input: shards -> slots -> global batches, resumable exactly, the same for 1 or N processes.

Map-style reading (`training/data.py`) needs an Arrow copy of the data and random row access. At DataCompDR scale
(1,024 to 65,536 shards) training streams the shards instead. Three files, one job each:

* `training/stream_source.py`: which shards, and the rows of one (Parquet, Apple's official tars joined with
  image tars, plain WebDataset tars), validated on the first rows as map-style data is.
* `training/stream_order.py`: the order. The shards are dealt once (seeded) to `S` *slots*; each slot reads its
  shards in a seeded order per epoch and shuffles its rows in seeded blocks; its position is what a checkpoint
  stores and a resumed run starts from.
* this module: the batches. Every global batch takes the next `global_batch / S` samples of every slot, in slot
  order.

Processes and workers. Process `r` of `W` owns the contiguous slots `[r S/W, (r+1) S/W)`, so the rows of the
global batch, gathered in rank order, are the same for any `W` dividing `S`; DataLoader workers split a process's
slots into contiguous groups and each yields its part of every step's batch, so neither does the worker count
change a batch. Each shard is read by one worker of one process only.

Resume. A killed and resumed run sees the very samples an uninterrupted one sees (`stream_state_<rank>.json`).

Epochs are per slot: a slot's samples are each seen exactly once per slot-epoch. With equally sized slots (the
common case: DataCompDR shards hold equal numbers of samples) the slots' epochs end at the same step.

Bad input. A shard that cannot be read is skipped (the rows read before the failure stay in the stream): the run
goes on, and the main process logs it and counts it. A shard whose teacher embeddings have another width than the
card's teachers stops the run with a message naming the shard.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

import numpy as np
import torch

from dataset_scripts.training_view import row_embeddings

from .config import TrainingConfig
from .data import Collator, DataValidationError, TrainingViews
# The readers and the order are re-exported: the training input (training/inputs.py) opens a stream here.
from .stream_order import (STREAM_STATE_FILE, SlotPosition, SlotStream, StreamPlan, deal_shards, default_slots,
                           plan_stream, read_stream_state)
from .stream_source import StreamSource, head_rows, official_metadata, prepare_stream, resolve_source, use_streaming


class StreamingBatches(torch.utils.data.IterableDataset):
    """Yields, per step, this DataLoader worker's part of this process's batch (its contiguous group of slots,
    each contributing `rows_per_slot` samples), collated, with the slots' positions after the step."""

    def __init__(self, source: StreamSource, plan: StreamPlan, views: TrainingViews, collator: Collator, seed: int,
                 block_size: int, expected_width: int | None):
        self.source, self.plan, self.views, self.collator = source, plan, views, collator
        self.seed, self.block_size, self.expected_width = seed, block_size, expected_width

    def worker_slots(self) -> list[int]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return [int(s) for s in np.array_split(np.asarray(self.plan.local_slots), workers)[worker]]

    def _check_width(self, row: Any, shard: str) -> None:
        if self.expected_width is None:
            return
        width = row_embeddings(row, "image_emb").shape[-1]
        if width != self.expected_width:
            raise DataValidationError(
                f"Shard {shard}: its teacher image embeddings are {width} wide, but the training data's teachers "
                f"(its dataset card, or the first shard) have dims summing to {self.expected_width}. Shards "
                "reinforced with other teachers cannot be mixed: remove the shard or re-reinforce it.")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        slots = self.worker_slots()
        streams = {slot: SlotStream(self.source, slot, self.plan.slot_shards[slot], self.seed, self.block_size,
                                    self.plan.start[slot]) for slot in slots}
        iterators = {slot: iter(stream) for slot, stream in streams.items()}
        checked: set[str] = set()
        reported: dict[int, int] = {slot: 0 for slot in slots}
        while True:
            samples, positions = [], {}
            for slot in slots:
                for row, epoch, key, position in islice(iterators[slot], self.plan.rows_per_slot):
                    shard = self.source.shards[int(key.split(":")[0])]
                    if shard not in checked:
                        self._check_width(row, shard)
                        checked.add(shard)
                    try:
                        samples.append(self.views(row, epoch, key))
                    except (ValueError, KeyError, OSError, IndexError) as error:
                        raise DataValidationError(f"Shard {shard} row {key.split(':')[1]}: "
                                                  f"{type(error).__name__}: {error}") from error
                    positions[slot] = position.to_list()
            batch = self.collator(samples)
            unreadable = []
            for slot, stream in streams.items():
                unreadable += stream.unreadable[reported[slot]:]
                reported[slot] = len(stream.unreadable)
            skipped = {}
            for stream in streams.values():
                for reason, count in stream.skipped.items():
                    skipped[reason] = skipped.get(reason, 0) + count
            batch["stream"] = {"positions": positions, "unreadable": unreadable, "skipped": skipped,
                               "worker_slots": slots}
            yield batch


def merge_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One local batch from the workers' parts (in worker order = slot order)."""
    merged: dict[str, Any] = {}
    for key in parts[0]:
        if key == "stream":
            continue
        values = [part[key] for part in parts]
        merged[key] = torch.cat(values) if torch.is_tensor(values[0]) else [v for value in values for v in value]
    positions, unreadable, skipped = {}, [], {}
    for part in parts:
        positions.update(part["stream"]["positions"])
        unreadable += part["stream"]["unreadable"]
        skipped[part["stream"]["worker_slots"][0]] = part["stream"]["skipped"]  # cumulative per worker
    merged["stream"] = {"positions": positions, "unreadable": unreadable, "skipped": skipped}
    return merged


class StreamingLoader:
    """This process's batches of a stream, in step order, and the slot positions after the last one handed out.

    `positions` and the unreadable-shard / skipped-sample counts are what the training loop logs and checkpoints.
    """

    def __init__(self, source: StreamSource, plan: StreamPlan, views: TrainingViews, collator: Collator,
                 config: TrainingConfig, expected_width: int | None, log=print):
        self.plan, self.log = plan, log
        self.num_workers = min(config.num_workers, len(plan.local_slots))
        dataset = StreamingBatches(source, plan, views, collator, config.seed, config.shuffle_block_size,
                                   expected_width)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
            prefetch_factor=2 if self.num_workers else None,
        )
        self.positions = {slot: position.to_list() for slot, position in plan.start.items()}
        self.unreadable_shards: list[str] = []
        self.skipped: dict[str, int] = {}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        parts_per_step = max(1, self.num_workers)
        parts: list[dict[str, Any]] = []
        for part in self.loader:
            parts.append(part)
            if len(parts) < parts_per_step:
                continue
            batch, parts = merge_parts(parts), []
            stream = batch.pop("stream")
            self.positions.update(stream["positions"])
            for shard, error in stream["unreadable"]:
                if shard in self.unreadable_shards:  # met again in a later epoch
                    continue
                self.unreadable_shards.append(shard)
                self.log(f"Skipping unreadable shard {shard} ({error}); {len(self.unreadable_shards)} unreadable "
                         "shard(s) so far.")
            totals: dict[str, int] = {}
            for counts in stream["skipped"].values():
                for reason, count in counts.items():
                    totals[reason] = totals.get(reason, 0) + count
            self.skipped = totals
            yield batch

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores for this process (JSON)."""
        return {"num_slots": self.plan.num_slots, "positions": {str(k): v for k, v in self.positions.items()}}



__all__ = [
    "STREAM_STATE_FILE",
    "SlotPosition",
    "SlotStream",
    "StreamPlan",
    "StreamSource",
    "StreamingBatches",
    "StreamingLoader",
    "deal_shards",
    "default_slots",
    "head_rows",
    "merge_parts",
    "official_metadata",
    "plan_stream",
    "prepare_stream",
    "read_stream_state",
    "resolve_source",
    "use_streaming",
]
