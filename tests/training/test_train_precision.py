"""The presets' precision and speed paths, each run on CPU against its reference: bf16 autocast against float32,
activation checkpointing against the plain backward, torch.compile against eager, channels-last against the default
format; and the settings a CPU cannot honour refused at start-up, before any data is read.

References and tolerances (measured on the tiny models, 4 steps):
- bf16: master weights and gradients stay float32; per-step losses within 5% of float32 (measured: at most 2.1%);
  a killed and resumed bf16 run ends on the uninterrupted run's weights bit for bit.
- activation checkpointing: step-0 gradients equal to the plain run's within 1e-6 (measured: identical), for a
  FastViT (mobileclip-tiny) and a ViT with stochastic depth (mobileclip-tiny-vit).
- torch.compile (inductor, CPU): per-step losses within 1e-4 relative of eager (measured: 1.2e-5 at step 4); resume from a compiled run's
  checkpoint ends on the uninterrupted compiled run's weights (1e-6).
- channels-last: losses within 1e-4 relative of the default format (measured: 2.7e-5 at step 4; other kernels sum
  in another order).
Both channels-last paths run a FastViT stem, whose strided 1x1 convolution crashes torch's oneDNN CPU kernel
(training.device_support.channels_last_cpu_kernels): these tests crash without that workaround.
"""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from train_helpers import (
    TINY,
    assert_same_weights,
    build_reinforced_dataset,
    run_killed_and_resumed,
    tiny_config,
)


@pytest.fixture(scope="module")
def reinforced_data(tmp_path_factory) -> Path:
    return build_reinforced_dataset(tmp_path_factory.mktemp("reinforced"))


def _train(reinforced_data, output_dir, on_gradients=None, **values):
    from training.train import train

    settings = {"train_data": str(reinforced_data), "output_dir": str(output_dir), "max_steps": 4,
                "logging_steps": 1, "warmup_steps": 1, "save_steps": 0, **values}
    return train(tiny_config(**settings), on_gradients=on_gradients)


def _step0_gradients(reinforced_data, output_dir, checks=(), **values):
    """The gradients of the first step (and the run): `checks(model)` runs on the model as it trains."""
    gradients = {}

    def capture(step, model, losses):
        if step == 0:
            for check in checks:
                check(model)
            gradients.update({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})

    result = _train(reinforced_data, output_dir, capture, **values)
    return gradients, result


def _losses(result):
    return [row["loss"] for row in result.history]


# --- bf16 ---------------------------------------------------------------------------------------------------------


def test_bf16_autocasts_keeps_float32_master_weights_and_tracks_float32(fresh_accelerate_state, reinforced_data,
                                                                          tmp_path):
    reference = _train(reinforced_data, tmp_path / "fp32")
    fresh_accelerate_state()
    activations: list[torch.dtype] = []

    def watch_activations(step, model, losses):
        if step == 0:  # the next forward runs under the Accelerator's autocast
            linear = next(module for module in model.text_model.modules() if isinstance(module, nn.Linear))
            linear.register_forward_hook(lambda module, inputs, output: activations.append(output.dtype))
        for name, parameter in model.named_parameters():
            assert parameter.dtype == torch.float32, name  # master weights
            assert parameter.grad is None or parameter.grad.dtype == torch.float32, name

    bf16 = _train(reinforced_data, tmp_path / "bf16", watch_activations, mixed_precision="bf16")
    assert activations and set(activations) == {torch.bfloat16}
    assert _losses(bf16) != _losses(reference)  # bf16 really ran...
    assert _losses(bf16) == pytest.approx(_losses(reference), rel=0.05)  # ...and tracks float32
    assert all(tensor.dtype == torch.float32 for tensor in bf16.model.state_dict().values()
               if tensor.is_floating_point())


@pytest.mark.slow
def test_bf16_kill_and_resume_equals_the_uninterrupted_run(reinforced_data, tmp_path):
    common = [*TINY, "--mixed_precision", "bf16", "--train_data", str(reinforced_data), "--max_steps", "6",
              "--per_device_batch_size", "8", "--save_steps", "2"]
    reference, resumed, _ = run_killed_and_resumed(tmp_path, common, 5)  # resumes from step_4
    assert_same_weights(resumed / "model", reference / "model")


# --- activation checkpointing -------------------------------------------------------------------------------------


def _checkpointing_is_on(model):
    assert all(layer.gradient_checkpointing for layer in model.text_model.layers)
    assert any(getattr(module, "grad_checkpointing", False) for module in model.vision_model.backbone.modules())


@pytest.mark.parametrize("variant", ["mobileclip-tiny", "mobileclip-tiny-vit"])
def test_activation_checkpointing_gives_the_gradients_of_the_plain_backward(fresh_accelerate_state, reinforced_data,
                                                                            tmp_path, variant):
    plain, _ = _step0_gradients(reinforced_data, tmp_path / "plain", variant=variant, max_steps=1)
    fresh_accelerate_state()
    checkpointed, _ = _step0_gradients(reinforced_data, tmp_path / "checkpointed", [_checkpointing_is_on],
                                       variant=variant, max_steps=1, gradient_checkpointing=True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 40
    for name, gradient in plain.items():
        torch.testing.assert_close(checkpointed[name], gradient, rtol=0, atol=1e-6, msg=name)


# --- torch.compile ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torch_compile_tracks_eager_and_resumes(fresh_accelerate_state, reinforced_data, tmp_path):
    from training.train import main

    run = {"max_steps": 4}  # mobileclip-tiny: the FastViT stem that needs channels_last_cpu_kernels
    eager = _train(reinforced_data, tmp_path / "eager", **run)
    fresh_accelerate_state()
    compiled = _train(reinforced_data, tmp_path / "compiled", **run, torch_compile=True, save_steps=2)
    assert _losses(compiled) == pytest.approx(_losses(eager), rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "compiled" / "checkpoints").iterdir()) == ["step_2"]
    fresh_accelerate_state()
    resumed = main([*TINY, "--train_data", str(reinforced_data), "--max_steps", "4",
                    "--per_device_batch_size", "4", "--warmup_steps", "1", "--save_steps", "0", "--torch_compile",
                    "--output_dir", str(tmp_path / "resumed"),
                    "--resume_from_checkpoint", str(tmp_path / "compiled" / "checkpoints" / "step_2")])
    assert [row["step"] for row in resumed.history] == [3, 4]
    for name, tensor in compiled.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_torch_compile_without_a_cpp_compiler_is_refused_before_reading_data(fresh_accelerate_state, tmp_path,
                                                                            monkeypatch):
    import torch._inductor.config as inductor_config

    from training.config import ConfigError
    from training.train import train

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-c++-compiler",))
    config = tiny_config(train_data=str(tmp_path / "not-read"), output_dir=str(tmp_path / "out"), torch_compile=True)
    with pytest.raises(ConfigError, match=r"torch_compile on CPU needs a C\+\+ compiler for inductor's kernels"):
        train(config)


# --- channels-last ------------------------------------------------------------------------------------------------


def test_channels_last_trains_in_that_format_and_tracks_the_default(fresh_accelerate_state, reinforced_data,
                                                                    tmp_path):
    def convolutions_are_channels_last(model):
        weights = [m.weight for m in model.vision_model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
        assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)

    default = _train(reinforced_data, tmp_path / "default")
    fresh_accelerate_state()
    _, channels_last = _step0_gradients(reinforced_data, tmp_path / "channels_last", [convolutions_are_channels_last],
                                        channels_last=True)
    assert _losses(channels_last) == pytest.approx(_losses(default), rel=1e-4)


# --- settings a CPU cannot honour ---------------------------------------------------------------------------------


@pytest.mark.parametrize("values, message", [
    ({"mixed_precision": "fp16"}, r"mixed_precision 'fp16' needs a GPU .* on a CPU use 'bf16'"),
    ({"sync_batchnorm": True}, r"sync_batchnorm needs GPUs \(torch's SyncBatchNorm does not run on CPU\)"),
])
def test_cpu_refuses_fp16_and_sync_batchnorm_before_reading_data(fresh_accelerate_state, tmp_path, values, message):
    from training.config import ConfigError
    from training.train import train

    with pytest.raises(ConfigError, match=message):
        train(tiny_config(train_data=str(tmp_path / "not-read"), output_dir=str(tmp_path / "out"), **values))


def test_command_line_prints_the_refusal_as_one_error_line(tmp_path):
    import subprocess

    from conftest import REPO_ROOT, subprocess_env

    result = subprocess.run([sys.executable, "training/train.py", *TINY, "--mixed_precision", "fp16",
                             "--train_data", str(tmp_path), "--per_device_batch_size", "4",
                             "--output_dir", str(tmp_path / "out")],
                            cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: mixed_precision 'fp16' needs a GPU")
    assert "Traceback" not in result.stderr
