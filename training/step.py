"""The compute of one training step: student and teacher features, the loss over the global batch, its gradients.

Each process's batch of one optimizer step holds `per_device_batch_size x gradient_accumulation_steps` samples
(training.batch_sizes.resolve_batch_sizes): `gradient_accumulation_steps` micro-batches of `per_device_batch_size`, the
samples one forward pass holds. Gradient accumulation (open_clip's `--accum-freq`) cannot simply add the losses of
micro-batches: the CLIP and distillation losses score every image against every caption of the global batch, so a
micro-batch alone would see fewer negatives and other softmax rows. Instead, :func:`accumulate_gradients`

1. embeds every micro-batch under `torch.no_grad()` (student and teachers) and concatenates the embeddings;
2. for each micro-batch j, embeds it again *with* gradient, splices those rows into the cached embeddings, computes
   the loss of the whole global batch and back-propagates it.

Backward j yields the gradient that flows through micro-batch j's rows; the sum over j is the gradient of the
whole batch, while only one micro-batch's activations are alive at a time. Three details keep that sum exact:

* the learned logit scale enters the loss directly, not through a micro-batch, so only the last backward takes its
  gradient (open_clip takes it in every backward, which multiplies it by the number of micro-batches);
* the second forward of micro-batch j replays the random generator state of its first one, so stochastic depth
  and dropout draw the same masks in both (the spliced rows match the cached ones);
* BatchNorm running statistics updated by the no-grad pass are put back, so each micro-batch updates them once.
  BatchNorm layers in training mode still normalise with micro-batch statistics, as any micro-batching does:
  `freeze_batchnorm` (or SyncBatchNorm over a large enough micro-batch) makes the result match the large batch.

With one accumulation step the step is a single forward and backward, exactly as without this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from dataset_scripts.pixels import normalize_pixels
from dataset_scripts.teachers import load_teachers
from training.config import ConfigError
from training.losses import ReinforcedCLIPLoss


Normalize = Callable[[torch.Tensor], torch.Tensor]


def normalize_views(views: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (B, 3, S, S) views -> the student's normalised float input, in the memory format the run asked for.

    The views arrive with whatever strides decoding left (often channels-last, from HWC images), so the format is
    set explicitly: the one the run asked for, the same for every batch (a compiled model is specialised to it)."""
    pixels = normalize_pixels(views.float().div_(255.0), mean, std)
    return pixels.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class OnlineTeachers:
    """The teacher ensemble of mode `online`: embeds the student's own uint8 views and captions in the loop."""

    def __init__(self, specs: list[str], device: torch.device, mixed_precision: str):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)
        self.teachers = load_teachers(specs, device, dtype)
        self.dims = [teacher.dim for teacher in self.teachers]

    def __call__(
        self, views: torch.Tensor, caption_batches: list[list[str]]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        image = torch.cat([t.encode_images(views) for t in self.teachers], dim=-1)
        texts = [torch.cat([t.encode_texts(captions) for t in self.teachers], dim=-1) for captions in caption_batches]
        return image, texts


Teachers = Callable[[torch.Tensor, list[list[str]]], tuple[torch.Tensor, list[torch.Tensor]]]


@dataclass
class StepFeatures:
    """The embeddings of one batch that the loss compares, row i of every tensor belonging to sample i."""

    image_embeds: torch.Tensor
    """(b, d) student image embeddings."""
    text_embeds: list[torch.Tensor]
    """One (b, d) student text batch per caption kind: the ground truth, then the synthetic captions if any."""
    teacher_image_embeds: torch.Tensor | None = None
    """(b, sum(teacher_dims)) teacher image embeddings; None without teachers."""
    teacher_text_embeds: list[torch.Tensor] | None = None
    """One (b, sum(teacher_dims)) teacher text batch per entry of `text_embeds`; None without teachers."""

    @classmethod
    def concatenate(cls, parts: Sequence[StepFeatures]) -> StepFeatures:
        """The features of consecutive micro-batches as those of the batch they came from."""

        def rows(tensors: Iterator[torch.Tensor]) -> torch.Tensor:
            return torch.cat(list(tensors))

        first = parts[0]
        kinds = range(len(first.text_embeds))
        return cls(
            image_embeds=rows(part.image_embeds for part in parts),
            text_embeds=[rows(part.text_embeds[kind] for part in parts) for kind in kinds],
            teacher_image_embeds=None if first.teacher_image_embeds is None
            else rows(part.teacher_image_embeds for part in parts),
            teacher_text_embeds=None if first.teacher_text_embeds is None
            else [rows(part.teacher_text_embeds[kind] for part in parts) for kind in kinds],
        )

    def with_student_rows(self, start: int, image_embeds: torch.Tensor,
                          text_embeds: list[torch.Tensor]) -> StepFeatures:
        """A copy whose student rows `start:start + len(image_embeds)` are the given (gradient-carrying) ones."""
        end = start + image_embeds.shape[0]

        def splice(cached: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
            return torch.cat([cached[:start], fresh, cached[end:]])

        return StepFeatures(
            image_embeds=splice(self.image_embeds, image_embeds),
            text_embeds=[splice(cached, fresh) for cached, fresh in zip(self.text_embeds, text_embeds, strict=True)],
            teacher_image_embeds=self.teacher_image_embeds,
            teacher_text_embeds=self.teacher_text_embeds,
        )


def student_features(model: nn.Module, batch: dict[str, Any],
                     normalize: Normalize) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Image embeddings and one text batch per caption kind, from a single forward (both caption kinds at once)."""
    text_keys = [key for key in ("input_ids", "syn_input_ids") if key in batch]
    input_ids = torch.cat([batch[key] for key in text_keys])
    outputs = model(input_ids=input_ids, pixel_values=normalize(batch["views"]), return_dict=True)
    return outputs.image_embeds, list(outputs.text_embeds.split(batch["input_ids"].shape[0]))


def teacher_features(batch: dict[str, Any],
                     teachers: Teachers | None) -> tuple[torch.Tensor | None, list[torch.Tensor] | None]:
    """The online teachers' embeddings of the batch, else the stored ones (mode reinforced), else none (mode clip)."""
    if teachers is not None:
        captions = [batch["captions"]] + ([batch["syn_captions"]] if "syn_captions" in batch else [])
        return teachers(batch["views"], captions)
    if "image_emb" in batch:
        texts = [batch["text_emb"]] + ([batch["syn_text_emb"]] if "syn_input_ids" in batch else [])
        return batch["image_emb"], texts
    return None, None


def compute_features(model: nn.Module, batch: dict[str, Any], normalize: Normalize,
                     teachers: Teachers | None) -> StepFeatures:
    """Everything the loss needs about `batch`: the student's embeddings (with gradient if enabled) and the
    teachers'."""
    image_embeds, text_embeds = student_features(model, batch, normalize)
    return StepFeatures(image_embeds, text_embeds, *teacher_features(batch, teachers))


def compute_losses(loss_fn: ReinforcedCLIPLoss, features: StepFeatures,
                   logit_scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """The loss over the global batch (the loss gathers the other processes' rows) from this process's features."""
    return loss_fn(features.image_embeds, features.text_embeds, logit_scale, features.teacher_image_embeds,
                   features.teacher_text_embeds)


def micro_batch_size(process_batch_size: int, accumulation_steps: int) -> int:
    """Samples per micro-batch (the per-device batch): a process's batch of one optimizer step, per-device batch x
    accumulation steps samples, must split into `accumulation_steps` equal parts."""
    if process_batch_size % accumulation_steps:
        raise ConfigError(
            f"The process's step batch of {process_batch_size} samples cannot be split into "
            f"gradient_accumulation_steps={accumulation_steps} equal micro-batches; it must hold "
            f"per_device_batch_size x {accumulation_steps} samples (training.batch_sizes.resolve_batch_sizes)."
        )
    return process_batch_size // accumulation_steps


def split_batch(batch: dict[str, Any], accumulation_steps: int) -> list[dict[str, Any]]:
    """`accumulation_steps` consecutive micro-batches of equal size; tensors and caption lists are cut alike."""
    size = micro_batch_size(batch["input_ids"].shape[0], accumulation_steps)
    return [{key: value[index * size:(index + 1) * size] for key, value in batch.items()}
            for index in range(accumulation_steps)]


@contextlib.contextmanager
def _batchnorm_statistics_kept(model: nn.Module) -> Iterator[None]:
    """Restores the running statistics of BatchNorm layers in training mode on exit: the no-grad pass must not
    count a micro-batch that the gradient pass counts again."""
    saved = [(buffer, buffer.clone()) for module in model.modules()
             if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training
             for buffer in module.buffers(recurse=False)]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _random_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_random_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def accumulate_gradients(
    model: nn.Module,
    batch: dict[str, Any],
    loss_fn: ReinforcedCLIPLoss,
    logit_scale: torch.Tensor,
    normalize: Normalize,
    teachers: Teachers | None,
    accumulation_steps: int,
    accelerator: Accelerator,
) -> dict[str, torch.Tensor]:
    """Back-propagates the loss of the global batch into `.grad`, this process's share `accumulation_steps`
    micro-batches at a time (see the module docstring); returns the losses of the whole batch.

    Args:
        model: The prepared (possibly DDP-wrapped) student.
        batch: This process's batch on the device: uint8 `views`, `input_ids` (and `syn_input_ids`), the stored
            teacher embeddings in mode reinforced, the caption strings in mode online.
        loss_fn: The loss over the global batch.
        logit_scale: The student's learned log logit scale (a parameter of the unwrapped model).
        normalize: uint8 views -> the student's float input (see :func:`normalize_views`).
        teachers: The online teachers, or None (stored embeddings or no teachers).
        accumulation_steps: Micro-batches per step; 1 runs one forward and one backward over the batch.
        accelerator: Runs the backward (loss scaling) and skips the DDP all-reduce of all but the last micro-batch.
    """
    if accumulation_steps == 1:
        losses = compute_losses(loss_fn, compute_features(model, batch, normalize, teachers), logit_scale)
        accelerator.backward(losses["loss"])
        return losses

    micro_batches = split_batch(batch, accumulation_steps)
    random_states, parts = [], []
    with torch.no_grad(), _batchnorm_statistics_kept(model):
        for micro_batch in micro_batches:
            random_states.append(_random_state(accelerator.device))
            parts.append(compute_features(model, micro_batch, normalize, teachers))
    cached = StepFeatures.concatenate(parts)  # teachers are embedded once, here

    start = 0
    for index, (micro_batch, random_state) in enumerate(zip(micro_batches, random_states)):
        last = index == accumulation_steps - 1
        # DDP all-reduces the gradients summed over all micro-batches once, in the last backward.
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            _set_random_state(random_state, accelerator.device)
            image_embeds, text_embeds = student_features(model, micro_batch, normalize)
            features = cached.with_student_rows(start, image_embeds, text_embeds)
            # The logit scale reaches the loss directly, not through micro-batch rows: take its gradient once.
            losses = compute_losses(loss_fn, features, logit_scale if last else logit_scale.detach())
            accelerator.backward(losses["loss"])
        start += image_embeds.shape[0]
    # Every backward scored the whole batch, so the last one's losses are the batch's.
    return {name: value.detach() for name, value in losses.items()}


__all__ = [
    "OnlineTeachers",
    "StepFeatures",
    "accumulate_gradients",
    "compute_features",
    "compute_losses",
    "micro_batch_size",
    "normalize_views",
    "split_batch",
    "student_features",
    "teacher_features",
]
