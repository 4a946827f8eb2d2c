"""Training view of a reinforced dataset: replay one stored augmentation, pick captions, return teacher targets.

    from dataset_scripts.training_view import ReinforcedTrainingView, load_reinforced_dataset

    dataset, metadata = load_reinforced_dataset("DIR_OR_REPO", split="train")
    view = ReinforcedTrainingView.from_model_config(model.config, tokenizer, metadata, seed=0)
    sample = view(dataset.with_format("arrow")[i], epoch)   # one-row Arrow table or a decoded row

Per sample and epoch, one stored augmentation is drawn uniformly and replayed at the student's size, and one
synthetic caption is drawn uniformly among the sample's own (the paper's recipe, arXiv 2311.17049 §3: the same
augmented image is used with the ground-truth caption, batch B_real, and with a synthetic caption, batch B_syn).
Draws depend only on (seed, epoch, uid): the epoch is an argument of every call, so they do not change with the
number of DataLoader workers, processes, or with map-style against streaming reading. Batching, ordering and
normalisation belong to the training side (`training/data.py`, `training/streaming.py`, `training/step.py`).

Samples may have fewer than the dataset's K synthetic captions (`len(syn_captions)`; the zero rows of `text_emb`
beyond are never drawn). In "both" mode a sample with none, in a dataset with K > 0, uses its ground-truth caption
as its synthetic one (`syn_index` -1, `syn_text_emb` = `text_emb[0]`): every row of B_syn needs a caption for the
batch to stack, and the ground truth is the one caption such a sample has.

A sample holds (L = tokenizer context, D = sum of teacher dims):

    views          uint8   (3, S, S)   the replayed view, not normalised (the device normalises whole batches)
    input_ids      int64   (L,)        ground-truth caption tokens;  caption: that caption (str)
    image_emb      float16 (D,)        teachers' embeddings of the replayed view (image_emb[aug_index])
    text_emb       float16 (D,)        teachers' embeddings of the ground-truth caption (text_emb[0])
    syn_input_ids  int64   (L,)        synthetic caption tokens; syn_caption: it (str)  } only when K > 0
    syn_text_emb   float16 (D,)        teachers' embeddings of that caption            } and synthetic=True
    aug_index, syn_index  int          which augmentation / synthetic caption was drawn (-1: none, or the
                                       ground truth standing in for a sample without synthetic captions)
    uid            str

Embeddings stay float16 until the loss; split D per teacher with `metadata.teacher_dims`. With
`caption_mode="random"`, `input_ids`/`text_emb`/`caption` hold one caption drawn uniformly among the ground truth
and the K synthetic ones (open_clip's `--dataset-reinforcement-mix-synthetic` with ratio K/(K+1)) and no `syn_*`
keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torchvision.transforms import functional as F

from .augmentation import AugmentationParams, apply_augmentation, decode_rgb, sample_seed
from .dataset_specs import open_dataset
from .dr_format import ReinforcementMetadata, load_reinforcement_metadata


def load_reinforced_dataset(path_or_repo: str, split: str = "train", streaming: bool = False):
    """`(dataset, metadata)` for a reinforced dataset folder or Hub repo."""
    dataset = open_dataset(str(path_or_repo), split, streaming=streaming)
    return dataset, load_reinforcement_metadata(path_or_repo)


def _array2d_row(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The (rows, D) float16 array of a one-row Array2D (or list<list<float16>>) column, without copying."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    rows = array.flatten()
    values = rows.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(rows), -1)


def tokenize(tokenizer: Callable[[Sequence[str]], Any], texts: Sequence[str]) -> torch.Tensor:
    """(len(texts), L) int64 ids from an open_clip-style (tensor) or transformers-style (`input_ids`) tokenizer."""
    tokens = tokenizer(list(texts))
    if isinstance(tokens, Mapping):
        tokens = tokens["input_ids"]
    return torch.as_tensor(tokens, dtype=torch.long)


class _RowAccess:
    """Uniform access to one sample given as a one-row Arrow table or as a decoded dict."""

    def __init__(self, row: pa.Table | Mapping[str, Any]):
        self.row = row
        self.is_table = isinstance(row, pa.Table)

    def scalar(self, name: str) -> Any:
        return self.row.column(name)[0].as_py() if self.is_table else self.row[name]

    def list_item(self, name: str, index: int) -> Any:
        if self.is_table:
            return self.row.column(name)[0].values[index].as_py()
        return self.row[name][index]

    def list_length(self, name: str) -> int:
        return len(self.row.column(name)[0].values) if self.is_table else len(self.row[name])

    def embeddings(self, name: str) -> np.ndarray:
        if self.is_table:
            return _array2d_row(self.row.column(name))
        return np.asarray(self.row[name], dtype=np.float16)

    def image(self) -> Image.Image:
        value = self.scalar("image")
        if isinstance(value, Image.Image):
            return value.convert("RGB")
        if isinstance(value, Mapping):
            if value.get("bytes"):
                return decode_rgb(value["bytes"])
            with Image.open(value["path"]) as image:
                return image.convert("RGB")
        return decode_rgb(value)


def row_embeddings(row: pa.Table | Mapping[str, Any], name: str) -> np.ndarray:
    """The (rows, D) float16 `image_emb` / `text_emb` of one sample (a one-row Arrow table or a dict)."""
    return _RowAccess(row).embeddings(name)


class ReinforcedTrainingView:
    """Turns one reinforced sample into student inputs and teacher targets (see the module docstring).

    Args:
        tokenizer: Callable mapping a list of strings to token ids (B, L): an open_clip tokenizer, the
            MobileCLIP processor's tokenizer, or any callable returning a tensor or a mapping with `input_ids`.
        image_size: Student input size S; the stored augmentation is replayed at this size.
        interpolation: Resize filter of the replayed crop ("bilinear" or "bicubic").
        reference_size: Size the augmentations were recorded at (the card's `augmentation.size`); TranslateX/Y
            magnitudes are rescaled from it. None replays them unscaled, as Apple's code does.
        seed: Seed of the per-(epoch, uid) draws.
        caption_mode: "both" (ground truth + one synthetic caption) or "random" (one of GT and synthetic).
        synthetic: Return the synthetic caption in "both" mode (no effect when the dataset has K = 0).
    """

    def __init__(
        self,
        tokenizer: Callable[[Sequence[str]], Any],
        image_size: int = 256,
        interpolation: str = "bilinear",
        reference_size: int | None = 224,
        seed: int = 0,
        caption_mode: str = "both",
        synthetic: bool = True,
    ):
        if caption_mode not in ("both", "random"):
            raise ValueError(f"caption_mode must be 'both' or 'random', got {caption_mode!r}.")
        self.tokenizer, self.image_size, self.interpolation = tokenizer, int(image_size), interpolation
        self.reference_size, self.seed = reference_size, seed
        self.caption_mode, self.synthetic = caption_mode, synthetic

    @classmethod
    def from_model_config(
        cls, config, tokenizer, metadata: ReinforcementMetadata | None = None, **kwargs
    ) -> "ReinforcedTrainingView":
        """Student preprocessing from a MobileCLIPConfig (`image_size`, `resample`)."""
        settings = {"image_size": config.image_size, "interpolation": getattr(config, "resample", "bilinear")}
        if metadata is not None:
            settings["reference_size"] = metadata.augmentation.size
            settings["synthetic"] = metadata.num_synthetic_captions > 0
        return cls(tokenizer, **{**settings, **kwargs})

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        return tokenize(self.tokenizer, texts)

    def views(self, image: Image.Image, params: AugmentationParams) -> torch.Tensor:
        """The uint8 (3, S, S) view of `image` under the stored augmentation `params`."""
        view = apply_augmentation(image, params, self.image_size, self.interpolation, self.reference_size)
        return F.pil_to_tensor(view)

    def __call__(self, row: pa.Table | Mapping[str, Any], epoch: int) -> dict[str, Any]:
        sample = _RowAccess(row)
        uid = str(sample.scalar("uid"))
        rng = np.random.default_rng(sample_seed(self.seed, f"{int(epoch)}/{uid}"))
        num_augmentations = sample.list_length("aug_params")
        num_synthetic = sample.list_length("syn_captions")
        aug_index = int(rng.integers(num_augmentations))
        syn_index = int(rng.integers(num_synthetic)) if num_synthetic else -1
        params = AugmentationParams.from_json(sample.list_item("aug_params", aug_index))
        image_emb, text_emb = sample.embeddings("image_emb"), sample.embeddings("text_emb")
        result = {
            "uid": uid,
            "views": self.views(sample.image(), params),
            "image_emb": torch.from_numpy(image_emb[aug_index].copy()),
            "aug_index": aug_index,
        }
        caption = sample.scalar("caption")
        if self.caption_mode == "random":
            choice = int(rng.integers(1 + num_synthetic))
            text = caption if choice == 0 else sample.list_item("syn_captions", choice - 1)
            result.update(input_ids=self._tokenize([text])[0], text_emb=torch.from_numpy(text_emb[choice].copy()),
                          syn_index=choice - 1, caption=text)
            return result
        if self.synthetic and len(text_emb) > 1:  # the dataset has K > 0 (text_emb has 1 + K rows)
            # A sample without synthetic captions: its ground truth stands in (syn_index -1 -> text_emb[0]).
            syn_text = sample.list_item("syn_captions", syn_index) if num_synthetic else caption
            tokens = self._tokenize([caption, syn_text])
            result.update(syn_input_ids=tokens[1], syn_text_emb=torch.from_numpy(text_emb[1 + syn_index].copy()),
                          syn_caption=syn_text)
        else:
            tokens, syn_index = self._tokenize([caption]), -1
        result.update(input_ids=tokens[0], text_emb=torch.from_numpy(text_emb[0].copy()), syn_index=syn_index,
                      caption=caption)
        return result


__all__ = ["ReinforcedTrainingView", "load_reinforced_dataset", "row_embeddings", "tokenize"]
