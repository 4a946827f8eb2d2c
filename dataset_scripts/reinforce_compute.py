"""The model side of `reinforce`: the captioner and the teacher ensemble on the stream's batches, timed.

Runs in the main process on its device, while DataLoader workers decode and augment (`sample_stream`); the
result is one finished sample (a row of the reinforced format, `dr_format`) per kept source row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .augmentation import sample_seed
from .dr_format import pack_text_embeddings


@dataclass
class Timing:
    """Seconds spent in the teachers and the captioner, against the run's wall time (reported per run)."""

    teacher_s: float = 0.0
    captioner_s: float = 0.0
    samples: int = 0
    start: float = field(default_factory=time.perf_counter)

    def as_dict(self) -> dict[str, float]:
        wall = time.perf_counter() - self.start
        return {"wall_s": wall, "teacher_s": self.teacher_s, "captioner_s": self.captioner_s,
                "samples": self.samples, "samples_per_s": self.samples / wall if wall else 0.0,
                "teacher_share": self.teacher_s / wall if wall else 0.0,
                "model_share": (self.teacher_s + self.captioner_s) / wall if wall else 0.0}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Reinforcer:
    """Computes captions and teacher embeddings for the batches of a `sample_stream.ReinforcementStream`."""

    def __init__(self, teachers, captioner, num_captions: int, max_teacher_batch: int, seed: int, device):
        self.teachers, self.captioner, self.num_captions = teachers, captioner, num_captions
        self.max_teacher_batch, self.seed, self.device = max_teacher_batch, seed, device
        self.timing = Timing()

    def _timed(self, attribute: str, fn, *args):
        # CUDA runs asynchronously: without the synchronizations the time would land on whatever waits next.
        _synchronize(self.device)
        start = time.perf_counter()
        result = fn(*args)
        _synchronize(self.device)
        setattr(self.timing, attribute, getattr(self.timing, attribute) + time.perf_counter() - start)
        return result

    def _embed(self, encode, inputs) -> np.ndarray:
        chunks = [encode(inputs[i: i + self.max_teacher_batch]) for i in range(0, len(inputs), self.max_teacher_batch)]
        return torch.cat(chunks).to(torch.float16).cpu().numpy()

    def examples(self, batch: dict[str, Any], batch_index: int) -> list[dict[str, Any]]:
        """The finished samples of one stream batch (`batch_index`: its place in its part, which seeds captions)."""
        count = len(batch["uids"])
        if not count:
            return []
        syn = batch["syn_captions"] or [[] for _ in range(count)]  # filled by the stream for `column:NAME`
        if self.captioner is not None and self.num_captions:
            seed = sample_seed(self.seed, f"captions/{batch['unit']}/{batch['part']}/{batch_index}")
            syn = self._timed("captioner_s", self.captioner.generate, batch["caption_pixels"], self.num_captions,
                              seed)
        views = batch["views"].flatten(0, 1)
        texts = [t for caption, captions in zip(batch["captions"], syn) for t in [caption, *captions]]
        image_parts, text_parts = [], []
        for teacher in self.teachers:
            image_parts.append(self._timed("teacher_s", self._embed, teacher.encode_images, views))
            text_parts.append(self._timed("teacher_s", self._embed, teacher.encode_texts, texts))
        image_emb = np.concatenate(image_parts, axis=1).reshape(count, len(views) // count, -1)
        text_emb = pack_text_embeddings(np.concatenate(text_parts, axis=1), [1 + len(c) for c in syn],
                                        self.num_captions)
        self.timing.samples += count
        return [
            {"uid": batch["uids"][i], "image": {"bytes": batch["images"][i], "path": None},
             "caption": batch["captions"][i], "syn_captions": list(syn[i]), "aug_params": batch["aug_params"][i],
             "image_emb": image_emb[i], "text_emb": text_emb[i]}
            for i in range(count)
        ]


__all__ = ["Reinforcer", "Timing"]
