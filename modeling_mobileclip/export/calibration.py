"""Calibration data of static int8 quantization: real images (and captions, for the text encoder) from a folder of
image files (`datasets`' `imagefolder` builder) or from anything `datasets.load_dataset` reads. The caller names it
(`--calibration`); there is no default set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from .errors import CalibrationError

# Caption columns looked up, in this order, when a calibration dataset also calibrates the text encoder.
TEXT_COLUMNS = ("caption", "captions", "text", "name")


@dataclass
class CalibrationData:
    """Images (PIL) and captions for static quantization; `source` names where they came from (for the manifest)."""

    images: list
    texts: list[str]
    source: str


def load_calibration_data(spec: str, max_samples: int = 64, config: str | None = None, split: str = "train",
                          image_column: str = "image") -> CalibrationData:
    """Reads up to `max_samples` real images (evenly spaced over the source) from a folder of image files or from
    anything `datasets.load_dataset` reads (a local dataset folder or data file, or a Hub id); captions come along
    when the dataset has a caption column (`caption`, `captions`, `text` or `name`)."""
    images_only = _image_folder(spec) if Path(spec).is_dir() else None
    if images_only is not None:
        rows = images_only.select(_evenly_spaced(len(images_only), max_samples))
        return CalibrationData(_rgb(rows["image"], spec), [], f"{len(rows)} image files from {spec}")
    try:
        rows = datasets.load_dataset(spec, config, split=split)
    except Exception as error:  # datasets raises many types; the user needs the spec and the reason
        raise CalibrationError(
            f"--calibration {spec!r} is neither a folder of images nor a dataset `datasets.load_dataset` can read "
            f"(config {config!r}, split {split!r}): {type(error).__name__}: {error}"
        ) from error
    if image_column not in rows.column_names:
        raise CalibrationError(f"Calibration dataset {spec!r} has no image column {image_column!r} (columns: "
                               f"{', '.join(rows.column_names)}); pass --calibration-image-column.")
    if len(rows) == 0:
        raise CalibrationError(f"Calibration dataset {spec!r} (split {split!r}) is empty.")
    rows = rows.select(_evenly_spaced(len(rows), max_samples))
    images = _rgb(rows[image_column], spec)
    texts: list[str] = []
    column = next((c for c in TEXT_COLUMNS if c in rows.column_names), None)
    if column is not None:
        texts = [value[0] if isinstance(value, list) else value for value in rows[column]]
        texts = [text for text in texts if isinstance(text, str) and text]
    return CalibrationData(images, texts, f"{len(images)} rows of {spec} ({config or 'default'}/{split}; "
                                          f"captions: {column or 'none'})")


def _image_folder(folder: str) -> datasets.Dataset | None:
    """Every image file under `folder` (all the splits `imagefolder` infers from subfolder names), or None when the
    folder holds no image file (e.g. a dataset folder of Parquet files)."""
    try:
        splits = datasets.load_dataset("imagefolder", data_dir=str(folder))
    except (ValueError, FileNotFoundError):  # datasets' "corresponds to no data" / "no data files" for such a folder
        return None
    rows = datasets.concatenate_datasets(list(splits.values()))
    return rows if len(rows) else None


def _rgb(images, spec: str) -> list:
    """Decodes the selected images as RGB: a file that is not an image fails naming the calibration source."""
    try:
        return [image.convert("RGB") for image in images]
    except OSError as error:
        raise CalibrationError(f"A calibration image of {spec} cannot be read: {error}") from error


def _evenly_spaced(total: int, count: int) -> list[int]:
    if count >= total:
        return list(range(total))
    return sorted({int(i * total / count) for i in range(count)})


def calibration_inputs(calibration: CalibrationData, processor, component: str) -> np.ndarray | None:
    """The prepared inputs of one encoder: processor pixel values of the images, or token ids of the captions."""
    if component == "image":
        return processor(images=calibration.images, return_tensors="np")["pixel_values"].astype(np.float32)
    if not calibration.texts:
        return None
    return processor(text=calibration.texts, return_tensors="np")["input_ids"].astype(np.int64)
