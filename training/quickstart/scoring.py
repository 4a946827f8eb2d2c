"""Scoring the learning curves: every student checkpoint and the teachers on the held-out sets.

* :class:`ModelEncoder`: a MobileCLIP model in memory (a student checkpoint) behind the teachers' interface
  (`encode_images(uint8 views)`, `encode_texts(strings)`), and :class:`EnsembleEncoder`, which scores a teacher
  ensemble the way its stored embeddings are used: the mean of the teachers' cosine similarities.
* :func:`evaluate_encoder`: every metric of one encoder on one held-out set, with `evaluation`'s metric functions
  (CLIP_benchmark's definitions: top-k with `torch.topk`; retrieval recall@k over every caption and every image).
  `evaluation.zero_shot`'s pipeline itself is not used: it reads a `datasets` split through an Accelerator and the
  processor's preprocessing of PIL images, while the curves score uint8 images held in memory, resized as the
  teachers resize them, for students and teacher ensembles alike (the same numbers as before the move).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from dataset_scripts.teachers import Teacher, load_teachers
from evaluation.metrics.retrieval_recall.retrieval_recall import image_to_text_recall, text_to_image_recall
from evaluation.task_metrics import top_k_correct
from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel
from modeling_mobileclip.atomic import write_json_atomic
from modeling_mobileclip.loading import fuse_for_inference
from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor

from ..checkpointing import load_checkpoint_weights
from .held_out import RECALL_K, TOP_K, HeldOutSet, build_held_out_sets, load_style
from .settings import (CHOOSING_SET, MODES, PRIMARY_SET, STUDENT_STYLE, STUDENT_VARIANT, UNSEEN_STYLE, Settings,
                       curve_steps, model_overrides)

# The key under which a names task's per-image reciprocal ranks are stored (for `report.bootstrap_factor`).
PER_IMAGE = "reciprocal_ranks"


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


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the k highest logits (CLIP_benchmark's `accuracy`)."""
    return float(top_k_correct(logits, labels, k).float().mean())


def reciprocal_ranks(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 / the rank of each row's label among its logits: 1 + the classes scored strictly higher (as top-k counts)."""
    true = logits.gather(1, labels[:, None])
    return 1.0 / (1 + (logits > true).sum(dim=1)).float()


def retrieval_recalls(image_embeds: torch.Tensor, text_embeds: torch.Tensor, image_of_text: torch.Tensor,
                      ks: Sequence[int] = RECALL_K) -> dict[str, float]:
    """Text->image (`image_retrieval_recall@k`) and image->text (`text_retrieval_recall@k`) recall, CLIP_benchmark's
    definitions, from the `evaluation/metrics/retrieval_recall` module's own functions."""
    scores = text_embeds @ image_embeds.t()
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = text_to_image_recall(scores, image_of_text, k)
        metrics[f"text_retrieval_recall@{k}"] = image_to_text_recall(scores, image_of_text, k)
    return metrics


@torch.no_grad()
def evaluate_encoder(encoder: Any, held_out: HeldOutSet, batch_size: int = 256,
                     prompt_cache: dict[tuple[str, ...], torch.Tensor] | None = None,
                     tasks: Sequence[str] | None = None, retrieval: bool = True) -> dict[str, float]:
    """Zero-shot top-k and mean reciprocal rank for every task (or only `tasks`) and retrieval recall@k (unless
    `retrieval` is False); keys like `names/acc5`, `names/mrr`, `retrieval/...`; `names/reciprocal_ranks` lists
    every image's.

    `prompt_cache` (one dict per encoder) lets several held-out sets with the same classes encode them once.
    """
    prompt_cache = {} if prompt_cache is None else prompt_cache
    images = _batched(encoder.encode_images, held_out.images, batch_size)
    metrics: dict[str, float] = {}
    for task in held_out.tasks:
        if tasks is not None and task.name not in tasks:
            continue
        key = tuple(task.prompts)
        if key not in prompt_cache:
            prompt_cache[key] = _batched(encoder.encode_texts, task.prompts, batch_size)
        logits = 100.0 * images @ prompt_cache[key].t()
        for k in TOP_K:
            metrics[f"{task.name}/acc{k}"] = top_k_accuracy(logits, task.labels, k)
        ranks = reciprocal_ranks(logits, task.labels)
        metrics[f"{task.name}/mrr"] = float(ranks.mean())
        if task.name == "names":  # per image, for intervals over the images (`report.bootstrap_factor`)
            metrics[f"{task.name}/{PER_IMAGE}"] = [round(float(value), 7) for value in ranks]
    if not retrieval:
        return metrics
    texts = [caption for captions in held_out.captions for caption in captions]
    image_of_text = torch.tensor([i for i, captions in enumerate(held_out.captions) for _ in captions])
    recalls = retrieval_recalls(images, _batched(encoder.encode_texts, texts, batch_size), image_of_text)
    metrics.update({f"retrieval/{name}": value for name, value in recalls.items()})
    return metrics


def evaluate_on_sets(encoder: Any, sets: dict[str, HeldOutSet]) -> dict[str, dict[str, float]]:
    """`evaluate_encoder` on every set, class prompts shared between sets encoded once."""
    cache: dict[tuple[str, ...], torch.Tensor] = {}
    return {name: evaluate_encoder(encoder, held_out, prompt_cache=cache) for name, held_out in sets.items()}


def evaluate_curve_point(encoder: Any, sets: dict[str, HeldOutSet]) -> dict[str, dict[str, float]]:
    """What a point between the curve's ends needs: the names task on the unseen style's reported and choosing
    images (the factor's metrics). The ends (step 0 and the last step) get every metric on every set
    (`evaluate_on_sets`); skipping the rest in between (retrieval over ~7,500 captions above all) makes a point
    about 5x cheaper, which the quickstart spends on curve points every 50 steps."""
    cache: dict[tuple[str, ...], torch.Tensor] = {}
    return {name: evaluate_encoder(encoder, sets[name], prompt_cache=cache, tasks=("names",), retrieval=False)
            for name in (PRIMARY_SET, CHOOSING_SET)}


def student_at(step: int, mode: str, settings: Settings, output_dir: Path) -> MobileCLIPModel:
    """The student's weights after `step` steps: the shared initialisation, a checkpoint or the final folder (with
    `ema_decay`, the EMA of the weights, which starts from the initialisation)."""
    if step == settings.student_steps:
        return MobileCLIPModel.from_pretrained(output_dir / "students" / mode)
    set_seed(settings.seed)  # what `train` does right before building the student: the same initial weights
    model = MobileCLIPModel(MobileCLIPConfig.from_variant(STUDENT_VARIANT, **model_overrides(settings)))
    if step:
        load_checkpoint_weights(model, output_dir / "runs" / mode / "checkpoints" / f"step_{step}",
                                ema=bool(settings.ema_decay))
    return model


def _point_path(points_dir: Path, mode: str, step: int) -> Path:
    # Step 0 is the shared initialisation (same seed, same construction): evaluated once for both students.
    return points_dir / ("init.json" if step == 0 else f"{mode}_step_{step}.json")


def score_curve_points(mode: str, settings: Settings, held_out: dict[str, HeldOutSet], output_dir: Path,
                       device: str, steps: Sequence[int], token_cache: dict[tuple[str, ...], torch.Tensor],
                       progress: tqdm | None = None) -> None:
    """Scores `steps` of one student's curve that are not stored yet, each into its own file (reruns reuse it)."""
    tokenizer = MobileCLIPProcessor.from_variant(STUDENT_VARIANT,
                                                 model_max_length=settings.text_context_length).tokenizer
    points_dir = output_dir / "curve_points"
    points_dir.mkdir(parents=True, exist_ok=True)
    for step in steps:
        path = _point_path(points_dir, mode, step)
        if not path.is_file():
            student = fuse_for_inference(student_at(step, mode, settings, output_dir))  # scored only: fused is faster
            encoder = ModelEncoder(student, tokenizer, f"{mode}@{step}", torch.device(device), token_cache)
            ends = step in (0, settings.student_steps)
            point = {"step": step, **(evaluate_on_sets if ends else evaluate_curve_point)(encoder, held_out)}
            write_json_atomic(path, point)
        if progress is not None:
            progress.update()


def score_own_curve(mode: str, settings: Settings, output_dir: Path, device: str) -> None:
    """One student's curve, the shared initialisation included, scored by the process that trained it while the
    other student still trains (see `runs.train_students`); stage 4 reuses the points."""
    held_out = build_held_out_sets(load_style(STUDENT_STYLE, settings.rows_per_style),
                                   load_style(UNSEEN_STYLE, settings.rows_per_style))
    score_curve_points(mode, settings, held_out, output_dir, device, curve_steps(settings), token_cache={})


def evaluate_students(settings: Settings, held_out: dict[str, HeldOutSet], output_dir: Path,
                      device: str) -> dict[str, list[dict]]:
    """Every curve point of both students on every held-out set; each point is stored once (reruns reuse it)."""
    token_cache: dict[tuple[str, ...], torch.Tensor] = {}
    steps = curve_steps(settings)
    with tqdm(total=len(MODES) * len(steps), desc="learning curves", disable=settings.scale == "tiny") as progress:
        for mode in MODES:
            score_curve_points(mode, settings, held_out, output_dir, device, steps, token_cache, progress)
    points_dir = output_dir / "curve_points"
    return {mode: [json.loads(_point_path(points_dir, mode, step).read_text()) for step in steps] for mode in MODES}


def evaluate_teachers(specs: list[str], held_out: dict[str, HeldOutSet], device: str) -> dict[str, dict]:
    ensemble = EnsembleEncoder(load_teachers(specs, torch.device(device), torch.float32))
    return evaluate_on_sets(ensemble, held_out)


__all__ = [
    "EnsembleEncoder", "ModelEncoder", "PER_IMAGE", "evaluate_curve_point", "evaluate_encoder", "evaluate_on_sets",
    "evaluate_students", "evaluate_teachers", "reciprocal_ranks", "retrieval_recalls", "score_curve_points",
    "score_own_curve", "student_at", "top_k_accuracy",
]
