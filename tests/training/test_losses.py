"""training/losses.py against direct reference computations, open_clip's losses and a real 2-process gather."""

import math
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import free_port
from training.losses import ContrastiveLoss, ReinforcedCLIPLoss


def _normalized(*shape, generator):
    return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)


def _reference_kl(teacher_logits, student_logits):
    """KL(P || Q) for row-stochastic P, Q written out element by element, averaged over rows."""
    p = torch.softmax(teacher_logits.double(), dim=1)
    q = torch.softmax(student_logits.double(), dim=1)
    return (p * (p.log() - q.log())).sum(dim=1).mean()


def _reference_infonce(logits):
    labels = torch.arange(logits.shape[0])
    log_p_rows = logits.double().log_softmax(dim=1)
    log_p_cols = logits.double().t().log_softmax(dim=1)
    return -0.5 * (log_p_rows[labels, labels].mean() + log_p_cols[labels, labels].mean())


def _reference_total(kd_weight, image, texts, scale, teacher_image, teacher_texts, dims, teacher_scales):
    """The paper's L_final = sum over caption batches of (1 - l) * CLIP + l * KD, written from its definition."""
    total = 0.0
    for text, teacher_text in zip(texts, teacher_texts):
        student = scale * image.double() @ text.double().t()
        clip = _reference_infonce(student)
        kd = 0.0
        offset = 0
        for dim, t in zip(dims, teacher_scales):
            ti, tt = teacher_image[:, offset : offset + dim].double(), teacher_text[:, offset : offset + dim].double()
            teacher = t * ti @ tt.t()
            kd = kd + 0.5 * (_reference_kl(teacher, student) + _reference_kl(teacher.t(), student.t()))
            offset += dim
        kd = kd / len(dims)
        total = total + (1 - kd_weight) * clip + kd_weight * kd
    return total


@pytest.mark.parametrize("kd_weight", [1.0, 0.75, 0.3])
def test_reinforced_loss_equals_paper_definition_two_teachers_two_caption_batches(kd_weight):
    g = torch.Generator().manual_seed(0)
    b, d, dims = 6, 8, (5, 7)
    image = _normalized(b, d, generator=g).float().requires_grad_()
    texts = [_normalized(b, d, generator=g).float() for _ in range(2)]
    # Teachers are stored L2-normalised per teacher, in float16 (the DataCompDR storage type).
    teacher_image = torch.cat([_normalized(b, k, generator=g) for k in dims], dim=1).half()
    teacher_texts = [torch.cat([_normalized(b, k, generator=g) for k in dims], dim=1).half() for _ in range(2)]
    logit_scale = torch.tensor(math.log(20.0))
    loss_fn = ReinforcedCLIPLoss(kd_weight, teacher_dims=dims, teacher_logit_scales=(70.0, 60.0))
    out = loss_fn(image, texts, logit_scale, teacher_image, teacher_texts)
    reference = _reference_total(kd_weight, image, texts, 20.0, teacher_image, teacher_texts, dims, (70.0, 60.0))
    torch.testing.assert_close(out["loss"].double(), reference, rtol=1e-5, atol=1e-6)
    out["loss"].backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_distillation_is_zero_when_student_matches_teacher_and_positive_otherwise():
    g = torch.Generator().manual_seed(1)
    image, text = _normalized(5, 6, generator=g).float(), _normalized(5, 6, generator=g).float()
    loss_fn = ReinforcedCLIPLoss(1.0, teacher_dims=(6,), teacher_logit_scales=(30.0,))
    same = loss_fn(image, [text], torch.tensor(math.log(30.0)), image, [text])
    assert same["distill_loss"].item() == pytest.approx(0.0, abs=1e-6)
    other = loss_fn(image, [text], torch.tensor(math.log(10.0)), image, [text])
    assert other["distill_loss"].item() > 1e-3


def test_lambda_zero_equals_plain_clip_loss_of_model_and_open_clip():
    from modeling_mobileclip.modeling_mobileclip import contrastive_loss
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(2)
    image, text = _normalized(7, 16, generator=g).float(), _normalized(7, 16, generator=g).float()
    logit_scale = torch.tensor(math.log(1 / 0.07))
    ours = ReinforcedCLIPLoss(0.0)(image, [text], logit_scale)
    assert ours["distill_loss"].item() == 0.0
    scale = logit_scale.exp()
    torch.testing.assert_close(ours["loss"], ClipLoss()(image, text, scale))
    torch.testing.assert_close(ours["loss"], contrastive_loss(scale * text @ image.t()))
    torch.testing.assert_close(ours["loss"].double(), _reference_infonce(scale * image @ text.t()))
    torch.testing.assert_close(ContrastiveLoss()(image, text, logit_scale), ours["loss"])


def test_matches_open_clip_distill_loss_up_to_teacher_entropy():
    """open_clip's DistillClipLoss (soft-target cross entropy) = our KL + the teacher's entropy (a constant)."""
    from open_clip.loss import DistillClipLoss

    g = torch.Generator().manual_seed(3)
    b, d, dt = 8, 16, 12
    image = _normalized(b, d, generator=g).float().requires_grad_()
    text = _normalized(b, d, generator=g).float().requires_grad_()
    teacher_image, teacher_text = _normalized(b, dt, generator=g).float(), _normalized(b, dt, generator=g).float()
    logit_scale = torch.tensor(math.log(25.0))
    ours = ReinforcedCLIPLoss(1.0, teacher_dims=(dt,), teacher_logit_scales=(100.0,))(
        image, [text], logit_scale, teacher_image, [teacher_text]
    )
    theirs = DistillClipLoss()(image, text, logit_scale.exp(), teacher_image, teacher_text, 100.0, output_dict=True)
    teacher_logits = 100.0 * teacher_image @ teacher_text.t()
    entropy = 0.5 * sum(
        -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean() for logits in (teacher_logits, teacher_logits.t())
    )
    torch.testing.assert_close(ours["distill_loss"] + entropy, theirs["distill_loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["clip_loss"], theirs["contrastive_loss"], rtol=1e-6, atol=1e-6)
    # Same gradients: the entropy does not depend on the student.
    grad_ours = torch.autograd.grad(ours["loss"], (image, text))
    grad_theirs = torch.autograd.grad(theirs["distill_loss"], (image, text))
    for a, b_ in zip(grad_ours, grad_theirs):
        torch.testing.assert_close(a, b_, rtol=1e-4, atol=1e-6)


def test_two_teachers_equal_apple_average_after_softmax_up_to_entropy():
    """Apple's `--distill-average-after-softmax`: soft CE against the mean of the teachers' probabilities."""
    g = torch.Generator().manual_seed(4)
    b, d, dims, scales = 6, 10, (8, 4), (70.0, 60.0)
    image, text = _normalized(b, d, generator=g).float(), _normalized(b, d, generator=g).float()
    t_image = torch.cat([_normalized(b, k, generator=g) for k in dims], 1).float()
    t_text = torch.cat([_normalized(b, k, generator=g) for k in dims], 1).float()
    scale = 15.0
    ours = ReinforcedCLIPLoss(1.0, dims, scales)(image, [text], torch.tensor(math.log(scale)), t_image, [t_text])
    student = scale * image @ text.t()
    teachers = [s * a @ c.t() for s, a, c in zip(scales, t_image.split(dims, 1), t_text.split(dims, 1))]
    apple, entropy = 0.0, 0.0
    for transpose in (False, True):
        probs = [(t.t() if transpose else t).softmax(1) for t in teachers]
        target = sum(probs) / len(probs)
        apple += 0.5 * -(target * (student.t() if transpose else student).log_softmax(1)).sum(1).mean()
        entropy += 0.5 * sum(-(p * p.log()).sum(1).mean() for p in probs) / len(probs)
    torch.testing.assert_close(ours["distill_loss"] + entropy, apple, rtol=1e-5, atol=1e-6)


def test_input_validation_messages():
    with pytest.raises(ValueError, match="kd_weight"):
        ReinforcedCLIPLoss(1.5, (4,), (100.0,))
    with pytest.raises(ValueError, match="One logit scale per teacher"):
        ReinforcedCLIPLoss(1.0, (4, 4), (100.0,))
    loss_fn = ReinforcedCLIPLoss(1.0, (4, 4), (100.0, 100.0))
    x = torch.randn(3, 5)
    with pytest.raises(ValueError, match=r"width 6, but teacher_dims \[4, 4\] add up to 8"):
        loss_fn(x, [x], torch.tensor(0.0), torch.randn(3, 6), [torch.randn(3, 6)])


# --- real 2-process gather (gloo) --------------------------------------------------------------------------------


def _loss_and_gradients(image, texts, teacher_image, teacher_texts, logit_scale, rows, local_loss, rank, world_size):
    local_image = image[rows].clone().requires_grad_()
    local_texts = [t[rows].clone().requires_grad_() for t in texts]
    scale = logit_scale.clone().requires_grad_()
    loss_fn = ReinforcedCLIPLoss(0.75, (6, 4), (100.0, 50.0), local_loss=local_loss, rank=rank, world_size=world_size)
    out = loss_fn(local_image, local_texts, scale, teacher_image[rows], [t[rows] for t in teacher_texts])
    out["loss"].backward()
    return out["loss"].detach(), local_image.grad, [t.grad for t in local_texts], scale.grad


def _distributed_worker(rank, world_size, port, inputs, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        b = inputs[0].shape[0]
        rows = slice(rank * b // world_size, (rank + 1) * b // world_size)
        for local_loss in (False, True):
            loss, image_grad, text_grads, scale_grad = _loss_and_gradients(*inputs, rows, local_loss, rank, world_size)
            # DDP averages parameter gradients over ranks: do the same for the shared logit scale and scale the
            # embedding gradients (which flow into each rank's own parameters) alike.
            torch.distributed.all_reduce(scale_grad)
            results[(rank, local_loss)] = (loss, image_grad / world_size, [g / world_size for g in text_grads],
                                           scale_grad / world_size)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_gather_gives_single_process_loss_and_gradients():
    """Rank-averaged loss and DDP-averaged gradients equal one process holding the global batch (with and
    without local_loss)."""
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(5)
    b, d = 8, 12
    inputs = (
        _normalized(b, d, generator=g).float(),
        [_normalized(b, d, generator=g).float() for _ in range(2)],
        _normalized(b, 10, generator=g).half(),
        [_normalized(b, 10, generator=g).half() for _ in range(2)],
        torch.tensor(math.log(30.0)),
    )
    ref_loss, ref_image, ref_texts, ref_scale = _loss_and_gradients(*inputs, slice(None), False, 0, 1)
    results = mp.Manager().dict()
    mp.spawn(_distributed_worker, args=(2, free_port(), inputs, results), nprocs=2, join=True)
    for local_loss in (False, True):
        ranks = [results[(r, local_loss)] for r in range(2)]
        torch.testing.assert_close((ranks[0][0] + ranks[1][0]) / 2, ref_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.cat([r[1] for r in ranks]), ref_image, rtol=1e-4, atol=1e-6)
        for k in range(2):
            torch.testing.assert_close(torch.cat([r[2][k] for r in ranks]), ref_texts[k], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ranks[0][3], ref_scale, rtol=1e-4, atol=1e-6)
