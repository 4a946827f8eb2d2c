"""Gradient accumulation (`gradient_accumulation_steps`, training/step.py) against the large batch it stands for.

The oracle is always plain autograd over the whole batch: one forward of all 8 samples and one backward for the
deterministic model; for a model with stochastic depth, dropout and BatchNorm in training mode, the 4 micro-batch
forwards kept alive together and back-propagated once. The unit tests run the model in float64, so that float32
summation order (about 1e-6 relative on these gradients) neither hides nor fakes a difference: accumulated
gradients, loss and BatchNorm statistics must match the oracle to 1e-9. End to end (float32, as trained), 3 steps
of `training.train.main` with 4 micro-batches of 2 (per-device batch 2 x 4 accumulation steps) must land on the
weights of the run with a per-device batch of 8 without accumulation to 1e-6, and 2 DDP processes in 2 micro-batches
each must produce the gradients of 1 process without accumulation.
"""

import copy
import sys

import pytest
import torch
import torch.nn.functional as F

from model_helpers import perturb_
from train_helpers import (
    TINY,
    build_reinforced_dataset,
    launch_two_processes,
    resolved_config,
    run_checked,
    saved_weights,
    tiny_config,
    write_driver,
)
from torch_threads import single_torch_thread  # noqa: F401  (one intra-op thread for the tiny models)


BATCH, TEACHER_DIMS, TEACHER_SCALES = 8, (6, 4), (70.0, 60.0)
ATOL = 1e-9  # float64 unit tests; float64 rounding differences between the two paths are ~1e-14
WORDS = ["red", "blue", "cat", "dog", "face", "heart", "star", "moon", "tree", "fish", "sun", "car"]


def _tiny_model(seed: int = 0, drop_path_rate: float = 0.0, attention_dropout: float = 0.0):
    from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel

    config = MobileCLIPConfig.from_variant("mobileclip-tiny")
    config.vision_config.drop_path_rate = drop_path_rate
    config.text_config.attention_dropout = attention_dropout
    torch.manual_seed(seed)
    return MobileCLIPModel(config)


def _freeze_batchnorm(model):
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def _token_ids(generator: torch.Generator) -> torch.Tensor:
    """CLIP-style rows: <bos>, 3-10 random tokens, <eos>, padding."""
    ids = torch.zeros(BATCH, 77, dtype=torch.long)
    for row in range(BATCH):
        length = int(torch.randint(3, 11, (1,), generator=generator))
        ids[row, 0] = 49406
        ids[row, 1 : 1 + length] = torch.randint(1, 49000, (length,), generator=generator)
        ids[row, 1 + length] = 49407
    return ids


def _teacher_embeddings(count: int, generator: torch.Generator) -> torch.Tensor:
    raw = torch.randn(count, sum(TEACHER_DIMS), generator=generator, dtype=torch.float64)
    return torch.cat([F.normalize(part, dim=-1) for part in raw.split(TEACHER_DIMS, dim=-1)], dim=-1)


def _random_batch(mode: str, seed: int = 0) -> dict:
    """A per-device batch as the DataLoader makes it for `mode` (reinforced: with synthetic captions); teacher
    embeddings in float64."""
    generator = torch.Generator().manual_seed(seed)
    batch = {"views": torch.randint(0, 256, (BATCH, 3, 64, 64), dtype=torch.uint8, generator=generator),
             "input_ids": _token_ids(generator)}
    if mode in ("reinforced", "online"):
        batch["syn_input_ids"] = _token_ids(generator)
    if mode == "reinforced":
        batch.update(image_emb=_teacher_embeddings(BATCH, generator), text_emb=_teacher_embeddings(BATCH, generator),
                     syn_text_emb=_teacher_embeddings(BATCH, generator))
    if mode == "online":
        def captions():
            return [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (3,), generator=generator))
                    for _ in range(BATCH)]

        batch.update(captions=captions(), syn_captions=captions())
    return batch


def _stub_teachers(views: torch.Tensor, caption_batches: list[list[str]]):
    """Deterministic per-sample 'teachers': a row depends only on its own view or caption, so a mis-cut caption
    list or view batch changes the distillation targets."""
    image = views.double().flatten(1)[:, : sum(TEACHER_DIMS)] + 1.0
    texts = [torch.tensor([[float(ord(c)) for c in caption[: sum(TEACHER_DIMS)].ljust(sum(TEACHER_DIMS))]
                           for caption in captions], dtype=torch.float64) for captions in caption_batches]
    return F.normalize(image, dim=-1), [F.normalize(text, dim=-1) for text in texts]


def _loss_fn(mode: str):
    from training.losses import ReinforcedCLIPLoss

    if mode == "clip":
        return ReinforcedCLIPLoss(0.0)
    return ReinforcedCLIPLoss(0.75, TEACHER_DIMS, TEACHER_SCALES)


def _normalize(views: torch.Tensor) -> torch.Tensor:
    """uint8 views -> the float64 input of the float64 test models."""
    return (views.double() / 255.0 - 0.5) / 0.25


def _large_batch_reference(model, batch: dict, mode: str, normalize=_normalize):
    """The oracle: plain autograd, one forward over all samples and captions, one backward."""
    kinds = ["input_ids"] + (["syn_input_ids"] if "syn_input_ids" in batch else [])
    outputs = model(input_ids=torch.cat([batch[kind] for kind in kinds]), pixel_values=normalize(batch["views"]),
                    return_dict=True)
    texts = list(outputs.text_embeds.split(BATCH))
    teacher_image, teacher_texts = None, None
    if mode == "reinforced":
        teacher_image, teacher_texts = batch["image_emb"], [batch["text_emb"], batch["syn_text_emb"]]
    elif mode == "online":
        teacher_image, teacher_texts = _stub_teachers(batch["views"], [batch["captions"], batch["syn_captions"]])
    losses = _loss_fn(mode)(outputs.image_embeds, texts, model.logit_scale, teacher_image, teacher_texts)
    losses["loss"].backward()
    return losses, _gradients(model)


def _gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _accumulated(model, batch: dict, mode: str, steps: int, normalize=_normalize):
    """Gradients of `accumulate_gradients`, and the batch size and grad mode of every forward it ran."""
    from accelerate import Accelerator

    from training.step import accumulate_gradients

    forwards = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: forwards.append((kwargs["pixel_values"].shape[0], torch.is_grad_enabled())),
        with_kwargs=True,
    )
    try:
        losses = accumulate_gradients(model, batch, _loss_fn(mode), model.logit_scale, normalize,
                                      _stub_teachers if mode == "online" else None, steps, Accelerator(cpu=True))
    finally:
        hook.remove()
    return losses, _gradients(model), forwards


def _assert_gradients_close(ours: dict, reference: dict, atol: float = ATOL) -> None:
    assert ours.keys() == reference.keys() and len(reference) > 100
    worst = max((ours[name] - reference[name]).abs().max().item() for name in reference)
    assert worst <= atol, f"max |accumulated - large batch| = {worst:.3g}"
    assert max(grad.abs().max().item() for grad in reference.values()) > 1e-3  # not trivially zero


# --- unit: one step, accumulated vs large batch ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["reinforced", "clip", "online"])
def test_four_micro_batches_give_the_gradients_and_loss_of_the_large_batch(fresh_accelerate_state, mode):
    """Reinforced: two caption batches (ground truth + synthetic) and distillation; clip: one caption batch, no
    teacher; online: the teachers embed each micro-batch's views and caption strings."""
    batch = _random_batch(mode)
    model = _freeze_batchnorm(_tiny_model()).double()
    with torch.no_grad():
        model.logit_scale.fill_(2.5)  # a scale with a non-trivial gradient
    reference_model = copy.deepcopy(model)
    reference_losses, reference = _large_batch_reference(reference_model, batch, mode)

    losses, accumulated, forwards = _accumulated(model, batch, mode, steps=4)

    _assert_gradients_close(accumulated, reference)
    assert abs(accumulated["logit_scale"] - reference["logit_scale"]).item() <= ATOL
    for name in ("loss", "clip_loss", "distill_loss"):
        assert abs(losses[name] - reference_losses[name]).item() <= ATOL, name
    if mode != "clip":
        assert reference_losses["distill_loss"] > 0
    # Memory: every forward sees one micro-batch of 2; 4 without gradient (the cache), 4 with.
    assert sorted(forwards) == [(2, False)] * 4 + [(2, True)] * 4


def test_one_accumulation_step_is_exactly_the_plain_step(fresh_accelerate_state):
    """gradient_accumulation_steps 1, in float32 as trained: one forward with gradient, bit-identical gradients
    and loss."""
    def normalize(views):
        return (views.float() / 255.0 - 0.5) / 0.25

    batch = _random_batch("reinforced")
    model = _freeze_batchnorm(_tiny_model())
    reference_losses, reference = _large_batch_reference(copy.deepcopy(model), batch, "reinforced", normalize)

    losses, accumulated, forwards = _accumulated(model, batch, "reinforced", steps=1, normalize=normalize)

    assert forwards == [(BATCH, True)]
    assert accumulated.keys() == reference.keys()
    for name, grad in reference.items():
        assert torch.equal(accumulated[name], grad), name
    assert torch.equal(losses["loss"], reference_losses["loss"])


def test_stochastic_layers_and_batchnorm_statistics_match_the_micro_batch_graph(fresh_accelerate_state):
    """Stochastic depth, attention dropout and BatchNorm in training mode: the oracle keeps the autograd graphs of
    the 4 micro-batch forwards (from the same random state) and back-propagates the whole-batch loss once. The
    cache must replay each forward's random masks, and BatchNorm statistics must count each micro-batch once."""
    batch = _random_batch("reinforced")
    # Random layer scales and BatchNorm statistics: with the initial 1e-5 layer scales dropped paths barely matter.
    model = perturb_(_tiny_model(drop_path_rate=0.5, attention_dropout=0.3)).double().train()
    initial_statistics = {name: b.clone() for name, b in model.named_buffers() if "running_mean" in name}
    reference_model = copy.deepcopy(model)

    with torch.no_grad():  # the test exercises randomness: two draws of the same input differ in both towers
        probe = copy.deepcopy(model)
        first, second = (probe(input_ids=batch["input_ids"], pixel_values=_normalize(batch["views"]))
                         for _ in range(2))
        assert (first.image_embeds - second.image_embeds).abs().max() > 1e-3
        assert (first.text_embeds - second.text_embeds).abs().max() > 1e-3

    torch.manual_seed(1234)
    images, ground_truth, synthetic = [], [], []
    for start in range(0, BATCH, 2):
        rows = slice(start, start + 2)
        outputs = reference_model(input_ids=torch.cat([batch["input_ids"][rows], batch["syn_input_ids"][rows]]),
                                  pixel_values=_normalize(batch["views"][rows]), return_dict=True)
        images.append(outputs.image_embeds)
        ground_truth.append(outputs.text_embeds[:2])
        synthetic.append(outputs.text_embeds[2:])
    reference_losses = _loss_fn("reinforced")(
        torch.cat(images), [torch.cat(ground_truth), torch.cat(synthetic)], reference_model.logit_scale,
        batch["image_emb"], [batch["text_emb"], batch["syn_text_emb"]],
    )
    reference_losses["loss"].backward()

    torch.manual_seed(1234)
    losses, accumulated, _ = _accumulated(model, batch, "reinforced", steps=4)

    _assert_gradients_close(accumulated, _gradients(reference_model))
    assert abs(losses["loss"] - reference_losses["loss"]).item() <= ATOL
    reference_buffers = dict(reference_model.named_buffers())
    for name, buffer in model.named_buffers():
        assert torch.allclose(buffer.double(), reference_buffers[name].double(), rtol=0, atol=ATOL), name
    changed = [name for name, value in initial_statistics.items()
               if not torch.equal(value, reference_buffers[name])]
    assert changed, "BatchNorm running statistics were not updated by the micro-batches"


# --- bad input --------------------------------------------------------------------------------------------------------


def test_batch_that_does_not_split_into_micro_batches_is_refused_naming_both_numbers(fresh_accelerate_state,
                                                                                   tmp_path):
    from training.config import ConfigError
    from training.config_loading import parse_args
    from training.step import micro_batch_size
    from training.train import train

    with pytest.raises(ConfigError, match=r"step batch of 6 samples .* gradient_accumulation_steps=4"):
        micro_batch_size(6, 4)
    assert micro_batch_size(8, 4) == 2
    # A global batch that no number of processes splits into 4 accumulation steps: refused with the config.
    with pytest.raises(ConfigError, match=r"global_batch_size 10 is not a multiple of gradient_accumulation_steps 4"):
        tiny_config(per_device_batch_size=None, global_batch_size=10, gradient_accumulation_steps=4)
    # Against the processes: checked at start-up, before any data is read (the data path does not exist).
    with pytest.raises(ConfigError, match=r"global_batch_size 16 != per_device_batch_size 2 x "
                                          r"gradient_accumulation_steps 4 x 1 process = 8"):
        train(tiny_config(train_data=str(tmp_path / "missing"), per_device_batch_size=2, global_batch_size=16,
                          gradient_accumulation_steps=4, output_dir=str(tmp_path / "out")))
    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps must be >= 1 \(or null\), got 0"):
        parse_args(["--gradient_accumulation_steps", "0"])


# --- end to end -------------------------------------------------------------------------------------------------------


def test_training_with_four_micro_batches_reaches_the_weights_of_the_large_batch_run(
    fresh_accelerate_state, tmp_path, capsys
):
    """3 AdamW steps (crossing an epoch: 16 rows, global batch 8) with frozen BatchNorm, synthetic captions and
    lambda 0.75: `--per_device_batch_size 2 --gradient_accumulation_steps 4` (the global batch of 8 derived) ends on
    the weights, gradients and losses of `--per_device_batch_size 8` without accumulation."""
    from accelerate.state import AcceleratorState, GradientState

    from training.train import main

    data = build_reinforced_dataset(tmp_path / "data", num_rows=16)
    # AdamW divides by sqrt(v) + eps, which magnifies the float32 rounding differences (~1e-7) of near-zero
    # gradients by up to lr / eps: lr 1e-4 keeps that under the 1e-6 tolerance, the weights still move ~1e-4 a step.
    common = [*TINY, "--train_data", str(data), "--max_steps", "3", "--freeze_batchnorm",
              "--kd_weight", "0.75", "--learning_rate", "1e-4", "--save_steps", "0"]
    runs = {}
    for steps in (1, 4):
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        gradients = []

        def on_gradients(step, model, losses, gradients=gradients):
            gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

        result = main([*common, "--per_device_batch_size", str(8 // steps), "--gradient_accumulation_steps",
                       str(steps), "--output_dir", str(tmp_path / f"steps{steps}")], on_gradients=on_gradients)
        runs[steps] = result, gradients, saved_weights(result.model_dir)
        recorded = resolved_config(result.model_dir)
        assert (recorded["global_batch_size_resolved"], recorded["per_device_batch_size_resolved"],
                recorded["gradient_accumulation_steps_resolved"]) == (8, 8 // steps, steps)

    printed = capsys.readouterr().out
    assert "global batch 8 = 8 per device x 1 accumulation step x 1 process |" in printed
    assert "global batch 8 = 2 per device x 4 accumulation steps x 1 process |" in printed
    (plain, plain_gradients, plain_weights), (accumulated, gradients, weights) = runs[1], runs[4]
    assert len(gradients) == len(plain_gradients) == 3  # the hook runs once per optimizer step
    for ours, reference in zip(gradients, plain_gradients):  # float32: equal up to summation order
        assert ours.keys() == reference.keys()
        for name, grad in reference.items():
            # Bias gradients sum terms that nearly cancel: summation order alone moves them by ~3e-5 here.
            torch.testing.assert_close(ours[name], grad, rtol=1e-4, atol=5e-5, msg=name)
    for ours, reference in zip(accumulated.history, plain.history):
        for name in ("loss", "clip_loss", "distill_loss"):
            assert ours[name] == pytest.approx(reference[name], rel=1e-6, abs=1e-6), (ours["step"], name)
    assert weights.keys() == plain_weights.keys()
    worst = max((weights[name] - plain_weights[name]).abs().max().item() for name in plain_weights)
    assert worst <= 1e-6, f"max |weights(4 micro-batches) - weights(1)| = {worst:.3g}"


@pytest.mark.slow
def test_two_processes_in_micro_batches_with_local_loss_equal_one_process(tmp_path):
    """gloo DDP, 2 processes x 2 micro-batches of 2, local loss (the presets' setting): the all-reduce skipped for
    the first micro-batch and the gathered rows spliced per rank still give the 1-process large-batch gradients."""
    data = build_reinforced_dataset(tmp_path / "data", num_rows=16)
    driver = write_driver(tmp_path)
    common = [*TINY, "--train_data", str(data), "--max_steps", "1", "--freeze_batchnorm", "--global_batch_size", "8",
              "--save_steps", "0", "--kd_weight", "0.75", "--local_loss"]
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()
    run_checked([sys.executable, str(driver), str(one), *common, "--output_dir", str(one / "out")])
    launched = launch_two_processes(driver, two, [*common, "--gradient_accumulation_steps", "2",
                                                  "--output_dir", str(two / "out")])
    assert "global batch 8 = 2 per device x 2 accumulation steps x 2 processes" in launched.stdout, \
        launched.stdout[-2000:]

    reference = torch.load(one / "step0_rank0.pt")
    ranks = [torch.load(two / f"step0_rank{rank}.pt") for rank in range(2)]
    # With the local loss each rank scores its own rows: the rank average is the whole batch's loss.
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, reference["loss"], rtol=1e-5, atol=1e-6)
    assert reference["grads"].keys() == ranks[0]["grads"].keys() and len(reference["grads"]) > 100
    for name, grad in reference["grads"].items():
        for rank in ranks:  # float32: equal up to summation order
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
