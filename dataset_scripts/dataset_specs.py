"""Opening a dataset spec, the one way every part of the project does it (reinforcement sources, training data,
evaluation sets).

A spec is a data file or glob of them, read with the packaged `datasets` builder of its suffix (`load_dataset(path)`
takes only folders and Hub ids), or a folder or Hub id, read by `datasets.load_dataset` itself: a folder of images
(with an optional metadata file) through the `imagefolder` builder it picks, a folder of data files through theirs.

WebDataset tars are read by the project's one tar reader (`dataset_scripts.tar_shards`), the reader training streams
use, into the rows `datasets`' webdataset builder would give (a column per member extension, decoded the same way,
plus `__key__` and `__url__`), except that a sample lacking a member gets None there instead of the whole shard being
refused ("don't share the same prefix or the same types").
"""

from __future__ import annotations

import glob
import io
import json
from itertools import islice
from typing import Any, Iterator, Sequence

import datasets
import fsspec
import numpy as np
import pyarrow as pa
from datasets.features.features import cast_to_python_objects

from .tar_shards import iter_tar_samples

# Member / column names of images in WebDataset tars. One order for every reader: the first present is the image
# (CLIP_benchmark's mirrors hold `webp`, img2dataset's shards `jpg`; a sample holds one).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# The packaged `datasets` builder of a data file, by suffix.
FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json", ".csv": "csv",
                 ".tar": "webdataset"}
# How tar members become column values, by extension (`datasets`' webdataset builder decodes these the same way);
# images stay encoded (an `Image` column), any other member stays bytes.
MEMBER_DECODERS = {"txt": lambda data: data.decode("utf-8"), "text": lambda data: data.decode("utf-8"),
                   "cls": int, "cls2": int, "index": int, "id": int, "json": json.loads,
                   "npy": lambda data: np.load(io.BytesIO(data), allow_pickle=False)}
# Samples whose members decide a tar dataset's columns and their types.
SAMPLES_FOR_FEATURES = 20


def split_name(split: str) -> str:
    """The split named by a split expression (`train[:1000]` -> `train`)."""
    return split.split("[")[0]


def file_builder(spec: str) -> str | None:
    """The builder of a data file or glob (`FILE_BUILDERS`); None for anything else (a folder or a Hub id)."""
    return next((builder for suffix, builder in FILE_BUILDERS.items() if spec.lower().endswith(suffix)), None)


def open_dataset(spec: str | Sequence[str], split: str, config_name: str | None = None, streaming: bool = False):
    """`split` (a split expression) of `spec`: a data file or glob, a list of data files of one kind (e.g. the
    shards of a WebDataset), a folder or a Hub id. A `datasets.Dataset`, or an `IterableDataset` when streaming."""
    files = [spec] if isinstance(spec, str) else list(spec)
    builder = file_builder(files[0]) if files else None
    if builder == "webdataset":
        return open_tar_dataset(files, split, streaming)
    if builder is not None:
        return datasets.load_dataset(builder, data_files={split_name(split): files}, split=split,
                                     streaming=streaming)
    if not isinstance(spec, str):
        raise ValueError(f"Cannot read data files {files[:3]}: unknown file type (known: {', '.join(FILE_BUILDERS)}).")
    return datasets.load_dataset(spec, config_name, split=split, streaming=streaming)


def _tar_shards(files: Sequence[str]) -> list[str]:
    shards = []
    for pattern in files:
        if "://" in pattern or not glob.has_magic(pattern):
            shards.append(pattern)
        else:
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise FileNotFoundError(f"No tar shards match {pattern!r}.")
            shards.extend(matches)
    return shards


def _decoded_sample(key: str, members: dict[str, bytes], shard: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for extension, data in members.items():
        if extension in IMAGE_EXTENSIONS:
            row[extension] = {"path": f"{key}.{extension}", "bytes": data}
        elif extension in MEMBER_DECODERS:
            row[extension] = MEMBER_DECODERS[extension](data)
        else:
            row[extension] = data
    return {**row, "__key__": key, "__url__": shard}


def _tar_rows(shards: list[str], columns: tuple[str, ...], versions: list[str] | None = None
              ) -> Iterator[dict[str, Any]]:
    # `versions` is not read: map-style reads pass it so that `datasets`' cache of the rows is keyed by the shards'
    # contents, not only by their paths (a stream caches nothing, so it skips one metadata call per shard).
    for shard in shards:
        for key, members in iter_tar_samples(shard):
            sample = _decoded_sample(key, members, shard)
            yield {column: sample.get(column) for column in columns}


def _tar_features(shard: str) -> datasets.Features:
    """The columns of a tar dataset: every member extension met in the first `SAMPLES_FOR_FEATURES` samples of its
    first shard, typed from their decoded values (images as `Image`), then `__key__` and `__url__`."""
    samples = [_decoded_sample(key, members, shard) for key, members in islice(iter_tar_samples(shard),
                                                                               SAMPLES_FOR_FEATURES)]
    if not samples:
        raise ValueError(f"Tar shard {shard!r} holds no samples.")
    columns = list(dict.fromkeys(column for sample in samples for column in sample if not column.startswith("__")))
    columns += ["__key__", "__url__"]
    rows = [{column: sample.get(column) for column in columns} for sample in samples]
    table = pa.Table.from_pylist(cast_to_python_objects(rows, only_1d_for_numpy=True))
    features = datasets.Features.from_arrow_schema(table.schema)
    for column in columns:
        if column in IMAGE_EXTENSIONS:
            features[column] = datasets.Image()
    return features


def _shard_version(shard: str) -> str:
    filesystem, path = fsspec.core.url_to_fs(shard)
    return filesystem.ukey(path)


def open_tar_dataset(files: Sequence[str], split: str, streaming: bool = False):
    """The samples of WebDataset tar shards (paths, globs or fsspec URLs), in shard order, as a `datasets.Dataset`
    (cached by the shards' contents; `split` may slice, e.g. `train[:100]`) or an `IterableDataset` whose shards
    are split between DataLoader workers."""
    shards = _tar_shards(files)
    features = _tar_features(shards[0])
    arguments = {"shards": shards, "columns": tuple(features)}
    if streaming:
        if "[" in split:
            raise ValueError(f"Split {split!r}: slicing is map-style only; a stream reads whole shards.")
        return datasets.IterableDataset.from_generator(_tar_rows, features=features, gen_kwargs=arguments,
                                                       split=datasets.NamedSplit(split_name(split)))
    arguments["versions"] = [_shard_version(shard) for shard in shards]
    dataset = datasets.Dataset.from_generator(_tar_rows, features=features, gen_kwargs=arguments,
                                              split=datasets.NamedSplit(split_name(split)))
    if "[" not in split:
        return dataset
    instructions = datasets.ReadInstruction.from_spec(split).to_absolute({split_name(split): len(dataset)})
    return dataset.select([i for instruction in instructions for i in range(instruction.from_, instruction.to)])


__all__ = ["FILE_BUILDERS", "IMAGE_EXTENSIONS", "MEMBER_DECODERS", "file_builder", "open_dataset",
           "open_tar_dataset", "split_name"]
