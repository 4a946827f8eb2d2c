"""Where a stream's rows come from: the shards of `train_data` and how to read the rows of one.

Our Parquet shards, Apple's official reinforcement tars joined on the fly with the user's img2dataset image tars,
or plain WebDataset image-caption tars, from a local disk or any fsspec URL (`hf://...`). `prepare_stream` resolves
the shards and validates their first rows as map-style data is validated; the order in which the shards are read is
`training/stream_order.py`'s, the batches `training/streaming.py`'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import datasets
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from dataset_scripts.augmentation import decode_rgb
from dataset_scripts.convert_official import build_metadata
from dataset_scripts.dataset_specs import IMAGE_EXTENSIONS
from dataset_scripts.dr_format import reinforced_features
from dataset_scripts.official import (OFFICIAL_CAPTIONER, OFFICIAL_TEACHERS, expand_shards, iter_joined_samples,
                                      pair_image_shards)
from dataset_scripts.tar_shards import iter_tar_samples

from .config import ConfigError, TrainingConfig
from .data import DataValidationError, validate_dataset


ROWS_PER_READ = 64
# Official shards and plain WebDataset tars are told apart by their members.
OFFICIAL_MEMBER = "paug.json"


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
        with fsspec.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            features = None
            if self.decode_plain:
                features = datasets.Features.from_arrow_schema(parquet.schema_arrow)
            for record_batch in parquet.iter_batches(batch_size=ROWS_PER_READ):
                table = pa.Table.from_batches([record_batch])
                if features is None:
                    yield from (table.slice(i, 1) for i in range(table.num_rows))
                else:
                    yield from (features.decode_example(row) for row in table.to_pylist())

    def _webdataset_rows(self, path: str) -> Iterator[dict[str, Any]]:
        # The project's one tar reader; a sample without an image or a caption is skipped, not the shard.
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
        shards = expand_shards(config.train_data)
        first = next(iter_tar_samples(shards[0]), (None, {}))[1]
        if OFFICIAL_MEMBER in first:
            images = None
            if config.train_images:
                pairs = pair_image_shards(shards, expand_shards(config.train_images))
                images = [image for _, image in pairs]
            return StreamSource("official", shards, images, **columns)
        return StreamSource("webdataset", shards, **columns)
    if config.train_images:
        raise ConfigError("train_images joins Apple's official reinforcement tars with image tars; train_data "
                          f"{config.train_data!r} is not a tar pattern.")
    if config.train_data.endswith(".parquet"):
        return StreamSource("parquet", expand_shards(config.train_data), decode_plain=plain, **columns)
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
    return build_metadata(sample, teachers=",".join(config.teachers or OFFICIAL_TEACHERS), teacher_dims=None,
                          image_size=224, captioner=OFFICIAL_CAPTIONER, shards=shards, images=config.train_images)


def prepare_stream(config: TrainingConfig, teacher_dims: list[int] | None = None) -> tuple[StreamSource, Any]:
    """The source and its :class:`training.data.DataSpec`, validated on the first rows as map-style data is."""
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


__all__ = ["StreamSource", "head_rows", "official_metadata", "prepare_stream", "resolve_source", "use_streaming"]
