"""The image set a demo searches: read once, embedded once per model (batched, with a progress bar) and cached on disk
under a key made of the model's weight fingerprint and the image set's, so a second start with the same model and
images reads the embeddings instead of recomputing them."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import datasets
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..datasets_io import load_eval_dataset
from .encoders import Encoder

CAPTION_COLUMNS = ("name", "caption", "text", "label", "title")


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mobileclip-demo"


@dataclass
class ImageSet:
    """Rows of a dataset with an image column; `captions` label the search results."""

    dataset: datasets.Dataset
    image_column: str
    captions: list[str]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.dataset)

    def image(self, index: int) -> Image.Image:
        return self.dataset[int(index)][self.image_column]

    def images(self, indices: Sequence[int]) -> list[Image.Image]:
        return self.dataset.select([int(i) for i in indices])[self.image_column]


def open_image_set(spec: str, split: str = "train", config: str | None = None,
                   caption_column: str | None = None) -> ImageSet:
    """A folder of images (`datasets`' imagefolder), a data file or a `load_dataset` spec (with `config`)."""
    if not Path(spec).exists() and not re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        raise ValueError(f"--images {spec}: no such folder or file (a Hub dataset id has the form ORG/NAME).")
    loaded = load_eval_dataset(spec, split, config).dataset
    image_columns = [name for name, feature in loaded.features.items() if isinstance(feature, datasets.Image)]
    if not image_columns:
        raise ValueError(f"--images {spec}: split {split!r} has no image column (columns: {', '.join(loaded.features)}).")
    if caption_column is None:
        caption_column = next((name for name in CAPTION_COLUMNS if name in loaded.features), None)
    elif caption_column not in loaded.features:
        raise ValueError(f"--images {spec}: no column {caption_column!r} (columns: {', '.join(loaded.features)}).")
    captions = [str(value) for value in loaded[caption_column]] if caption_column else [
        f"#{index}" for index in range(len(loaded))]
    digest = hashlib.sha256(f"{loaded._fingerprint}|{image_columns[0]}|{len(loaded)}".encode()).hexdigest()
    return ImageSet(loaded, image_columns[0], captions, digest)


class ImageIndex:
    """Unit-norm embeddings of every image of an `ImageSet` for one model; `search` ranks them by cosine."""

    def __init__(self, encoder: Encoder, images: ImageSet, cache_dir: str | Path | None = None,
                 batch_size: int = 64, progress: bool = True):
        self.encoder, self.images = encoder, images
        key = hashlib.sha256(f"{encoder.fingerprint}|{images.fingerprint}".encode()).hexdigest()[:32]
        self.cache_file = Path(cache_dir or default_cache_dir()) / f"{key}.npy"
        self.from_cache = self.cache_file.is_file()
        if self.from_cache:
            self.embeddings = np.load(self.cache_file)
        else:
            self.embeddings = self._embed(batch_size, progress)
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            # Written under a temporary name and renamed: a crash mid-write never leaves a truncated cache entry.
            temporary = self.cache_file.with_suffix(".tmp.npy")
            np.save(temporary, self.embeddings)
            os.replace(temporary, self.cache_file)

    def _embed(self, batch_size: int, progress: bool) -> np.ndarray:
        chunks = []
        bar = tqdm(total=len(self.images), desc=f"Embedding images with {self.encoder.name}", unit="img",
                   disable=not progress)
        for start in range(0, len(self.images), batch_size):
            indices = range(start, min(start + batch_size, len(self.images)))
            chunks.append(self.encoder.encode_images(self.images.images(indices)).astype(np.float32))
            bar.update(len(indices))
        bar.close()
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, cosine scores) of the `k` images nearest to the unit-norm `query`, best first."""
        scores = self.embeddings @ query.astype(np.float32)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return top, scores[top]


__all__ = ["ImageIndex", "ImageSet", "default_cache_dir", "open_image_set"]
