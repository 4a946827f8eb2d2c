"""The EMA of the weights (`ema_decay`, MobileCLIP: 0.9995): the recursion itself, exact resume of both weight sets,
`save_ema_weights` and the evaluation of both, and the refusals for bad settings.

The oracle is always the hand-written recursion ema_t = d * ema_{t-1} + (1 - d) * w_t from ema_0 = w_0, computed
here in float64 from the weights the run went through, never the training code's own EMA.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from eval_helpers import hand_zero_shot_top1
from train_helpers import TINY, assert_same_weights, build_reinforced_dataset, run_killed_and_resumed, saved_weights


@pytest.fixture(scope="module")
def reinforced_data(tmp_path_factory) -> Path:
    return build_reinforced_dataset(tmp_path_factory.mktemp("reinforced_ema"), num_rows=16)


def _reset_accelerate() -> None:
    """Between two in-process runs of one test (the fixture resets before and after the test)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _hand_ema(trajectory: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """ema_0 = w_0; ema_t = d * ema_{t-1} + (1 - d) * w_t for floating tensors (float64); integers are copied."""
    ema = {name: value.double() if value.is_floating_point() else value.clone()
           for name, value in trajectory[0].items()}
    for weights in trajectory[1:]:
        for name, value in weights.items():
            ema[name] = decay * ema[name] + (1 - decay) * value.double() if value.is_floating_point() \
                else value.clone()
    return ema


def _assert_close_to(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    for name, value in expected.items():
        torch.testing.assert_close(weights[name].double(), value.double(), rtol=0, atol=1e-6, msg=name)


# --- the recursion --------------------------------------------------------------------------------------------------


def test_ema_equals_the_hand_computed_recursion_for_parameters_and_buffers():
    from training.ema import create_ema, update_ema

    torch.manual_seed(0)
    decay = 0.8
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    ema = create_ema(model, decay)
    snapshot = lambda: {name: value.detach().clone() for name, value in model.state_dict().items()}  # noqa: E731
    trajectory = [snapshot()]
    for _ in range(5):
        model(torch.randn(16, 4)).square().mean().backward()  # train mode: also moves the BatchNorm statistics
        optimizer.step()
        optimizer.zero_grad()
        update_ema(ema, model)
        trajectory.append(snapshot())

    expected = _hand_ema(trajectory, decay)
    assert {"1.running_mean", "1.running_var", "1.num_batches_tracked"} <= expected.keys()
    _assert_close_to(ema.module.state_dict(), expected)
    assert ema.module.state_dict()["1.num_batches_tracked"].item() == 5
    # The average really lags the weights (a copy of the latest weights would also pass a loose check).
    assert not torch.allclose(ema.module[0].weight, model[0].weight, atol=1e-3)

    # A float32 model in eval mode that evaluates directly, like one loaded with the hand-computed weights.
    assert not ema.module.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in ema.module.parameters())
    reference = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).eval()
    reference.load_state_dict({name: value.to(trajectory[0][name].dtype) for name, value in expected.items()})
    inputs = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(ema.module(inputs), reference(inputs), rtol=0, atol=1e-5)

    # Kept in float32 whatever the training precision: (1 - 0.9995) * (w - ema) would round away in bf16.
    bf16_ema = create_ema(nn.Linear(4, 8).to(torch.bfloat16), 0.9995)
    assert all(p.dtype == torch.float32 for p in bf16_ema.module.parameters())


# --- exact resume ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_and_resumed_ema_run_equals_the_uninterrupted_run_for_raw_and_ema_weights(reinforced_data, tmp_path):
    # 16 rows / batch 8 = 2 steps per epoch; the kill at step 4 resumes from checkpoints/step_3, mid-epoch.
    common = [*TINY, "--train_data", str(reinforced_data), "--max_steps", "6", "--per_device_batch_size", "8",
              "--save_steps", "3", "--ema_decay", "0.9"]

    def killed_at_step_4(output_dir):
        checkpoint = output_dir / "checkpoints" / "step_3"
        assert (checkpoint / "ema.safetensors").is_file() and not (output_dir / "model").exists()

    # The rerun resumes model, optimizer and EMA from checkpoints/step_3.
    reference, resumed, _ = run_killed_and_resumed(tmp_path, common, 4, killed_at_step_4)
    for folder in ("model", "model_ema"):
        assert_same_weights(resumed / folder, reference / folder)
    raw, ema = saved_weights(reference / "model"), saved_weights(reference / "model_ema")
    assert any(not torch.equal(raw[name], ema[name]) for name in raw)  # two different weight sets were compared


# --- save_ema_weights and the evaluation of both weight sets --------------------------------------------------------


def test_save_ema_weights_saves_the_ema_as_the_model_and_evaluates_both(fresh_accelerate_state, reinforced_data,
                                                                          emoji_subset, tmp_path, capsys):
    from modeling_mobileclip import MobileCLIPModel
    from training.train import main

    decay = 0.5  # the EMA moves visibly in 4 steps
    trajectory = []

    def record_weights(step, model, losses):  # before step `step`'s update: the weights after step - 1
        trajectory.append({name: p.detach().clone() for name, p in model.named_parameters()})

    out = tmp_path / "run"
    result = main([*TINY, "--train_data", str(reinforced_data), "--max_steps", "4", "--per_device_batch_size", "8",
                   "--save_steps", "0", "--output_dir", str(out), "--ema_decay", str(decay), "--save_ema_weights",
                   "--eval_data", str(emoji_subset), "--eval_split", "test",
                   "--eval_label_column", "category", "--eval_max_samples", "16", "--eval_steps", "2",
                   "--eval_templates", '["an emoji of {c}"]'], on_gradients=record_weights)

    periodic = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("step 2: "))
    raw_names = {name.removeprefix("eval/") for name in result.metrics if name.startswith("eval/")}
    assert "acc1" in raw_names
    assert raw_names == {name.removeprefix("eval_ema/") for name in result.metrics if name.startswith("eval_ema/")}
    for name in raw_names:
        assert f"'eval/{name}'" in periodic and f"'eval_ema/{name}'" in periodic, periodic
    # Both final evaluations, scored again by hand from the saved folders (`model` holds the EMA, `model_raw` the raw
    # weights): the first 16 emoji of the subset, 4 categories.
    import datasets

    rows = datasets.Dataset.from_parquet(str(emoji_subset)).select(range(16))
    assert len(set(rows["category"])) == 4
    for prefix, folder in (("eval/", out / "model_raw"), ("eval_ema/", out / "model")):
        expected = hand_zero_shot_top1(folder, rows["image"], rows["category"], "an emoji of {c}")
        assert result.metrics[f"{prefix}acc1"] == pytest.approx(expected, abs=1e-6), prefix

    # `model` holds the EMA of the trajectory that ends at the raw weights of `model_raw`; both load as models.
    assert result.model_dir == out / "model" and not (out / "model_ema").exists()
    ema_model = MobileCLIPModel.from_pretrained(out / "model")
    raw_model = MobileCLIPModel.from_pretrained(out / "model_raw")
    raw_weights = {name: p.detach() for name, p in raw_model.named_parameters()}
    assert len(trajectory) == 4 and trajectory[0].keys() == raw_weights.keys()
    expected = _hand_ema([*trajectory, raw_weights], decay)
    _assert_close_to(dict(ema_model.named_parameters()), expected)
    assert not torch.allclose(expected["logit_scale"].float(), raw_weights["logit_scale"])  # the two differ

    # Each folder's model card describes its own weights.
    for folder, own, other in (("model", "eval_ema/", "eval/"), ("model_raw", "eval/", "eval_ema/")):
        saved = json.loads((out / folder / "training_metrics.json").read_text())
        assert saved[f"{own}acc1"] == result.metrics[f"{own}acc1"] and "train/loss" in saved, folder
        assert not any(name.startswith(other) for name in saved), (folder, saved)
        card = (out / folder / "README.md").read_text()
        assert f"{own}acc1" in card and f"{other}acc1" not in card, folder
        assert f"saved_weights: {'ema' if folder == 'model' else 'raw'}" in card, folder


# --- bad input ------------------------------------------------------------------------------------------------------


def test_bad_ema_settings_and_resuming_with_ema_without_a_saved_ema_are_refused(fresh_accelerate_state,
                                                                                reinforced_data, tmp_path):
    from training.config import ConfigError
    from training.config_loading import parse_args
    from training.train import main

    for decay in ("1.5", "0", "1"):
        with pytest.raises(ConfigError, match=r"ema_decay must lie in \(0, 1\)"):
            parse_args([*TINY, "--ema_decay", decay])
    with pytest.raises(ConfigError, match="save_ema_weights .* but ema_decay is null"):
        parse_args([*TINY, "--save_ema_weights"])

    # A run without EMA leaves checkpoints/step_1 behind.
    run = [*TINY, "--train_data", str(reinforced_data), "--max_steps", "2", "--per_device_batch_size", "8",
           "--save_steps", "1"]
    main([*run, "--output_dir", str(tmp_path / "plain")])
    checkpoint = tmp_path / "plain" / "checkpoints" / "step_1"
    assert not (checkpoint / "ema.safetensors").exists()

    # ema_decay is resume-invariant: resuming that run with an EMA would average from the wrong starting point.
    _reset_accelerate()
    with pytest.raises(ConfigError, match=r"Cannot resume exactly from .*step_1: ema_decay: checkpoint None, now 0.9"):
        main([*run, "--ema_decay", "0.9", "--output_dir", str(tmp_path / "other"),
              "--resume_from_checkpoint", str(checkpoint)])
    _reset_accelerate()
    with pytest.raises(ConfigError, match=r"holds another run .*ema_decay: existing None, now 0.9"):
        main([*run, "--ema_decay", "0.9", "--output_dir", str(tmp_path / "plain"), "--resume_from_checkpoint",
              "latest"])

    # A checkpoint of an EMA run that lost its ema.safetensors.
    damaged = tmp_path / "damaged" / "step_1"
    shutil.copytree(checkpoint, damaged)
    saved_config = yaml.safe_load((damaged / "training_config.yaml").read_text())
    (damaged / "training_config.yaml").write_text(yaml.safe_dump({**saved_config, "ema_decay": 0.9}, sort_keys=False))
    _reset_accelerate()
    with pytest.raises(ConfigError, match=r"Cannot resume with ema_decay set: .*step_1 has no ema.safetensors"):
        main([*run, "--ema_decay", "0.9", "--output_dir", str(tmp_path / "resumed"),
              "--resume_from_checkpoint", str(damaged)])
