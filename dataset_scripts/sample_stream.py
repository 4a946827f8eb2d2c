"""The source side of `reinforce`: open the source, check its columns, cut it into units, and turn each unit's rows
into batches of decoded, augmented samples (bad rows skipped, each with its reason).

A unit is a source file when streaming, else a run of `--shard-size` rows; each process takes every
world_size-th unit and each DataLoader worker every num_workers-th unit of its process. Samples are functions of
(seed, uid), so the output does not depend on how units are dealt out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import datasets
import fsspec
import numpy as np
import torch

from .augmentation import AugmentationConfig, apply_augmentation, decode_rgb, sample_augmentation, sample_seed
from .captioners import check_column_captioner, check_text_column, column_captions
from .dataset_specs import open_dataset
from .ownership import source_identity, without_duplicate_uids
from .reinforce_config import ReinforceConfig
from .run_state import SKIP_EMPTY_CAPTION, SKIP_UNDECODABLE, UnitProgress, skipped_sample


# ----------------------------------------------------------------------------------------------- source loading


def check_columns(features, image_column: str, caption_column: str, uid_column: str | None,
                  syn_column: str | None = None) -> None:
    """Fail before any model is loaded when a requested column is missing or has the wrong type."""
    available = sorted(features) if features is not None else []
    for flag, column in (("--image-column", image_column), ("--caption-column", caption_column),
                         ("--uid-column", uid_column)):
        if column is not None and column not in available:
            raise ValueError(f"Source has no column {column!r} ({flag}); available columns: {available}.")
    if not isinstance(features[image_column], datasets.Image):
        raise ValueError(f"Column {image_column!r} is {features[image_column]!r}, expected an Image feature.")
    check_text_column(features, caption_column, "--caption-column")
    if syn_column is not None:
        check_column_captioner(features, syn_column, caption_column)


def default_uid_column(features) -> str | None:
    for name in ("uid", "__key__", "key", "id"):
        if features is not None and name in features:
            return name
    return None


@dataclass
class PreparedSource:
    """The source as the stream reads it: only the used columns, images left encoded, cut into `num_units`."""

    rows: datasets.IterableDataset
    uid_column: str | None
    num_units: int
    identity: dict[str, Any]
    """What the run reads, for `ownership.claim_output`."""
    total_rows: int | None
    """Rows to process (None when streaming: not known up front)."""
    dropped_duplicates: list[dict[str, Any]] | None
    """Rows dropped by --drop-duplicate-uids (None when streaming or without a uid column)."""


def prepare_source(config: ReinforceConfig, syn_column: str | None) -> PreparedSource:
    """Open and check the source of a `reinforce` run and cut it into units."""
    source = open_dataset(config.source, config.split, config.source_config, config.streaming)
    uid_column = config.uid_column or default_uid_column(source.features)
    check_columns(source.features, config.image_column, config.caption_column, uid_column, syn_column)
    source_columns = list(source.features)
    source = source.select_columns(list(dict.fromkeys(
        c for c in (config.image_column, config.caption_column, uid_column, syn_column) if c)))
    source = source.cast_column(config.image_column, datasets.Image(decode=False))
    source_rows = total_rows = dropped_duplicates = None
    if isinstance(source, datasets.Dataset):
        if len(source) == 0:
            raise ValueError(f"Source {config.source!r} split {config.split!r} is empty.")
        source_rows = len(source)
        if uid_column:  # the stored uid keys every later lookup: two rows with one uid would collide
            source, dropped_duplicates = without_duplicate_uids(
                source, uid_column, config.source, config.split, config.drop_duplicate_uids)
        total_rows = len(source)
        source = source.to_iterable_dataset(num_shards=math.ceil(len(source) / config.shard_size))
    num_units = source.num_shards
    identity = source_identity(config, source_rows, num_units, uid_column, syn_column, source_columns)
    return PreparedSource(source, uid_column, num_units, identity, total_rows, dropped_duplicates)


def caption_text(value: Any) -> str:
    """A ground-truth caption from a string or a list of strings (the first non-empty one)."""
    if isinstance(value, (list, tuple)):
        value = next((v for v in value if isinstance(v, str) and v.strip()), "")
    return value.strip() if isinstance(value, str) else ""


def image_bytes(value: Any) -> bytes:
    """The encoded bytes of an undecoded `Image` cell (`{"bytes", "path"}`), reading the file if needed."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            with fsspec.open(value["path"], "rb") as file:  # local file or remote (hf://, s3://, ...) URL
                return file.read()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ValueError(f"no image bytes or path in {type(value).__name__}")


# ----------------------------------------------------------------------------------------------- the stream


@dataclass
class StreamSettings:
    num_units: int
    units: list[int]
    progress: dict[int, UnitProgress]
    shard_size: int
    batch_size: int
    num_augmentations: int
    augmentation: AugmentationConfig
    seed: int
    split: str
    image_column: str
    caption_column: str
    uid_column: str | None
    syn_column: str | None = None
    """`column:NAME` captioner: the column the synthetic captions come from (None: a model or no captioner)."""
    num_synthetic_captions: int = 0


class ReinforcementStream(torch.utils.data.IterableDataset):
    """Yields ready batches of decoded, augmented samples, tagged with their unit and part.

    Each DataLoader worker takes every num_workers-th unit of this process. A batch never spans two parts; the
    last batch of a part carries `last_in_part` (possibly with no samples), so the main process knows when to
    write it.
    """

    def __init__(self, source, settings: StreamSettings, prepare_caption_image=None):
        self.source, self.settings, self.prepare_caption_image = source, settings, prepare_caption_image

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        for unit in self.settings.units[worker::num_workers]:
            progress = self.settings.progress.get(unit, UnitProgress())
            if not progress.finished:
                yield from self._unit_batches(unit, progress)

    def _unit_rows(self, unit: int, start: int) -> Iterator[dict[str, Any]]:
        rows = self.source.shard(num_shards=self.settings.num_units, index=unit)
        if start:
            rows = rows.skip(start)
        # `.iter()` rather than `for row in rows`: inside a DataLoader worker, `datasets` would otherwise split
        # this one-shard stream across workers and hand it to worker 0 only.
        for batch in rows.iter(batch_size=64):
            for i in range(len(next(iter(batch.values())))):
                yield {column: values[i] for column, values in batch.items()}

    def _unit_batches(self, unit: int, progress: UnitProgress) -> Iterator[dict[str, Any]]:
        part, row, part_start = progress.parts_done, progress.rows_done, progress.rows_done
        batch = self._new_batch(unit, part, part_start)
        rows = self._unit_rows(unit, progress.rows_done)
        example = next(rows, None)
        if example is None:  # an empty unit still gets a (finished, empty) part state
            batch.update(last_in_part=True, unit_finished=True)
            yield self._finish(batch)
        while example is not None:
            following = next(rows, None)  # look ahead, so the unit's last part is marked finished
            self._add_example(batch, example, unit, row)
            row += 1
            if following is None or row - part_start == self.settings.shard_size:
                batch.update(rows_in_part=row - part_start, last_in_part=True, unit_finished=following is None)
                yield self._finish(batch)
                part, part_start = part + 1, row
                batch = self._new_batch(unit, part, part_start)
            elif len(batch["uids"]) == self.settings.batch_size:
                yield self._finish(batch)
                batch = self._new_batch(unit, part, part_start)
            example = following

    def _new_batch(self, unit: int, part: int, part_start: int) -> dict[str, Any]:
        return {"unit": unit, "part": part, "part_start": part_start, "rows_in_part": 0, "last_in_part": False,
                "unit_finished": False, "uids": [], "captions": [], "images": [], "aug_params": [], "views": [],
                "caption_pixels": [], "syn_captions": [], "skipped": []}

    def _add_example(self, batch: dict[str, Any], example: dict[str, Any], unit: int, row: int) -> None:
        settings = self.settings
        uid = example.get(settings.uid_column) if settings.uid_column else None
        uid = str(uid) if uid is not None else f"{settings.split}-{unit:05d}-{row:09d}"
        caption = caption_text(example.get(settings.caption_column))
        if not caption:
            batch["skipped"].append(skipped_sample(uid, unit, row, SKIP_EMPTY_CAPTION))
            return
        try:
            data = image_bytes(example.get(settings.image_column))
            image = decode_rgb(data)
        except Exception as error:  # any decoder failure (truncated, not an image, bomb, ...) skips the sample
            batch["skipped"].append(skipped_sample(uid, unit, row, SKIP_UNDECODABLE, error))
            return
        generator = torch.Generator().manual_seed(sample_seed(settings.seed, uid))
        params, views = [], []
        for _ in range(settings.num_augmentations):
            p = sample_augmentation(image.height, image.width, settings.augmentation, generator)
            view = apply_augmentation(image, p, settings.augmentation.size, settings.augmentation.interpolation)
            params.append(p.to_json())
            views.append(torch.from_numpy(np.asarray(view, dtype=np.uint8).copy()).permute(2, 0, 1))
        batch["uids"].append(uid)
        batch["captions"].append(caption)
        batch["images"].append(data)
        batch["aug_params"].append(params)
        batch["views"].append(torch.stack(views))
        if settings.syn_column is not None:
            batch["syn_captions"].append(column_captions(example.get(settings.syn_column),
                                                         settings.num_synthetic_captions,
                                                         settings.syn_column == settings.caption_column))
        if self.prepare_caption_image is not None:
            batch["caption_pixels"].append(self.prepare_caption_image(image))

    @staticmethod
    def _finish(batch: dict[str, Any]) -> dict[str, Any]:
        batch["views"] = torch.stack(batch["views"]) if batch["views"] else None
        batch["caption_pixels"] = torch.stack(batch["caption_pixels"]) if batch["caption_pixels"] else None
        return batch


__all__ = ["PreparedSource", "ReinforcementStream", "StreamSettings", "caption_text", "check_columns",
           "default_uid_column", "image_bytes", "prepare_source"]
