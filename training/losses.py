"""Losses of (reinforced) MobileCLIP training.

MobileCLIP (Vasu et al., CVPR 2024, §3) trains the student with

    L_total(B) = (1 - lambda) * L_CLIP(B) + lambda * L_KD(B),

summed over two batches that share the same augmented images: B_real (image, ground-truth caption) and B_syn
(image, one synthetic caption). L_CLIP is the symmetric InfoNCE loss at the student's learned temperature. L_KD is,
per teacher k, the KL divergence between the teacher's and the student's row-wise softmax over the batch's
image-text similarities, in both directions (image->text and text->image, averaged), then averaged over teachers:

    L_KD = 1/(2K) * sum_k [ KL(S_{t_k}(Psi_img^k, Psi_txt^k) || S_s(Phi_img, Phi_txt))
                            + KL(S_{t_k}(Psi_txt^k, Psi_img^k) || S_s(Phi_txt, Phi_img)) ],

where KL between two row-stochastic matrices is the mean over rows of the per-row KL, t_k is teacher k's logit scale
(1/temperature: 100 for the DataCompDR teachers, 70 and 60 for the DFNDR teachers) and s = exp(logit_scale).

Apple's released code (its open_clip patch, `--distill-average-after-softmax`) minimises the soft-target cross
entropy against the teachers' averaged probabilities instead; that equals our averaged KL plus the teachers'
average entropy, a constant, so both give the same gradients. We report KL so that a student matching its teachers
scores 0.

Similarities use the global batch across processes: student embeddings are all-gathered *with* gradient
(`torch.distributed.nn.functional.all_gather`, whose backward sums the gradients of all ranks), teacher embeddings
without. With `local_loss=True` each rank scores only its own rows against all columns (open_clip's
`--local-loss`), which costs O(local x global) instead of O(global^2) memory; either way the rank-averaged loss and
the DDP-averaged gradients equal those of one process holding the whole global batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _distributed_ready(world_size: int) -> bool:
    if world_size <= 1:
        return False
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError(
            f"The loss was built for world_size={world_size} but torch.distributed is not initialised; "
            "launch with `accelerate launch` (see the training README) or pass world_size=1."
        )
    return True


def gather_with_grad(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenates `tensor` from every rank along dim 0, keeping the autograd graph (backward sums over ranks)."""
    if not _distributed_ready(world_size):
        return tensor
    # Imported only here: torch builds without distributed support have no torch.distributed.nn.
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


@torch.no_grad()
def gather_without_grad(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenates a constant tensor (teacher embeddings) from every rank along dim 0."""
    if not _distributed_ready(world_size):
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    torch.distributed.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE (CLIP) loss over the global batch.

    Args:
        local_loss: Score only this rank's rows against the gathered columns (less memory on many processes).
        rank: This process's index (`accelerator.process_index`).
        world_size: Number of processes (`accelerator.num_processes`).
    """

    def __init__(self, local_loss: bool = False, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.local_loss = local_loss
        self.rank = rank
        self.world_size = world_size

    def similarities(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor | float, constant: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns `(image->text, text->image)` logits `scale * a @ b.T` over the global batch.

        `constant=True` gathers without gradient (teacher embeddings). Inputs are computed in float32.
        """
        gather = gather_without_grad if constant else gather_with_grad
        image_embeds, text_embeds = image_embeds.float(), text_embeds.float()
        all_images, all_texts = gather(image_embeds, self.world_size), gather(text_embeds, self.world_size)
        if self.local_loss:
            return scale * image_embeds @ all_texts.t(), scale * text_embeds @ all_images.t()
        logits_per_image = scale * all_images @ all_texts.t()
        return logits_per_image, logits_per_image.t()

    def labels(self, logits: torch.Tensor) -> torch.Tensor:
        """Column index of each row's positive pair."""
        labels = torch.arange(logits.shape[0], device=logits.device)
        if self.local_loss and self.world_size > 1:
            labels = labels + self.rank * logits.shape[0]
        return labels

    def from_logits(self, logits_per_image: torch.Tensor, logits_per_text: torch.Tensor) -> torch.Tensor:
        """InfoNCE in both directions, averaged."""
        labels = self.labels(logits_per_image)
        return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        """`image_embeds`, `text_embeds`: this rank's L2-normalised (b, d) embeddings; `logit_scale`: log scale."""
        return self.from_logits(*self.similarities(image_embeds, text_embeds, logit_scale.exp()))


def kl_divergence_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(softmax(teacher_row) || softmax(student_row))."""
    return F.kl_div(
        F.log_softmax(student_logits, dim=-1),
        F.log_softmax(teacher_logits, dim=-1),
        reduction="batchmean",
        log_target=True,
    )


class ReinforcedCLIPLoss(ContrastiveLoss):
    """MobileCLIP's loss: (1 - lambda) * CLIP + lambda * KD, summed over the caption batches (see module docstring).

    Args:
        kd_weight: lambda. 0 gives plain CLIP training; 1.0 (MobileCLIP-S*, MobileCLIP2) or 0.75 (MobileCLIP-B).
        teacher_dims: Width of each teacher's embedding, in the order they are concatenated in the stored
            (or online) teacher vectors, e.g. `(768, 768)` for DataCompDR.
        teacher_logit_scales: Each teacher's logit scale (inverse temperature), same order.
        local_loss, rank, world_size: As in :class:`ContrastiveLoss`.

    `forward` returns a dict: `loss` (what to back-propagate), `clip_loss` and `distill_loss` (unweighted, summed
    over caption batches) for logging.
    """

    def __init__(
        self,
        kd_weight: float = 1.0,
        teacher_dims: Sequence[int] = (),
        teacher_logit_scales: Sequence[float] = (),
        local_loss: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(local_loss=local_loss, rank=rank, world_size=world_size)
        if not 0.0 <= kd_weight <= 1.0:
            raise ValueError(f"kd_weight (lambda) must lie in [0, 1], got {kd_weight}.")
        if len(teacher_dims) != len(teacher_logit_scales):
            raise ValueError(
                f"One logit scale per teacher is needed: got {len(teacher_dims)} teacher dims {list(teacher_dims)} "
                f"and {len(teacher_logit_scales)} logit scales {list(teacher_logit_scales)}."
            )
        if kd_weight > 0 and not teacher_dims:
            raise ValueError(f"kd_weight={kd_weight} needs at least one teacher (teacher_dims is empty).")
        self.kd_weight = kd_weight
        self.teacher_dims = list(teacher_dims)
        self.teacher_logit_scales = [float(scale) for scale in teacher_logit_scales]

    def distillation(
        self,
        student_logits: tuple[torch.Tensor, torch.Tensor],
        teacher_image_embeds: torch.Tensor,
        teacher_text_embeds: torch.Tensor,
    ) -> torch.Tensor:
        """KD term for one caption batch: both directions averaged, then averaged over teachers."""
        expected = sum(self.teacher_dims)
        for name, embeds in (("image", teacher_image_embeds), ("text", teacher_text_embeds)):
            if embeds.shape[-1] != expected:
                raise ValueError(
                    f"Teacher {name} embeddings have width {embeds.shape[-1]}, but teacher_dims {self.teacher_dims} "
                    f"add up to {expected}."
                )
        per_teacher = []
        images = teacher_image_embeds.float().split(self.teacher_dims, dim=-1)
        texts = teacher_text_embeds.float().split(self.teacher_dims, dim=-1)
        for teacher_image, teacher_text, scale in zip(images, texts, self.teacher_logit_scales):
            teacher_i2t, teacher_t2i = self.similarities(teacher_image, teacher_text, scale, constant=True)
            image_to_text = kl_divergence_rows(teacher_i2t, student_logits[0])
            text_to_image = kl_divergence_rows(teacher_t2i, student_logits[1])
            per_teacher.append(0.5 * (image_to_text + text_to_image))
        return torch.stack(per_teacher).mean()

    def forward(
        self,
        image_embeds: torch.Tensor,
        text_embeds: Sequence[torch.Tensor],
        logit_scale: torch.Tensor,
        teacher_image_embeds: torch.Tensor | None = None,
        teacher_text_embeds: Sequence[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Scores `image_embeds` against each text batch in `text_embeds` (e.g. `[ground_truth, synthetic]`).

        Args:
            image_embeds: (b, d) L2-normalised student image embeddings of this rank.
            text_embeds: One (b, d) L2-normalised student text batch per caption kind, paired row by row.
            logit_scale: The student's log logit scale (clamped to ln 100 by the caller's optimiser step).
            teacher_image_embeds: (b, sum(teacher_dims)) teacher image embeddings (any float dtype).
            teacher_text_embeds: One (b, sum(teacher_dims)) tensor per entry of `text_embeds`.
        """
        if isinstance(text_embeds, torch.Tensor):
            text_embeds = [text_embeds]
        use_kd = self.kd_weight > 0
        if use_kd and (teacher_image_embeds is None or teacher_text_embeds is None):
            raise ValueError("kd_weight > 0 needs teacher_image_embeds and teacher_text_embeds.")
        if use_kd and len(teacher_text_embeds) != len(text_embeds):
            raise ValueError(
                f"Got {len(text_embeds)} student text batches but {len(teacher_text_embeds)} teacher text batches."
            )
        scale = logit_scale.exp()
        zero = image_embeds.new_zeros((), dtype=torch.float32)
        clip_loss, distill_loss = zero, zero
        for index, texts in enumerate(text_embeds):
            student_logits = self.similarities(image_embeds, texts, scale)
            clip_loss = clip_loss + self.from_logits(*student_logits)
            if use_kd:
                distill_loss = distill_loss + self.distillation(
                    student_logits, teacher_image_embeds, teacher_text_embeds[index]
                )
        total = (1.0 - self.kd_weight) * clip_loss + self.kd_weight * distill_loss
        return {"loss": total, "clip_loss": clip_loss.detach(), "distill_loss": distill_loss.detach()}


__all__ = [
    "ContrastiveLoss",
    "ReinforcedCLIPLoss",
    "gather_with_grad",
    "gather_without_grad",
    "kl_divergence_rows",
]
