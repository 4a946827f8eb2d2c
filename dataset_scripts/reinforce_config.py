"""The settings of one `reinforce` run: what `python -m dataset_scripts.reinforce` parses its command line into, and
what a caller in Python (the quickstart, the benchmarks) builds directly with keyword arguments."""

from __future__ import annotations

from dataclasses import dataclass

DTYPE_NAMES = ("bfloat16", "float16", "float32")


@dataclass(kw_only=True)
class ReinforceConfig:
    """One field per command-line option (`--num-augmentations` is `num_augmentations`), with the same defaults."""

    source: str
    """Parquet file/glob, WebDataset .tar file/glob, dataset folder or Hub dataset id."""
    output: str
    """Output folder (created; reruns resume)."""
    teachers: str
    """Comma-separated teacher specs: open_clip:ARCH:PRETRAINED, open_clip:hf-hub:REPO, hf:PATH_OR_ID."""
    captioner: str = "none"
    """open_clip:COCA_ARCH:TAG, hf:PATH_OR_ID, column:NAME (the source's own extra captions) or none."""
    num_augmentations: int = 10
    num_synthetic_captions: int | None = None
    """K; None: 5 with a model captioner, 0 without (required with column:NAME)."""
    split: str = "train"
    source_config: str | None = None
    streaming: bool = False
    image_column: str = "image"
    caption_column: str = "caption"
    uid_column: str | None = None
    """None: uid/__key__/key/id if present, else generated."""
    batch_size: int = 32
    max_teacher_batch: int = 1024
    shard_size: int = 10000
    dtype: str = "bfloat16"
    """Autocast dtype of teachers and captioner, one of `DTYPE_NAMES` (embeddings are stored as float16)."""
    seed: int = 0
    image_size: int = 224
    no_rand_augment: bool = False
    num_workers: int | None = None
    """Decoding/augmentation workers per process; None: the process's cores less one (at most 8)."""
    open_clip_model_config: list[str] | None = None
    push_to_hub: str | None = None
    no_progress: bool = False
    overwrite: bool = False
    drop_duplicate_uids: bool = False


__all__ = ["DTYPE_NAMES", "ReinforceConfig"]
