"""The precision and speed settings against the device: start-up checks, so that a setting the device cannot honour
fails before any data or model is loaded, with what to use instead, rather than hours into a run (or silently:
Accelerate accepts `fp16` on a CPU and trains in float32); and the CPU kernel workaround channels-last needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from training.config import ConfigError, TrainingConfig


def check_device_support(config: TrainingConfig, device: torch.device) -> None:
    """Raises ConfigError for a `mixed_precision`, `sync_batchnorm` or `torch_compile` setting `device` cannot run.

    Args:
        config: The run's settings.
        device: The process's device (`accelerator.device`).
    """
    if config.mixed_precision == "fp16" and device.type == "cpu":
        raise ConfigError("mixed_precision 'fp16' needs a GPU (loss scaling with CUDA autocast); on a CPU use 'bf16' "
                          "(CPU autocast) or 'no'.")
    if config.mixed_precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"mixed_precision 'bf16' is not supported by {torch.cuda.get_device_name(device)} (before "
                          "Ampere); use 'fp16' or 'no'.")
    if config.sync_batchnorm and device.type != "cuda":
        raise ConfigError("sync_batchnorm needs GPUs (torch's SyncBatchNorm does not run on CPU); use "
                          "freeze_batchnorm, or leave BatchNorm per process.")
    if config.torch_compile:
        _check_compile_support(device)


def _check_compile_support(device: torch.device) -> None:
    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError("torch_compile: torch.compile is not supported on this Python / platform "
                          f"(torch {torch.__version__}); set torch_compile: false.")
    if device.type != "cpu":
        return
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # a torch whose inductor is organised otherwise: let compilation report for itself
        return
    try:
        get_cpp_compiler()
    except Exception as error:  # torch._inductor.exc.InvalidCxxCompiler and platform variants
        raise ConfigError(f"torch_compile on CPU needs a C++ compiler for inductor's kernels ({error}); install g++ "
                          "(or set CXX), or set torch_compile: false.") from None


@contextlib.contextmanager
def channels_last_cpu_kernels(config: TrainingConfig) -> Iterator[None]:
    """Runs the block without oneDNN (mkldnn) CPU kernels when the run trains channels-last convolutions.

    torch 2.9-2.14's oneDNN weight gradient of a strided 1x1 convolution on channels-last input writes out of bounds
    (segmentation faults, glibc heap errors a few steps later): `Conv2d(3, 16, 1, stride=2)` alone reproduces it,
    and every FastViT stem has one (MobileOne's scale branch). Both `channels_last` and `torch_compile` (inductor
    lays convolutions out channels-last) reach it on CPU; the ATen kernels used instead are exact. GPU convolutions
    (cuDNN) do not use this flag, so it is set whatever the device.
    """
    if not (config.channels_last or config.torch_compile):
        yield
        return
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


__all__ = ["channels_last_cpu_kernels", "check_device_support"]
