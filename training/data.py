"""Training data, map-style: loading and validating the dataset, and the per-sample views.

Order and randomness are functions of `(seed, epoch, row)` only:

* `training.order.GlobalBatchSampler` orders each epoch by a seeded permutation of all rows, evaluated lazily (its
  memory does not grow with the rows), and cuts it into global batches; process `r` of `W` takes rows
  `[r*b, (r+1)*b)` of each global batch. So the global batch at a step is the same for 1 or N processes (what makes
  a 2-process run equal a 1-process run on the same batch), and a run resumes exactly from its step counter alone:
  step -> (epoch, batch within the epoch).
* :class:`TrainingViews` derives each sample's random choices (which stored augmentation and synthetic caption,
  drawn by `dataset_scripts.training_view` from `(seed, epoch, uid)`; for data without stored augmentations a
  fresh view and one caption of a list, from `(seed, epoch, row)`), independent of DataLoader workers and GPUs,
  and of `mode`: a clip baseline and a reinforced student with the same seed and `caption_mode` see the same
  views and captions. The streaming reader (`training/streaming.py`) uses the same views.

The dataset is map-style (`load_dataset` without streaming), which `datasets` backs with an Arrow cache on disk.

Views are uint8 (3, S, S) at the student's resolution, under the batch key `views`; they are normalised once, on
the device, by `training.step.normalize_views` (the online teachers resize and normalise the same uint8 views
themselves). With `augment_on_device`, reinforced views arrive resized but not yet augmented, with `deferred_ops`,
and the training loop applies those RandAugment ops to the batch on the device first. Teacher embeddings stay float16
in the batch; the loss casts them to float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from dataset_scripts.augmentation import AugmentationConfig, apply_augmentation, sample_augmentation, sample_seed
from dataset_scripts.dataset_specs import open_dataset
from dataset_scripts.dr_format import load_reinforcement_metadata
from dataset_scripts.training_view import ReinforcedTrainingView

from .config import TrainingConfig


class DataValidationError(ValueError):
    """The training data does not fit the configuration: the message names the dataset, column/row and the fix."""


# Stored teacher embeddings are L2-normalised per teacher (dr_format): a slice whose rows are not of unit norm
# means the card's per-teacher dims do not cut the stored vectors where the teachers' embeddings meet.
NORM_CHECK_ROWS, NORM_TOLERANCE = 4, 0.05

# The reinforced format's columns (dataset_scripts/dr_format.py); its rows are read by name, not via *_column keys.
REINFORCED_COLUMNS = ("uid", "image", "caption", "syn_captions", "aug_params", "image_emb", "text_emb")


@dataclass
class DataSpec:
    """What validation found out about the training data."""

    reinforced_format: bool
    """All reinforced columns present: views replay stored augmentations (any mode)."""
    use_synthetic_captions: bool
    teacher_specs: list[str]
    teacher_dims: list[int]
    augmentation: AugmentationConfig
    """How the stored augmentations were recorded (the card's), or the defaults."""
    num_rows: int | None
    """None for a stream (its length is not read up front)."""
    card_logit_scales: list[float] | None = None
    """Mode reinforced: the teachers' learned logit scales recorded in the card (None unless all are recorded)."""


def load_train_dataset(config: TrainingConfig) -> datasets.Dataset:
    """`load_dataset(train_data, train_data_config, split=train_split)`, cut to `max_train_samples`."""
    if not config.train_data:
        raise DataValidationError("No training data: set `train_data` (a local folder/file or a Hub dataset id).")
    try:
        dataset = open_dataset(config.train_data, config.train_split, config.train_data_config)
    except ValueError as error:
        if "Unknown split" in str(error):
            raise DataValidationError(
                f"{config.train_data} has no split {config.train_split!r} ({error}); set `train_split`."
            ) from error
        raise
    if config.max_train_samples is not None:
        dataset = dataset.select(range(min(config.max_train_samples, len(dataset))))
    return dataset


def _card_metadata(config: TrainingConfig):
    try:
        return load_reinforcement_metadata(config.train_data)
    except Exception as error:  # no card, no metadata block, or an unreachable Hub repo
        raise DataValidationError(
            f"mode {config.mode!r} reads the teachers (names, dims, order) from the dataset card of "
            f"{config.train_data}, but it could not be read: {error}. Reinforced datasets written by "
            "`python -m dataset_scripts.reinforce` carry it in README.md."
        ) from error


def validate_dataset(
    dataset: datasets.Dataset, config: TrainingConfig, teacher_dims: list[int] | None = None,
    metadata: Any = None,
) -> DataSpec:
    """Checks the columns against the mode and the stored embeddings against the teachers; returns a :class:`DataSpec`.

    `teacher_dims` are the online teachers' dims (mode `online`); mode `reinforced` reads them from the card, or
    from `metadata` (a `ReinforcementMetadata`) for data without a card (Apple's official shards). A stream is
    validated on its first rows (`dataset` is then a small head).
    """
    columns = set(dataset.column_names)
    where = f"training data {config.train_data}"
    reinforced_format = all(name in columns for name in REINFORCED_COLUMNS)
    if config.mode == "reinforced":
        missing = [name for name in REINFORCED_COLUMNS if name not in columns]
        if missing:
            raise DataValidationError(
                f"{where} lacks column(s) {missing} needed by mode 'reinforced' (it has {sorted(columns)}). This "
                "does not look like a reinforced dataset: reinforce it with `python -m dataset_scripts.reinforce`, "
                "or train with mode 'clip' (no teacher) or 'online' (teachers in the loop)."
            )
    elif not reinforced_format:
        missing = [name for name in (config.image_column, config.caption_column) if name not in columns]
        if missing:
            raise DataValidationError(
                f"{where} lacks column(s) {missing} (image_column / caption_column) needed by mode "
                f"{config.mode!r}; it has {sorted(columns)}. Set image_column / caption_column."
            )
    if len(dataset) == 0:
        raise DataValidationError(f"{where} split {config.train_split!r} is empty.")

    has_syn = config.synthetic_caption_column in columns
    card_logit_scales = None
    augmentation = AugmentationConfig()
    specs: list[str] = list(config.teachers)
    dims: list[int] = list(teacher_dims or [])
    if reinforced_format:
        metadata = metadata or _card_metadata(config)
        augmentation = metadata.augmentation
        has_syn = metadata.num_synthetic_captions > 0
    if config.mode == "reinforced":
        card_specs = [teacher.spec for teacher in metadata.teachers]
        if config.teachers and config.teachers != card_specs:
            raise DataValidationError(
                f"`teachers` {config.teachers} differ from the teachers recorded in the card of {config.train_data}: "
                f"{card_specs} (embedding order matters for the per-teacher logit scales). Drop `teachers` or fix it."
            )
        specs, dims, card_logit_scales = card_specs, metadata.teacher_dims, metadata.teacher_logit_scales
        stored_rows = {"image_emb": metadata.num_augmentations, "text_emb": 1 + metadata.num_synthetic_captions}
        for column, rows in stored_rows.items():
            shape = tuple(getattr(dataset.features[column], "shape", ()) or ())
            if shape and shape != (rows, sum(dims)):
                raise DataValidationError(
                    f"{where}: column {column!r} stores embeddings of shape {shape}, but the card's teachers "
                    f"{card_specs} have dims {dims} (sum {sum(dims)}) and imply {(rows, sum(dims))}."
                )
        check_teacher_slices(dataset, where, card_specs, dims)
    if config.mode != "clip":
        scales = config.teacher_logit_scales
        if scales is not None and len(scales) != len(dims):
            raise DataValidationError(
                f"teacher_logit_scales {scales} has {len(scales)} values, but there are {len(dims)} teachers "
                f"{specs}; give one scale per teacher, in that order."
            )
    return DataSpec(
        reinforced_format=reinforced_format,
        use_synthetic_captions=config.use_synthetic_captions and has_syn,
        teacher_specs=specs,
        teacher_dims=dims,
        augmentation=augmentation,
        num_rows=len(dataset),
        card_logit_scales=card_logit_scales,
    )


def check_teacher_slices(dataset: datasets.Dataset, where: str, specs: list[str], dims: list[int]) -> None:
    """The card's per-teacher dims must cut the first rows' stored embeddings into unit-norm slices.

    Shapes only check the sum of the dims; an edited card ([16, 24] for [24, 16]) would train every teacher's
    distillation term against a mix of two teachers. Checked on image_emb (all views) and text_emb row 0 (the
    ground-truth caption; later rows may be zero padding) of the first few rows.
    """
    sample = dataset.select_columns(["image_emb", "text_emb"]).select(range(min(NORM_CHECK_ROWS, len(dataset))))
    sample = sample.with_format("numpy")[:]
    for column, vectors in (("image_emb", sample["image_emb"]), ("text_emb", np.asarray(sample["text_emb"])[:, :1])):
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, sum(dims))
        offset = 0
        for spec, dim in zip(specs, dims):
            norms = np.linalg.norm(vectors[:, offset: offset + dim], axis=-1)
            offset += dim
            if np.abs(norms - 1.0).max() > NORM_TOLERANCE:
                raise DataValidationError(
                    f"{where}: the dataset card's teacher {spec!r} (dim {dim}, embedding columns "
                    f"{offset - dim}..{offset - 1} of {sum(dims)}) does not cut unit-norm vectors out of {column!r}: "
                    f"L2 norms of its slice in the first rows are {np.round(norms[:8], 3).tolist()}, expected 1 "
                    f"(+-{NORM_TOLERANCE}). The card's teacher dims {dims} do not match how the embeddings were "
                    "stored; restore the card's `datacompdr.teachers` dims (README.md) or re-reinforce the data."
                )


class TrainingViews:
    """One training sample from one row and its epoch: the student's uint8 view, captions and (reinforced) teacher
    targets. Shared by the map-style reader below and the streaming one (`training/streaming.py`).

    Reinforced-format rows (a one-row Arrow table or a dict) go through `dataset_scripts.training_view` (one stored
    augmentation replayed at the student's size, one synthetic caption, the matching teacher embeddings); other rows
    (decoded: PIL image, caption string or list) get a fresh RandomResizedCrop + RandAugment view per epoch, drawn
    from `(seed, epoch, key)`. `caption_mode` "random" draws one caption among the ground truth and the synthetic
    ones instead of a B_syn caption; without synthetic captions (none in the data, or `use_synthetic_captions`
    false) both modes give the ground truth.
    """

    def __init__(self, config: TrainingConfig, spec: DataSpec, image_size: int, resample: str, tokenizer: Any):
        self.config, self.spec = config, spec
        self.image_size, self.resample = image_size, resample
        self.with_targets = config.mode == "reinforced"
        # "random" would otherwise still draw synthetic captions that use_synthetic_captions switched off.
        self.caption_mode = config.caption_mode if spec.use_synthetic_captions else "both"
        if spec.reinforced_format:
            self.view = ReinforcedTrainingView(
                tokenizer, image_size=image_size, interpolation=resample, reference_size=spec.augmentation.size,
                seed=config.seed, caption_mode=self.caption_mode, synthetic=spec.use_synthetic_captions,
                tokenize_captions=False,  # the Collator tokenizes the whole batch in one call
                defer_ops=config.augment_on_device,
            )
        else:
            self.augmentation = AugmentationConfig(
                size=image_size, scale=tuple(config.crop_scale), interpolation=resample,
                rand_augment=config.rand_augment,
            )

    def __call__(self, row: Any, epoch: int, key: int | str) -> dict[str, Any]:
        return self._reinforced(row, epoch) if self.spec.reinforced_format else self._plain(row, epoch, key)

    def _reinforced(self, row: Any, epoch: int) -> dict[str, Any]:
        out = self.view(row, epoch)
        keep = ["views", "deferred_ops", "input_ids", "caption", "syn_input_ids", "syn_caption"]
        if self.with_targets:
            keep += ["image_emb", "text_emb", "syn_text_emb"]
        return {name: out[name] for name in keep if name in out}

    def _plain(self, record: dict[str, Any], epoch: int, key: int | str) -> dict[str, Any]:
        config = self.config
        generator = torch.Generator().manual_seed(sample_seed(config.seed, f"{epoch}/{key}"))
        image = record[config.image_column]
        if not isinstance(image, Image.Image):
            raise ValueError(f"column {config.image_column!r} holds {type(image).__name__}, not an image.")
        image = image.convert("RGB")
        captions = record[config.caption_column]
        captions = [captions] if isinstance(captions, str) else list(captions or [])
        if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            raise ValueError(f"column {config.caption_column!r} needs a caption string or a list of them, "
                             f"got {record[config.caption_column]!r}.")
        caption = captions[int(torch.randint(len(captions), (1,), generator=generator))]
        params = sample_augmentation(image.height, image.width, self.augmentation, generator)
        view = apply_augmentation(image, params, self.image_size, self.resample)
        sample: dict[str, Any] = {"views": pil_to_tensor(view), "caption": caption}
        if self.spec.use_synthetic_captions and self.caption_mode == "random":
            synthetic = list(record[config.synthetic_caption_column] or [])
            choice = int(torch.randint(1 + len(synthetic), (1,), generator=generator))
            sample["caption"] = synthetic[choice - 1] if choice else caption
        elif self.spec.use_synthetic_captions:
            synthetic = record[config.synthetic_caption_column]
            if not synthetic:
                raise ValueError(f"column {config.synthetic_caption_column!r} is empty; set "
                                 "use_synthetic_captions false for data without synthetic captions.")
            sample["syn_caption"] = synthetic[int(torch.randint(len(synthetic), (1,), generator=generator))]
        return sample


class TrainingSamples(torch.utils.data.Dataset):
    """Map-style reader: `samples[(row, epoch)]` -> :class:`TrainingViews` of that row at that epoch."""

    def __init__(self, dataset: datasets.Dataset, views: TrainingViews):
        config, spec = views.config, views.spec
        self.where, self.views, self.length = config.train_data, views, len(dataset)
        if spec.reinforced_format:
            self.rows = dataset.with_format("arrow")  # float16 kept, images decoded once, in the view
        else:
            columns = [config.image_column, config.caption_column]
            if spec.use_synthetic_captions:
                columns.append(config.synthetic_caption_column)
            self.rows = dataset.select_columns(columns)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        row, epoch = key
        try:
            return self.views(self.rows[row], epoch, row)
        except (ValueError, KeyError, OSError, IndexError) as error:
            raise DataValidationError(f"{self.where} row {row}: {type(error).__name__}: {error}") from error


class Collator:
    """Stacks views and teacher targets; tokenizes captions not tokenized yet (in the DataLoader workers).

    `keep_text` keeps the caption strings too (`captions`, `syn_captions`): the online teachers tokenize them with
    their own tokenizers.
    """

    def __init__(self, tokenizer: Any, keep_text: bool = False):
        self.tokenizer, self.keep_text = tokenizer, keep_text

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for key in ("views", "deferred_ops", "input_ids", "syn_input_ids", "image_emb", "text_emb", "syn_text_emb"):
            if key in samples[0]:
                batch[key] = torch.stack([s[key] for s in samples])
        for text_key, ids_key in (("caption", "input_ids"), ("syn_caption", "syn_input_ids")):
            if text_key not in samples[0]:
                continue
            texts = [s[text_key] for s in samples]
            if ids_key not in batch:
                batch[ids_key] = self.tokenizer(texts, return_tensors="pt")["input_ids"]
            if self.keep_text:
                batch[text_key + "s"] = texts
        return batch


__all__ = [
    "Collator",
    "DataSpec",
    "DataValidationError",
    "TrainingSamples",
    "TrainingViews",
    "load_train_dataset",
    "validate_dataset",
]
