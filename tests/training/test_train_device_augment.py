"""augment_on_device: a run that applies the stored RandAugment ops on the device trains on the CPU run's views
(within 1/255, tests/data/test_device_augment.py), so its first-step losses match the CPU-augmented run's."""

import pytest
import torch

from dataset_scripts.augmentation import apply_ops_to_batch
from train_helpers import build_reinforced_dataset, tiny_config


@pytest.fixture(scope="module")
def reinforced_data(tmp_path_factory):
    return build_reinforced_dataset(tmp_path_factory.mktemp("reinforced"), num_rows=16)


def first_step_losses(config) -> dict[str, float]:
    from training.train import train

    losses = {}

    def record(step, model, step_losses):
        if step == 0:
            losses.update({name: float(value.detach()) for name, value in step_losses.items()
                           if torch.is_tensor(value)})

    train(config, on_gradients=record)
    return losses


def test_device_augmented_run_matches_the_cpu_augmented_run(fresh_accelerate_state, reinforced_data, tmp_path,
                                                            monkeypatch):
    from accelerate.state import AcceleratorState

    import training.train

    deferred_ops_applied = []

    def counting(views, deferred_ops):
        deferred_ops_applied.append(int((deferred_ops[:, :, 0] != 0).sum()))
        return apply_ops_to_batch(views, deferred_ops)

    monkeypatch.setattr(training.train, "apply_ops_to_batch", counting)

    base = {"train_data": str(reinforced_data), "per_device_batch_size": 8, "save_steps": 0, "seed": 3}
    on_cpu = first_step_losses(tiny_config(**base, output_dir=str(tmp_path / "cpu")))
    AcceleratorState._reset_state(True)
    on_device = first_step_losses(tiny_config(**base, augment_on_device=True, output_dir=str(tmp_path / "device")))
    assert deferred_ops_applied and deferred_ops_applied[0] > 0  # the device really applied stored ops
    assert on_cpu.keys() == on_device.keys() and "loss" in on_cpu
    for name in on_cpu:
        assert on_device[name] == pytest.approx(on_cpu[name], rel=1e-3, abs=1e-4), name
