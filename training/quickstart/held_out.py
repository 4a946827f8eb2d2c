"""The bundled emoji data the quickstart trains and measures on, and its held-out sets with their zero-shot tasks.

A :class:`HeldOutSet` is one held-out set of emoji images as uint8 tensors with its zero-shot tasks (emoji *names*,
the primary metric; subcategories; categories) and its captions for retrieval.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from modeling_mobileclip.atomic import atomic_path

from .settings import CHOOSING_SET, EMOJI_DIR, PRIMARY_SET, STUDENT_STYLE, STYLE_NAMES, TEMPLATES, UNSEEN_STYLE


RECALL_K = (1, 5)
TOP_K = (1, 5)


@dataclass
class ZeroShotTask:
    """Classes named by prompts (one template) and each image's class index."""

    name: str
    prompts: list[str]
    labels: torch.Tensor


@dataclass
class HeldOutSet:
    """Held-out emoji: uint8 images, zero-shot tasks and captions (`captions[i]` belong to image i)."""

    name: str
    description: str
    images: torch.Tensor
    tasks: list[ZeroShotTask]
    captions: list[list[str]]


def load_style(style: str, limit: int | None) -> datasets.Dataset:
    """All rows of one bundled emoji style (or the first `limit`)."""
    if not (EMOJI_DIR / f"{style}.parquet").is_file():
        raise FileNotFoundError(f"The bundled emoji data is missing from {EMOJI_DIR} (expected {style}.parquet); "
                                "reinstall the package (`pip install -e .`).")
    rows = datasets.load_dataset(str(EMOJI_DIR), style, split="train")
    return rows.select(range(min(limit, len(rows)))) if limit else rows


def train_rows(rows: datasets.Dataset) -> datasets.Dataset:
    return rows.filter(lambda value: value == "train", input_columns="split")


def write_parquet_once(rows: datasets.Dataset, path: Path) -> Path:
    """`rows` as one Parquet file (images keep their PNG bytes); written once, atomically."""
    if not path.is_file():
        with atomic_path(path) as staged:
            rows.to_parquet(str(staged))
    return path


def images_as_uint8(images: Sequence[Any]) -> torch.Tensor:
    """PIL images (all of one size) -> uint8 (N, 3, H, W)."""
    arrays = [np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images]
    sizes = {array.shape for array in arrays}
    if len(sizes) != 1:
        raise ValueError(f"Held-out images must share one size, got {sorted(sizes)}.")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def build_held_out_set(name: str, description: str, rows, classnames: dict[str, Any],
                       templates: dict[str, str], all_names: Sequence[str]) -> HeldOutSet:
    """One held-out set from emoji rows (`image`, `name`, `subcategory`, `category`, `captions`).

    `all_names`: the classes of the names task (every emoji of the style, not only the held-out rows);
    `classnames`: the bundled `classnames.json` (prompt names of subcategories and categories).
    """
    tasks = []
    for task, column, prompt_names in (("names", "name", {n: n for n in all_names}),
                                       ("subcategories", "subcategory", classnames["subcategory_prompt_names"]),
                                       ("categories", "category", classnames["category_prompt_names"])):
        classes = list(prompt_names)
        index = {label: i for i, label in enumerate(classes)}
        missing = sorted({value for value in rows[column] if value not in index})
        if missing:
            raise ValueError(f"{description}: column {column!r} has values without a class: {missing[:5]}.")
        tasks.append(ZeroShotTask(task, [templates[task].format(prompt_names[c]) for c in classes],
                                  torch.tensor([index[value] for value in rows[column]])))
    captions = [[c for c in cell if c and c.strip()] for cell in rows["captions"]]
    empty = [i for i, cell in enumerate(captions) if not cell]
    if empty:
        raise ValueError(f"{description}: rows {empty[:5]} have no caption.")
    return HeldOutSet(name, description, images_as_uint8(rows["image"]), tasks, captions)


def is_choosing_row(index: int) -> bool:
    """Every third emoji of the unseen style (by row) is for choosing settings; the reported figures use the rest."""
    return index % 3 == 0


def build_held_out_sets(student_style: datasets.Dataset, unseen_style: datasets.Dataset) -> dict[str, HeldOutSet]:
    """The Twemoji `val` rows, the unseen style's reported two thirds and its choosing third; names are ranked among
    all the style's names in each."""
    classnames = json.loads((EMOJI_DIR / "classnames.json").read_text())
    val = student_style.filter(lambda value: value == "val", input_columns="split")
    choosing = [i for i in range(len(unseen_style)) if is_choosing_row(i)]
    reported = [i for i in range(len(unseen_style)) if not is_choosing_row(i)]
    unseen = STYLE_NAMES[UNSEEN_STYLE]
    return {
        "val": build_held_out_set(
            "val", f"{STYLE_NAMES[STUDENT_STYLE]} val ({len(val)} held-out emoji)", val, classnames, TEMPLATES,
            student_style["name"]),
        PRIMARY_SET: build_held_out_set(
            PRIMARY_SET, f"{unseen}, unseen style ({len(reported)} of {len(unseen_style)} emoji: the reported two "
            "thirds)", unseen_style.select(reported), classnames, TEMPLATES, unseen_style["name"]),
        CHOOSING_SET: build_held_out_set(
            CHOOSING_SET, f"{unseen}, choosing third ({len(choosing)} emoji: for settings, never reported)",
            unseen_style.select(choosing), classnames, TEMPLATES, unseen_style["name"]),
    }


def chance_levels(held_out: HeldOutSet) -> dict[str, float]:
    """What uniform random guessing scores in expectation on this set."""
    levels = {f"{task.name}/acc{k}": min(1.0, k / len(task.prompts)) for task in held_out.tasks for k in TOP_K}
    for task in held_out.tasks:  # a uniform rank r in 1..C: E[1/r] = H_C / C
        levels[f"{task.name}/mrr"] = sum(1 / rank for rank in range(1, len(task.prompts) + 1)) / len(task.prompts)
    counts = [len(captions) for captions in held_out.captions]
    num_images, num_captions = len(counts), sum(counts)
    for k in RECALL_K:
        levels[f"retrieval/image_retrieval_recall@{k}"] = min(1.0, k / num_images)
        levels[f"retrieval/text_retrieval_recall@{k}"] = sum(
            1 - math.comb(num_captions - c, k) / math.comb(num_captions, k) for c in counts) / num_images
    return levels


__all__ = [
    "HeldOutSet", "RECALL_K", "TOP_K", "ZeroShotTask", "build_held_out_set", "build_held_out_sets", "chance_levels",
    "images_as_uint8", "is_choosing_row", "load_style", "train_rows", "write_parquet_once",
]
