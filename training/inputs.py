"""The training input, map-style or streaming, behind one pair of calls for `train.py`:

    data = load_training_data(config, online_teacher_dims)        # validated: data.spec says what it holds
    loader = data.loader(views, collator, config, global_batch, rank, world_size, start_step, checkpoint)

Map-style (`training/data.py`): `datasets` reads the data into an Arrow cache; a lazily evaluated seeded
permutation orders each epoch (`training/order.py`). Streaming (`training/streaming.py`): shards are read as they
come, dealt to slots. Both give the same global batch for 1 or N processes and resume exactly from a checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import datasets
import torch

from .config import TrainingConfig
from .data import Collator, DataSpec, TrainingSamples, TrainingViews, load_train_dataset, validate_dataset
from .order import GlobalBatchSampler
from .streaming import (STREAM_STATE_FILE, StreamingLoader, StreamSource, plan_stream, prepare_stream,
                        read_stream_state, use_streaming)


@dataclass
class TrainingData:
    """Validated training data: a map-style dataset or a stream source, and what validation found."""

    spec: DataSpec
    dataset: datasets.Dataset | None = None
    source: StreamSource | None = None

    @classmethod
    def from_dataset(cls, dataset: datasets.Dataset, config: TrainingConfig,
                     online_teacher_dims: list[int] | None = None) -> "TrainingData":
        """A `datasets.Dataset` already in hand (built in memory, filtered, concatenated ...), validated as
        `train_data` would be (mode `reinforced` still reads the teachers from the card of `config.train_data`)."""
        return cls(validate_dataset(dataset, config, online_teacher_dims), dataset=dataset)

    @property
    def streaming(self) -> bool:
        return self.source is not None

    def describe(self, global_batch: int) -> str:
        """The start-up log's words for the data."""
        if self.source is not None:
            return f"streaming {len(self.source.shards)} {self.source.kind} shards"
        return f"{self.spec.num_rows} rows, {self.spec.num_rows // global_batch} steps/epoch"

    def resolved(self, config: TrainingConfig, global_batch: int) -> dict[str, Any]:
        """Settings that fix the data order, recorded with the run (and checked on resume)."""
        if self.source is None:
            return {"streaming_resolved": False, "stream_slots_resolved": None}
        plan = plan_stream(len(self.source.shards), config, global_batch, 0, 1)
        return {"streaming_resolved": True, "stream_slots_resolved": plan.num_slots}

    def build_views(self, config: TrainingConfig, image_size: int, resample: str, tokenizer: Any) -> TrainingViews:
        return TrainingViews(config, self.spec, image_size, resample, tokenizer)

    def loader(self, views: TrainingViews, collator: Collator, config: TrainingConfig, global_batch: int,
               rank: int, world_size: int, start_step: int, checkpoint: Path | None,
               log: Callable[[str], None] = print):
        """This process's batches from `start_step` on (an iterable; infinite)."""
        if self.source is not None:
            saved = None
            if start_step and checkpoint is not None:
                slots = plan_stream(len(self.source.shards), config, global_batch, 0, 1).num_slots
                saved = read_stream_state(checkpoint, slots)
            plan = plan_stream(len(self.source.shards), config, global_batch, rank, world_size, saved)
            width = sum(self.spec.teacher_dims) if config.mode == "reinforced" else None
            return StreamingLoader(self.source, plan, views, collator, config, width, log=log)
        samples = TrainingSamples(self.dataset, views)
        sampler = GlobalBatchSampler(len(samples), global_batch, config.seed, rank, world_size, start_step)
        return torch.utils.data.DataLoader(
            samples, batch_sampler=sampler, collate_fn=collator, num_workers=config.num_workers,
            pin_memory=torch.cuda.is_available(), persistent_workers=False,
            prefetch_factor=4 if config.num_workers else None,
        )


def load_training_data(config: TrainingConfig, online_teacher_dims: list[int] | None = None) -> TrainingData:
    """Reads (map-style) or opens (streaming) `train_data` and validates it against the mode and the teachers."""
    if use_streaming(config):
        source, spec = prepare_stream(config, online_teacher_dims)
        return TrainingData(spec, source=source)
    return TrainingData.from_dataset(load_train_dataset(config), config, online_teacher_dims)


def stream_state_files(loader: Any, rank: int) -> dict[str, str]:
    """The files this process adds to a checkpoint: its slots' stream positions (nothing for map-style data, whose
    position follows from the step)."""
    if not isinstance(loader, StreamingLoader):
        return {}
    return {STREAM_STATE_FILE.format(rank): json.dumps(loader.state())}


__all__ = ["TrainingData", "load_training_data", "stream_state_files"]
