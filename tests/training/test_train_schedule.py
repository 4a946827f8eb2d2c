"""The learning-rate schedules against open_clip's scheduler functions (open_clip_train/scheduler.py), every step."""

import pytest
import torch
from open_clip_train.scheduler import const_lr, const_lr_cooldown, cosine_lr

from conftest import EMOJI
from training.config import ConfigError, TrainingConfig
from training.schedule import learning_rate_at


def _open_clip_schedule(config: TrainingConfig):
    """open_clip's adjuster for the same settings (its cosine has no floor: min_learning_rate 0)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    args = (optimizer, config.learning_rate, config.warmup_steps, config.max_steps)
    if config.lr_scheduler == "cosine":
        return cosine_lr(*args)
    if config.lr_scheduler == "const":
        return const_lr(*args)
    return const_lr_cooldown(*args, config.lr_cooldown_steps, config.lr_cooldown_power, config.lr_cooldown_end)


SCHEDULES = [
    {"lr_scheduler": "cosine", "warmup_steps": 10},
    {"lr_scheduler": "cosine", "warmup_steps": 0},
    {"lr_scheduler": "const", "warmup_steps": 7},
    {"lr_scheduler": "const", "warmup_steps": 0},
    {"lr_scheduler": "const-cooldown", "warmup_steps": 10, "lr_cooldown_steps": 40},
    {"lr_scheduler": "const-cooldown", "warmup_steps": 5, "lr_cooldown_steps": 100, "lr_cooldown_power": 2.0,
     "lr_cooldown_end": 1e-5},
    {"lr_scheduler": "const-cooldown", "warmup_steps": 0, "lr_cooldown_steps": 1, "lr_cooldown_power": 0.5},
    # The cooldown may start inside the warmup: warmup wins there, as in open_clip.
    {"lr_scheduler": "const-cooldown", "warmup_steps": 30, "lr_cooldown_steps": 90, "lr_cooldown_end": 3e-4},
]


@pytest.mark.parametrize("settings", SCHEDULES, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_every_step_equals_open_clip(settings):
    config = TrainingConfig(learning_rate=1e-3, max_steps=100, **settings)
    reference = _open_clip_schedule(config)
    for step in range(config.max_steps):
        assert learning_rate_at(step, config) == pytest.approx(reference(step), rel=1e-12, abs=1e-15), step


def test_cooldown_shape_linear_and_polynomial():
    config = TrainingConfig(learning_rate=1.0, max_steps=20, warmup_steps=0, lr_scheduler="const-cooldown",
                            lr_cooldown_steps=10, lr_cooldown_power=2.0, lr_cooldown_end=0.1)
    assert [learning_rate_at(step, config) for step in range(10)] == [1.0] * 10
    # step 15 is half-way through the cooldown: 0.1 + 0.9 * 0.5 ** 2
    assert learning_rate_at(15, config) == pytest.approx(0.1 + 0.9 * 0.25)


@pytest.mark.parametrize("values, match", [
    ({"lr_scheduler": "linear"}, "lr_scheduler must be one of"),
    ({"lr_scheduler": "const-cooldown"}, "needs 1 <= lr_cooldown_steps <= max_steps"),
    ({"lr_scheduler": "const-cooldown", "lr_cooldown_steps": 1001}, "got lr_cooldown_steps=1001"),
])
def test_bad_schedules_are_refused_naming_the_key(values, match):
    with pytest.raises(ConfigError, match=match):
        TrainingConfig(**values)


def test_training_logs_open_clips_learning_rate_at_every_step(fresh_accelerate_state, tmp_path):
    from training.train import train

    config = TrainingConfig(
        variant="mobileclip-tiny", mode="clip", mixed_precision="no", report_to="none", num_workers=0,
        train_data=str(EMOJI), train_data_config="twitter", caption_column="captions", max_train_samples=8,
        per_device_batch_size=4, max_steps=6, save_steps=0, logging_steps=1, output_dir=str(tmp_path / "run"),
        learning_rate=2e-3, warmup_steps=2, lr_scheduler="const-cooldown", lr_cooldown_steps=3,
        lr_cooldown_power=2.0, lr_cooldown_end=1e-4,
    )
    history = train(config).history
    reference = _open_clip_schedule(config)
    assert [row["step"] for row in history] == [1, 2, 3, 4, 5, 6]
    for row in history:  # the record of step N is written after optimizer step N - 1 ran with this rate
        assert row["lr"] == pytest.approx(reference(row["step"] - 1), rel=1e-12), row
