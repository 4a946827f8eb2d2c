"""Streaming training input: shards -> slots -> global batches, resumable exactly, the same for 1 or N processes.

Map-style reading (`training/data.py`) needs an Arrow copy of the data and random row access. At DataCompDR scale
(1,024 to 65,536 shards) training streams the shards instead, from a local disk or any fsspec URL (`hf://...`):
our Parquet shards, Apple's official reinforcement tars joined on the fly with the user's img2dataset image tars,
or plain WebDataset image-caption tars.

Order. The shards are dealt once (seeded) to `S` *slots*; slot `s` owns a fixed set of shards. In each of its
epochs a slot reads its shards in an order drawn from `(seed, slot, epoch)` and shuffles its rows in consecutive
blocks of `shuffle_block_size` rows (a seeded permutation per block): a bounded in-memory shuffle whose state is
just a position. Every global batch takes the next `global_batch / S` samples of every slot, in slot order.

Processes and workers. Process `r` of `W` owns the contiguous slots `[r S/W, (r+1) S/W)`, so the rows of the
global batch, gathered in rank order, are the same for any `W` dividing `S`; DataLoader workers split a process's
slots into contiguous groups and each yields its part of every step's batch, so neither does the worker count
change a batch. Each shard is read by one worker of one process only.

Resume. After each step every slot's position (epoch, where its current block starts, how far into the block it
is) is known; checkpoints store them (`stream_state_<rank>.json`) and a resumed stream re-reads the current block
and goes on from there, so a killed and resumed run sees the very samples an uninterrupted one sees.

Epochs are per slot: a slot's samples are each seen exactly once per slot-epoch. With equally sized slots (the
common case: DataCompDR shards hold equal numbers of samples) the slots' epochs end at the same step.

Bad input. A shard that cannot be read is skipped (the rows read before the failure stay in the stream): the run
goes on, and the main process logs it and counts it. A shard whose teacher embeddings have another width than the
card's teachers stops the run with a message naming the shard.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataset_scripts.training_view import row_embeddings

from .config import ConfigError, TrainingConfig
from .data import Collator, DataValidationError, TrainingViews


STREAM_STATE_FILE = "stream_state_{}.json"
MAX_DEFAULT_SLOTS = 1024
ROWS_PER_READ = 64
# Official shards and plain WebDataset tars are told apart by their members.
OFFICIAL_MEMBER = "paug.json"


# --- sources ----------------------------------------------------------------------------------------------------


@dataclass
class StreamSource:
    """The shards of a stream and how to read the rows of one.

    `kind` is "parquet" (our format or any Parquet image-caption data), "official" (Apple's reinforcement tars,
    joined with `images` when given) or "webdataset" (plain image + caption tars).
    """

    kind: str
    shards: list[str]
    images: list[str | None] | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    decode_plain: bool = False
    """Parquet rows as decoded dicts (PIL images) for data without stored augmentations."""

    def rows(self, index: int, counts: dict[str, int]) -> Iterator[Any]:
        """The rows of shard `index`, in order; `counts` collects samples skipped inside the shard."""
        if self.kind == "parquet":
            yield from self._parquet_rows(self.shards[index])
        elif self.kind == "official":
            from dataset_scripts.official import iter_joined_samples

            # Without image tars the images must be inside the reinforcement tars; either way a sample without
            # one is counted (missing_image) and skipped.
            image_shard = self.images[index] if self.images else None
            for sample in iter_joined_samples(self.shards[index], image_shard, counts=counts):
                if not sample["caption"]:
                    counts["empty_caption"] = counts.get("empty_caption", 0) + 1
                    continue
                yield sample
        else:
            yield from self._webdataset_rows(self.shards[index])

    def _parquet_rows(self, path: str) -> Iterator[Any]:
        import fsspec
        import pyarrow as pa
        import pyarrow.parquet as pq

        with fsspec.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            features = None
            if self.decode_plain:
                import datasets

                features = datasets.Features.from_arrow_schema(parquet.schema_arrow)
            for record_batch in parquet.iter_batches(batch_size=ROWS_PER_READ):
                table = pa.Table.from_batches([record_batch])
                if features is None:
                    yield from (table.slice(i, 1) for i in range(table.num_rows))
                else:
                    yield from (features.decode_example(row) for row in table.to_pylist())

    def _webdataset_rows(self, path: str) -> Iterator[dict[str, Any]]:
        from dataset_scripts.augmentation import decode_rgb
        from dataset_scripts.official import IMAGE_EXTENSIONS, iter_tar_samples

        for _, members in iter_tar_samples(path):
            image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
            if image is None or "txt" not in members:
                continue
            yield {self.image_column: decode_rgb(image), self.caption_column: members["txt"].decode("utf-8").strip()}


def _is_tar_pattern(train_data: str) -> bool:
    return bool(re.search(r"\.tar(\W|$)", train_data))


def _looks_like_hub_id(train_data: str) -> bool:
    return not Path(train_data).exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", train_data) is not None


def use_streaming(config: TrainingConfig) -> bool:
    """`streaming` if set; automatic (null) for WebDataset tar patterns and Hub dataset ids."""
    if config.streaming is not None:
        return config.streaming
    return bool(config.train_data) and (_is_tar_pattern(config.train_data) or _looks_like_hub_id(config.train_data))


def resolve_source(config: TrainingConfig, plain: bool) -> StreamSource:
    """The shards of `train_data`: a tar glob (official or plain WebDataset), or the Parquet data files that
    `datasets` resolves for a folder, a Hub id or a file (split `train_split`, config `train_data_config`)."""
    if not config.train_data:
        raise DataValidationError("No training data: set `train_data` (a folder, shard pattern or Hub dataset id).")
    if "[" in config.train_split:
        raise ConfigError(f"train_split {config.train_split!r}: split slicing is map-style only; streaming reads "
                          "whole shards (use max_steps to train on less).")
    if config.max_train_samples is not None:
        raise ConfigError("max_train_samples is map-style only; streaming reads whole shards (use max_steps).")
    columns = {"image_column": config.image_column, "caption_column": config.caption_column}
    if _is_tar_pattern(config.train_data):
        from dataset_scripts.official import expand_shards, iter_tar_samples

        shards = expand_shards(config.train_data)
        first = next(iter_tar_samples(shards[0]), (None, {}))[1]
        if OFFICIAL_MEMBER in first:
            images = None
            if config.train_images:
                from dataset_scripts.official import pair_image_shards

                pairs = pair_image_shards(shards, expand_shards(config.train_images))
                images = [image for _, image in pairs]
            return StreamSource("official", shards, images, **columns)
        return StreamSource("webdataset", shards, **columns)
    if config.train_images:
        raise ConfigError("train_images joins Apple's official reinforcement tars with image tars; train_data "
                          f"{config.train_data!r} is not a tar pattern.")
    if config.train_data.endswith(".parquet"):
        from dataset_scripts.official import expand_shards

        return StreamSource("parquet", expand_shards(config.train_data), decode_plain=plain, **columns)
    import datasets

    builder = datasets.load_dataset_builder(config.train_data, config.train_data_config)
    files = (builder.config.data_files or {}).get(config.train_split)
    if not files:
        raise DataValidationError(f"{config.train_data} has no data files for split {config.train_split!r} "
                                  f"({sorted(builder.config.data_files or {})}); set `train_split`.")
    not_parquet = [str(f) for f in files if not str(f).endswith(".parquet")]
    if not_parquet:
        raise DataValidationError(f"Streaming reads Parquet shards or WebDataset tars; {config.train_data} split "
                                  f"{config.train_split!r} has {not_parquet[:3]}. Set `streaming: false` (map-style).")
    return StreamSource("parquet", [str(f) for f in files], decode_plain=plain, **columns)


def head_rows(source: StreamSource, count: int) -> tuple[list[Any], str]:
    """The first `count` rows of the first readable shard (for validation) and that shard's name."""
    for index, shard in enumerate(source.shards):
        try:
            rows = list(islice(source.rows(index, {}), count))
        except Exception:  # noqa: BLE001 - an unreadable shard is skipped here as in training
            continue
        if rows:
            return rows, shard
    raise DataValidationError(f"None of the {len(source.shards)} shards of the training data could be read "
                              f"(first: {source.shards[0]}).")


def official_metadata(sample: dict[str, Any], config: TrainingConfig, shards: str):
    """Reinforcement metadata of Apple's shards (they have no card): DataCompDR's teachers unless `teachers` says
    otherwise, dims split equally, views recorded at 224 px; N and K from the first sample."""
    from types import SimpleNamespace

    from dataset_scripts.convert_official import build_metadata
    from dataset_scripts.official import OFFICIAL_CAPTIONER, OFFICIAL_TEACHERS

    options = SimpleNamespace(teachers=",".join(config.teachers or OFFICIAL_TEACHERS), teacher_dims=None,
                              image_size=224, captioner=OFFICIAL_CAPTIONER, shards=shards,
                              images=config.train_images)
    return build_metadata(sample, options)


def prepare_stream(config: TrainingConfig, teacher_dims: list[int] | None = None) -> tuple[StreamSource, Any]:
    """The source and its :class:`training.data.DataSpec`, validated on the first rows as map-style data is."""
    import datasets
    import pyarrow as pa

    from dataset_scripts.dr_format import reinforced_features

    from .data import validate_dataset

    source = resolve_source(config, plain=False)
    rows, shard = head_rows(source, 4)
    metadata = None
    if source.kind == "parquet":
        head = datasets.Dataset(pa.concat_tables(rows))
    elif source.kind == "official":
        metadata = official_metadata(rows[0], config, config.train_data)
        columns = ("uid", "image", "caption", "syn_captions", "aug_params", "image_emb", "text_emb")
        head = datasets.Dataset.from_list([{k: row[k] for k in columns} for row in rows],
                                          features=reinforced_features(metadata))
    else:
        head = datasets.Dataset.from_list(rows)
    try:
        spec = validate_dataset(head, config, teacher_dims, metadata)
    except DataValidationError as error:
        raise DataValidationError(f"{error} (checked on the first rows of shard {shard})") from error
    spec.num_rows = None
    source.decode_plain = source.kind == "parquet" and not spec.reinforced_format
    return source, spec


# --- order ------------------------------------------------------------------------------------------------------


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


# --- batches ----------------------------------------------------------------------------------------------------


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
    "official_metadata",
    "plan_stream",
    "prepare_stream",
    "read_stream_state",
    "resolve_source",
    "use_streaming",
]
