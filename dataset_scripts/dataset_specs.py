"""Opening a dataset spec, the one way every part of the project does it (reinforcement sources, training data,
evaluation sets).

A spec is a data file or glob of them, read with the packaged `datasets` builder of its suffix (`load_dataset(path)`
takes only folders and Hub ids), or a folder or Hub id, read by `datasets.load_dataset` itself: a folder of images
(with an optional metadata file) through the `imagefolder` builder it picks, a folder of data files through theirs.
"""

from __future__ import annotations

from typing import Sequence

import datasets

# Member / column names of images in WebDataset tars. One order for every reader: the first present is the image
# (CLIP_benchmark's mirrors hold `webp`, img2dataset's shards `jpg`; a sample holds one).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# The packaged `datasets` builder of a data file, by suffix.
FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json", ".csv": "csv",
                 ".tar": "webdataset"}


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
    if builder is not None:
        return datasets.load_dataset(builder, data_files={split_name(split): files}, split=split,
                                     streaming=streaming)
    if not isinstance(spec, str):
        raise ValueError(f"Cannot read data files {files[:3]}: unknown file type (known: {', '.join(FILE_BUILDERS)}).")
    return datasets.load_dataset(spec, config_name, split=split, streaming=streaming)


__all__ = ["FILE_BUILDERS", "IMAGE_EXTENSIONS", "file_builder", "open_dataset", "split_name"]
