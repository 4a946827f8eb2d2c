"""The learning-efficiency experiment's library: held-out emoji tasks, model encoders, learning curves, the factor.

`training.quickstart` is the command line; this module holds what it measures:

* :class:`HeldOutSet`: one held-out set of emoji images as uint8 tensors with its zero-shot tasks (emoji *names*,
  the primary metric; subcategories; categories) and its captions for retrieval.
* :class:`ModelEncoder`: a MobileCLIP model in memory (a student checkpoint) behind the teachers' interface
  (`encode_images(uint8 views)`, `encode_texts(strings)`), and :class:`EnsembleEncoder`, which scores a teacher
  ensemble the way its stored embeddings are used: the mean of the teachers' cosine similarities.
* :func:`evaluate_encoder`: every metric of one encoder on one held-out set (CLIP_benchmark's definitions: top-k
  with `torch.topk`; retrieval recall@k over every caption and every image).
* :func:`learning_efficiency_factor`: total steps of the plain student divided by the first step at which the
  reinforced student's curve reaches the plain student's final score (linear interpolation between points).
* :func:`plot_learning_curves`: the PNG (matplotlib, no display needed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modeling_mobileclip.atomic import atomic_path
from dataset_scripts.teachers import Teacher

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


# ------------------------------------------------------------------------------------------------------ encoders


class ModelEncoder(Teacher):
    """A MobileCLIP model in memory behind the teacher interface (resize, normalise, encode, L2-normalise)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, name: str, device: torch.device,
                 token_cache: dict[tuple[str, ...], torch.Tensor] | None = None):
        super().__init__(name, device, torch.float32)
        config = model.config
        self.model, self.tokenizer = model.to(device).eval(), tokenizer
        # Every checkpoint of a learning curve tokenizes the same texts: a shared cache tokenizes them once.
        self.token_cache = {} if token_cache is None else token_cache
        self.image_size, self.image_mean, self.image_std = config.image_size, config.image_mean, config.image_std
        self.logit_scale = float(model.logit_scale.detach().exp())

    def _image_features(self, pixel_values):
        return self.model.encode_image(pixel_values)

    def _text_features(self, texts):
        key = tuple(texts)
        if key not in self.token_cache:
            self.token_cache[key] = self.tokenizer(texts, return_tensors="pt")["input_ids"]
        return self.model.encode_text(self.token_cache[key].to(self.device))


class EnsembleEncoder:
    """Several encoders as one: concatenated unit embeddings / sqrt(T), so a dot product is the mean cosine."""

    def __init__(self, encoders: Sequence[Any]):
        self.encoders = list(encoders)

    def _joined(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts, dim=-1) / math.sqrt(len(parts))

    def encode_images(self, views: torch.Tensor) -> torch.Tensor:
        return self._joined([encoder.encode_images(views) for encoder in self.encoders])

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self._joined([encoder.encode_texts(texts) for encoder in self.encoders])


def _batched(encode, items, batch_size: int) -> torch.Tensor:
    return torch.cat([encode(items[i: i + batch_size]).float().cpu() for i in range(0, len(items), batch_size)])


# ------------------------------------------------------------------------------------------------------ metrics


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the k highest logits (CLIP_benchmark's `accuracy`)."""
    from evaluation.task_metrics import top_k_correct

    return float(top_k_correct(logits, labels, k).float().mean())


def retrieval_recalls(image_embeds: torch.Tensor, text_embeds: torch.Tensor, image_of_text: torch.Tensor,
                      ks: Sequence[int] = RECALL_K) -> dict[str, float]:
    """Text->image (`image_retrieval_recall@k`) and image->text (`text_retrieval_recall@k`) recall, CLIP_benchmark's
    definitions, from the `evaluation/metrics/retrieval_recall` module's own functions."""
    from evaluation.metrics.retrieval_recall.retrieval_recall import image_to_text_recall, text_to_image_recall

    scores = text_embeds @ image_embeds.t()
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = text_to_image_recall(scores, image_of_text, k)
        metrics[f"text_retrieval_recall@{k}"] = image_to_text_recall(scores, image_of_text, k)
    return metrics


@torch.no_grad()
def evaluate_encoder(encoder: Any, held_out: HeldOutSet, batch_size: int = 256,
                     prompt_cache: dict[tuple[str, ...], torch.Tensor] | None = None) -> dict[str, float]:
    """Zero-shot top-k for every task and retrieval recall@k; keys like `names/acc5`, `retrieval/...`.

    `prompt_cache` (one dict per encoder) lets several held-out sets with the same classes encode them once.
    """
    prompt_cache = {} if prompt_cache is None else prompt_cache
    images = _batched(encoder.encode_images, held_out.images, batch_size)
    metrics: dict[str, float] = {}
    for task in held_out.tasks:
        key = tuple(task.prompts)
        if key not in prompt_cache:
            prompt_cache[key] = _batched(encoder.encode_texts, task.prompts, batch_size)
        logits = 100.0 * images @ prompt_cache[key].t()
        for k in TOP_K:
            metrics[f"{task.name}/acc{k}"] = top_k_accuracy(logits, task.labels, k)
    texts = [caption for captions in held_out.captions for caption in captions]
    image_of_text = torch.tensor([i for i, captions in enumerate(held_out.captions) for _ in captions])
    recalls = retrieval_recalls(images, _batched(encoder.encode_texts, texts, batch_size), image_of_text)
    metrics.update({f"retrieval/{name}": value for name, value in recalls.items()})
    return metrics


def evaluate_on_sets(encoder: Any, sets: dict[str, HeldOutSet]) -> dict[str, dict[str, float]]:
    """`evaluate_encoder` on every set, class prompts shared between sets encoded once."""
    cache: dict[tuple[str, ...], torch.Tensor] = {}
    return {name: evaluate_encoder(encoder, held_out, prompt_cache=cache) for name, held_out in sets.items()}


def chance_levels(held_out: HeldOutSet) -> dict[str, float]:
    """What uniform random guessing scores in expectation on this set."""
    levels = {f"{task.name}/acc{k}": min(1.0, k / len(task.prompts)) for task in held_out.tasks for k in TOP_K}
    counts = [len(captions) for captions in held_out.captions]
    num_images, num_captions = len(counts), sum(counts)
    for k in RECALL_K:
        levels[f"retrieval/image_retrieval_recall@{k}"] = min(1.0, k / num_images)
        levels[f"retrieval/text_retrieval_recall@{k}"] = sum(
            1 - math.comb(num_captions - c, k) / math.comb(num_captions, k) for c in counts) / num_images
    return levels


# ------------------------------------------------------------------------------------------------------ factor


def first_step_reaching(steps: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """The first step at which the piecewise-linear curve through (steps, values) reaches `target` (None: never)."""
    for i, (step, value) in enumerate(zip(steps, values)):
        if value >= target:
            if i == 0:
                return float(step)
            before_step, before = steps[i - 1], values[i - 1]
            return before_step + (target - before) / (value - before) * (step - before_step)
    return None


def learning_efficiency_factor(plain: tuple[Sequence[int], Sequence[float]],
                               reinforced: tuple[Sequence[int], Sequence[float]]) -> dict[str, float | None]:
    """X = the plain student's total steps / the step at which the reinforced curve reaches the plain final value.

    If the reinforced curve never reaches it, X is measured the other way round and lies below 1: the step at which
    the plain curve reaches the reinforced student's final value, divided by the total steps.
    """
    (plain_steps, plain_values), (steps, values) = plain, reinforced
    total, target = plain_steps[-1], plain_values[-1]
    reached = first_step_reaching(steps, values, target)
    if reached is not None:
        factor = math.inf if reached <= 0 else total / reached
        return {"factor": factor, "plain_final": target, "reinforced_step_reaching_plain_final": reached}
    plain_reaching = first_step_reaching(plain_steps, plain_values, values[-1])
    return {"factor": (plain_reaching or 0.0) / total, "plain_final": target,
            "reinforced_step_reaching_plain_final": None, "plain_step_reaching_reinforced_final": plain_reaching}


# ------------------------------------------------------------------------------------------------------ plot


def plot_learning_curves(curves: dict[str, Any], metric: str, path: Path, title: str) -> Path:
    """Both students' `metric` against steps on every held-out set, the teacher as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = curves["held_out_sets"]
    figure, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.2), squeeze=False)
    for axis, (set_name, description) in zip(axes[0], sets.items()):
        for mode, color in (("clip", "tab:blue"), ("reinforced", "tab:orange")):
            points = curves["students"][mode]
            axis.plot([p["step"] for p in points], [100 * p[set_name][metric] for p in points], marker="o",
                      markersize=3, color=color, label=f"{mode} student")
        teacher = curves.get("teacher")
        if teacher:
            axis.axhline(100 * teacher[set_name][metric], color="tab:green", linestyle="--", label="teacher")
        axis.axhline(100 * curves["chance"][set_name][metric], color="gray", linestyle=":", label="chance")
        axis.set_title(description, fontsize=10)
        axis.set_xlabel("training step")
        axis.set_ylabel(f"{metric} (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    with atomic_path(path) as staged:
        figure.savefig(staged, dpi=110, format="png")
    plt.close(figure)
    return path


__all__ = [
    "EnsembleEncoder",
    "HeldOutSet",
    "ModelEncoder",
    "ZeroShotTask",
    "build_held_out_set",
    "chance_levels",
    "evaluate_encoder",
    "evaluate_on_sets",
    "first_step_reaching",
    "images_as_uint8",
    "learning_efficiency_factor",
    "plot_learning_curves",
    "retrieval_recalls",
    "top_k_accuracy",
]
