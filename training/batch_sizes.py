"""The batch layout of a run, as transformers' Trainer, accelerate and open_clip have it: global batch =
per_device_batch_size x gradient_accumulation_steps x processes; any two of the config's three keys determine the
third once the number of processes is known (the checks that need no process count run in `TrainingConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from training.config import ConfigError, TrainingConfig


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "es" if word.endswith("s") else "s")


@dataclass(frozen=True)
class BatchSizes:
    """The batch layout of a run: global batch = per_device x accumulation_steps x num_processes."""

    global_batch: int
    """Samples per optimizer step over all processes."""
    per_device: int
    """Samples per process in one forward pass (a micro-batch)."""
    accumulation_steps: int
    """Micro-batches per process and optimizer step."""
    num_processes: int

    @property
    def per_process(self) -> int:
        """Samples per process and optimizer step (what the data loader hands each process)."""
        return self.per_device * self.accumulation_steps

    def describe(self) -> str:
        return (f"global batch {self.global_batch} = {self.per_device} per device x "
                f"{_plural(self.accumulation_steps, 'accumulation step')} x {_plural(self.num_processes, 'process')}")


def resolve_batch_sizes(config: TrainingConfig, num_processes: int) -> BatchSizes:
    """Global batch, per-device batch and accumulation steps from whichever two of them the config sets (all three:
    they must agree; per_device_batch_size alone: 1 accumulation step), checked against the number of processes.
    The error names the numbers."""
    total, per_device = config.global_batch_size, config.per_device_batch_size
    steps = config.gradient_accumulation_steps
    processes = _plural(num_processes, "process")
    if total is None:
        if per_device is None:
            raise ConfigError("Set per_device_batch_size (samples per process and forward pass) or global_batch_size "
                              "(samples per optimizer step over all processes).")
        steps = steps or 1
        return BatchSizes(per_device * steps * num_processes, per_device, steps, num_processes)
    if per_device is None:
        steps = steps or 1
        if total % (steps * num_processes):
            raise ConfigError(
                f"global_batch_size {total} cannot be split evenly over {processes} x "
                f"{_plural(steps, 'accumulation step')} (= {steps * num_processes}); use a multiple of "
                f"{steps * num_processes}, or set per_device_batch_size instead."
            )
        return BatchSizes(total, total // (steps * num_processes), steps, num_processes)
    if steps is None:
        if total % (per_device * num_processes):
            raise ConfigError(
                f"global_batch_size {total} is not a multiple of per_device_batch_size {per_device} x {processes} "
                f"= {per_device * num_processes}, so no whole number of gradient_accumulation_steps gives it; choose "
                "a per_device_batch_size (or a global_batch_size) that makes it one, or set "
                "gradient_accumulation_steps instead of per_device_batch_size."
            )
        return BatchSizes(total, per_device, total // (per_device * num_processes), num_processes)
    if per_device * steps * num_processes != total:
        raise ConfigError(
            f"global_batch_size {total} != per_device_batch_size {per_device} x gradient_accumulation_steps {steps} "
            f"x {processes} = {per_device * steps * num_processes}; give two of the three (the third is derived; "
            "`--KEY null` clears a preset's value) or make them agree."
        )
    return BatchSizes(total, per_device, steps, num_processes)


__all__ = ["BatchSizes", "resolve_batch_sizes"]
