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
    deferred_ops   float64 (2, 2)      only with defer_ops: the [op_index, magnitude] rows the accelerator applies
                                       to `views` (augmentation.apply_ops_to_batch); Identity rows when none
    input_ids      int64   (L,)        ground-truth caption tokens;  caption: that caption (str)
                                       (input_ids/syn_input_ids only with tokenize_captions=True; training
                                       leaves them to its collator, which tokenizes a batch in one call)
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

import io
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.nn.functional import interpolate
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import functional as F

from .augmentation import AugmentationParams, apply_augmentation, apply_stored_ops, can_defer_ops, decode_rgb
from .augmentation import encode_deferred_ops, sample_seed
from .dataset_specs import open_dataset
from .dr_format import ReinforcementMetadata, load_reinforcement_metadata


def load_reinforced_dataset(path_or_repo: str, split: str = "train", streaming: bool = False):
    """`(dataset, metadata)` for a reinforced dataset folder or Hub repo."""
    dataset = open_dataset(str(path_or_repo), split, streaming=streaming)
    return dataset, load_reinforcement_metadata(path_or_repo)


def _array2d_rows(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The (rows,) list array of D-vectors of a one-row Array2D (or list<list<float16>>) column."""
    array = column.chunk(0) if isinstance(column, pa.ChunkedArray) and column.num_chunks == 1 else column
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    return array.flatten()


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
        # Each access to an Array2D column deserialises its extension type; a sample reads a column up to 3 times.
        self._embedding_rows: dict[str, pa.Array] = {}

    def _rows(self, name: str) -> pa.Array:
        if name not in self._embedding_rows:
            self._embedding_rows[name] = _array2d_rows(self.row.column(name))
        return self._embedding_rows[name]

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
            rows = self._rows(name)
            return rows.flatten().to_numpy(zero_copy_only=False).reshape(len(rows), -1)
        return np.asarray(self.row[name], dtype=np.float16)

    def num_embeddings(self, name: str) -> int:
        return len(self._rows(name)) if self.is_table else len(self.row[name])

    def embedding(self, name: str, index: int) -> torch.Tensor:
        """Row `index` of the (rows, D) embeddings, copied alone (the other N - 1 rows are never materialised)."""
        if self.is_table:
            row = self._rows(name).slice(index, 1).flatten()
            return torch.from_numpy(row.to_numpy(zero_copy_only=False).copy())
        return torch.from_numpy(np.array(self.row[name][index], dtype=np.float16))

    def encoded_image(self) -> bytes | None:
        """The encoded bytes of the image, or None when it is a decoded image or a path."""
        value = self.scalar("image")
        if isinstance(value, Mapping):
            return value.get("bytes") or None
        return value if isinstance(value, bytes) else None

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
        tokenize_captions: Return `input_ids` / `syn_input_ids`. False leaves them to the collator, which
            tokenizes a whole batch in one call (`training.data.Collator`), several times cheaper per caption.
        reduce_on_decode: Decode a JPEG at 1/2, 1/4 or 1/8 scale (PIL `Image.draft`) when the stored crop still
            covers at least `image_size` pixels there. Faster, but DCT scaling is not decode + antialiased
            resize: views differ from the exact replay by more than 1/255 in textured regions, so it is off by
            default and datasets reinforced earlier keep training on the same views.
        defer_ops: Leave the stored RandAugment ops of a view to the accelerator where torchvision's tensor ops
            give the PIL replay within 1/255 (`augmentation.can_defer_ops`): `views` is then the resized crop and
            `deferred_ops` (slots, 2) says what `augmentation.apply_ops_to_batch` must apply; other views are
            augmented here and carry Identity rows.
        fast_resize: Do the horizontal pass of a bilinear JPEG crop's resize with torch's uint8 kernel (see
            `split_resize_views`). Faster; the resized crop is within 1/255 of PIL's, but the stored ops can
            amplify that (Solarize/Posterize flip thresholds), so it is off by default too.
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
        tokenize_captions: bool = True,
        reduce_on_decode: bool = False,
        fast_resize: bool = False,
        defer_ops: bool = False,
    ):
        if caption_mode not in ("both", "random"):
            raise ValueError(f"caption_mode must be 'both' or 'random', got {caption_mode!r}.")
        self.tokenizer, self.image_size, self.interpolation = tokenizer, int(image_size), interpolation
        self.reference_size, self.seed = reference_size, seed
        self.caption_mode, self.synthetic = caption_mode, synthetic
        self.tokenize_captions, self.reduce_on_decode = tokenize_captions, reduce_on_decode
        self.fast_resize, self.defer_ops = fast_resize, defer_ops

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

    def reduced_views(self, data: bytes, params: AugmentationParams) -> torch.Tensor:
        """`views` from a JPEG decoded at the smallest DCT scale that keeps the crop >= `image_size` (see
        `reduce_on_decode`): the crop box is scaled to the reduced image and resized from there."""
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        top, left, crop_h, crop_w = params.crop
        image.draft("RGB", (math.ceil(width * self.image_size / crop_w), math.ceil(height * self.image_size / crop_h)))
        if image.size == (width, height):
            return self.views(decode_rgb(data), params)
        image = image.convert("RGB")
        scale_x, scale_y = image.width / width, image.height / height
        reduced = AugmentationParams(
            crop=(round(top * scale_y), round(left * scale_x), round(crop_h * scale_y), round(crop_w * scale_x)),
            ops=params.ops, compressed_ops=params.compressed_ops,
        )
        return self.views(image, reduced)

    def _decoded_jpeg(self, data: bytes, params: AugmentationParams) -> torch.Tensor | None:
        """(3, H, W) uint8 pixels of an RGB JPEG from `torchvision.io.decode_jpeg` (libjpeg-turbo, the decoder and
        settings PIL uses: the same pixels, tested), or None where PIL's own path must run: grayscale/CMYK JPEGs
        (PIL's conversions) and crop boxes reaching outside the image (PIL pads them)."""
        header = Image.open(io.BytesIO(data))
        top, left, crop_h, crop_w = params.crop
        inside = top >= 0 and left >= 0 and top + crop_h <= header.height and left + crop_w <= header.width
        if header.mode != "RGB" or not inside:
            return None
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)

    def split_resize_views(self, data: bytes, params: AugmentationParams) -> torch.Tensor:
        """`views` of a JPEG with the horizontal resize pass in torch (`fast_resize`; bilinear only).

        torch's vectorised uint8 resize (the kernel torchvision's tensor resize calls) weighs with 16-bit fixed
        point and drifts up to 2/255 from PIL's 22-bit weights over two passes. One torch pass over the crop rows
        stays within 1 of PIL's intermediate, and PIL's vertical pass (a convex combination with PIL's own
        weights) keeps the resized crop within 1. The stored ops then amplify that 1 (Solarize and Posterize
        thresholds flip pixels), so the option is not bit-compatible with datasets' recorded views.
        """
        pixels = self._decoded_jpeg(data, params) if self.interpolation == "bilinear" else None
        if pixels is None:
            return self.views(decode_rgb(data), params)
        top, left, crop_h, crop_w = params.crop
        size = self.image_size
        # Channels-last (HWC) in and out: torch's uint8 kernel works in that layout, and PIL reads it as is.
        crop = pixels[None, :, top:top + crop_h, left:left + crop_w].contiguous(memory_format=torch.channels_last)
        rows = interpolate(crop, size=(crop_h, size), mode="bilinear", antialias=True, align_corners=False)
        rows = np.ascontiguousarray(rows[0].permute(1, 2, 0).numpy())  # a no-op unless the kernel was skipped
        view = Image.frombuffer("RGB", (size, crop_h), rows, "raw", "RGB", 0, 1).resize((size, size), Image.BILINEAR)
        return F.pil_to_tensor(apply_stored_ops(view, params, self.reference_size))

    def _image_view(self, sample: "_RowAccess", params: AugmentationParams) -> torch.Tensor:
        data = sample.encoded_image() if self.reduce_on_decode or self.fast_resize else None
        if data is None or data[:2] != b"\xff\xd8":  # the options apply to JPEGs (start-of-image marker) only
            return self.views(sample.image(), params)
        return self.reduced_views(data, params) if self.reduce_on_decode else self.split_resize_views(data, params)

    def _captions(self, result: dict[str, Any], **captions: str) -> None:
        """Adds the caption strings and, with `tokenize_captions`, their token ids in one tokenizer call."""
        result.update(captions)
        if self.tokenize_captions:
            tokens = self._tokenize(list(captions.values()))
            for index, key in enumerate(captions):
                result["input_ids" if key == "caption" else "syn_input_ids"] = tokens[index]

    def __call__(self, row: pa.Table | Mapping[str, Any], epoch: int) -> dict[str, Any]:
        sample = _RowAccess(row)
        uid = str(sample.scalar("uid"))
        rng = np.random.default_rng(sample_seed(self.seed, f"{int(epoch)}/{uid}"))
        num_augmentations = sample.list_length("aug_params")
        num_synthetic = sample.list_length("syn_captions")
        aug_index = int(rng.integers(num_augmentations))
        syn_index = int(rng.integers(num_synthetic)) if num_synthetic else -1
        params = AugmentationParams.from_json(sample.list_item("aug_params", aug_index))
        deferred = self.defer_ops and can_defer_ops(params.ops)
        result = {
            "uid": uid,
            "views": self._image_view(sample, replace(params, ops=()) if deferred else params),
            "image_emb": sample.embedding("image_emb", aug_index),
            "aug_index": aug_index,
        }
        if self.defer_ops:
            result["deferred_ops"] = encode_deferred_ops(params if deferred else replace(params, ops=()),
                                                         self.image_size, self.reference_size)
        caption = sample.scalar("caption")
        if self.caption_mode == "random":
            choice = int(rng.integers(1 + num_synthetic))
            text = caption if choice == 0 else sample.list_item("syn_captions", choice - 1)
            result.update(text_emb=sample.embedding("text_emb", choice), syn_index=choice - 1)
            self._captions(result, caption=text)
            return result
        if self.synthetic and sample.num_embeddings("text_emb") > 1:  # the dataset has K > 0 (1 + K text rows)
            # A sample without synthetic captions: its ground truth stands in (syn_index -1 -> text_emb[0]).
            syn_text = sample.list_item("syn_captions", syn_index) if num_synthetic else caption
            result.update(syn_text_emb=sample.embedding("text_emb", 1 + syn_index))
            self._captions(result, caption=caption, syn_caption=syn_text)
        else:
            syn_index = -1
            self._captions(result, caption=caption)
        result.update(text_emb=sample.embedding("text_emb", 0), syn_index=syn_index)
        return result


__all__ = ["ReinforcedTrainingView", "load_reinforced_dataset", "row_embeddings", "tokenize"]
