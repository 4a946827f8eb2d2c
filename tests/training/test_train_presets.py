"""Every preset in training/configs runs: each file users pass with `--config`, loaded as written through
`build_config`, trains 2 steps in-process on CPU with only the model, the data, the batch size, the step count and
the outputs swapped for tiny ones. Everything else (bf16 autocast, gradient checkpointing, local loss, streaming, the
teachers' logit scales, the schedule, `resume_from_checkpoint: latest`, TensorBoard...) is the preset's own, and the
test checks that the swapped keys are the only ones that differ between the preset and the run's recorded config.

The `_*.yaml` files are bases, not presets: they set no variant or output_dir and the README passes only the named
presets; each base must be reached by the `base:` chain of at least one preset, so its keys run in that preset.
"""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml

from conftest import EMOJI
from train_helpers import build_reinforced_dataset, resolved_config

from training.config_loading import BATCH_KEYS, CONFIGS_DIR, build_config


PRESETS = sorted(path for path in CONFIGS_DIR.glob("*.yaml") if not path.name.startswith("_"))
BASES = sorted(path for path in CONFIGS_DIR.glob("_*.yaml"))
MICRO_BATCH = 8  # samples of one forward pass (per_device_batch_size) in the scaled-down runs
MAX_STEPS = 2
CARD_LOGIT_SCALES = [30.0, 20.0]  # the dataset card's (learned) teacher scales; presets that set theirs override them
# The keys the test may change: the model, the data, the batch layout, the run length and where outputs go.
SWAPPABLE = {"variant", "kd_weight", "train_data", "train_data_config", *BATCH_KEYS, "max_steps", "output_dir",
             "num_workers", "save_steps"}


def _base_chain(path: Path) -> list[Path]:
    chain = []
    while True:
        base = (yaml.safe_load(path.read_text()) or {}).get("base")
        if not base:
            return chain
        path = (path.parent / base).resolve()
        chain.append(path)


def _tiny_variant(variant: str) -> str:
    """The dev variant with the preset's kind of image tower: a timm ViT (B, L-14) or a FastViT (S*, tiny)."""
    from modeling_mobileclip.configuration_mobileclip import DEV_VARIANTS, variant_preset

    if variant in DEV_VARIANTS:
        return variant
    is_vit = variant_preset(variant)["vision_config"]["backbone"].startswith("vit_")
    return "mobileclip-tiny-vit" if is_vit else "mobileclip-tiny"


def _batch_swap(preset) -> dict:
    """Every batch key the preset sets, scaled down to one forward pass of MICRO_BATCH with the preset's
    accumulation steps on one process (all the presets' are 1: they fix the global batch only)."""
    from training.batch_sizes import resolve_batch_sizes

    steps = resolve_batch_sizes(preset, 1).accumulation_steps
    scaled = {"global_batch_size": MICRO_BATCH * steps, "per_device_batch_size": MICRO_BATCH,
              "gradient_accumulation_steps": steps}
    return {key: scaled[key] for key in BATCH_KEYS if getattr(preset, key) is not None}


def swaps(preset, output_dir: Path, reinforced: Path) -> dict:
    """The only keys the test changes (see the module docstring)."""
    values = {"variant": _tiny_variant(preset.variant), "max_steps": MAX_STEPS, "output_dir": str(output_dir),
              "num_workers": 0, "save_steps": 1, **_batch_swap(preset)}
    # The data the preset's header asks for: a DataCompDR-format set (2 teachers), or the bundled emoji captions.
    if preset.mode == "reinforced":
        values["train_data"] = str(reinforced)
    elif preset.mode == "clip":
        values.update(train_data=str(EMOJI), train_data_config="twitter")
    else:
        pytest.fail(f"no tiny data for mode {preset.mode!r}: extend swaps()")
    # lambda defaults from the variant name (0.75 for mobileclip-b): keep the recipe's.
    if dataclasses.replace(preset, variant=values["variant"]).resolved_kd_weight() != preset.resolved_kd_weight():
        values["kd_weight"] = preset.resolved_kd_weight()
    return {key: value for key, value in values.items() if getattr(preset, key) != value}


@pytest.fixture(scope="module")
def reinforced(tmp_path_factory) -> Path:
    return build_reinforced_dataset(tmp_path_factory.mktemp("reinforced"), logit_scales=CARD_LOGIT_SCALES)


def test_every_base_is_used_by_a_preset():
    used = {base for preset in PRESETS for base in _base_chain(preset)}
    assert {path.resolve() for path in BASES} <= used, "a `_*.yaml` base no preset uses never runs here"


# About 1 s a preset on one CPU thread: all in the quick suite (none is marked slow).
@pytest.mark.parametrize("path", [pytest.param(path, id=path.stem) for path in PRESETS])
def test_preset_trains_two_steps_as_written(path, reinforced, fresh_accelerate_state, tmp_path):
    from training.train import train

    preset = build_config(path)
    swapped = swaps(preset, tmp_path / "run", reinforced)
    assert set(swapped) <= SWAPPABLE, f"the test swaps more than the model, data, batch and steps: {swapped}"
    config = build_config(path, swapped)

    step_losses, linear_dtypes, checkpointing = {}, set(), []

    def record(step, model, losses):
        step_losses[step] = {name: float(value.detach()) for name, value in losses.items()}
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), f"step {step}: non-finite gradients"
        if step == 0:  # what the model runs with: checkpointing flags now, the matmul dtype in step 1's forward
            checkpointing.append(model.is_gradient_checkpointing)
            checkpointing.extend(m.grad_checkpointing for m in model.modules() if hasattr(m, "grad_checkpointing"))
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    module.register_forward_hook(lambda _, __, output: linear_dtypes.add(output.dtype))

    result = train(config, on_gradients=record)

    # Two steps, finite losses at each, and the loss terms the preset's mode trains with.
    assert result.step == MAX_STEPS and sorted(step_losses) == list(range(MAX_STEPS))
    for step, losses in step_losses.items():
        assert all(math.isfinite(value) for value in losses.values()), (step, losses)
        if preset.resolved_kd_weight():
            assert losses["distill_loss"] > 0, (step, losses)
    assert result.history[-1]["step"] == MAX_STEPS and math.isfinite(result.history[-1]["loss"])

    # The preset's precision and checkpointing are what the model ran with (bf16: CPU autocast).
    assert linear_dtypes == {torch.bfloat16 if preset.mixed_precision == "bf16" else torch.float32}, linear_dtypes
    assert len(checkpointing) > 1 and set(checkpointing) == {preset.gradient_checkpointing}, checkpointing

    # The run's config is the preset as written, but for the swapped keys.
    ran = resolved_config(result.model_dir)
    written = preset.to_dict()
    differing = {key for key, value in written.items() if ran[key] != value}
    assert differing == set(swapped), f"keys beside the swaps differ: {differing ^ set(swapped)}"
    assert {key: ran[key] for key in swapped} == swapped

    # The preset's own settings reached the run.
    for key in ("mixed_precision", "gradient_checkpointing", "local_loss", "streaming", "teacher_logit_scales",
                "lr_scheduler", "learning_rate", "min_learning_rate", "warmup_steps", "ema_decay",
                "resume_from_checkpoint", "report_to", "caption_mode"):
        assert ran[key] == written[key], key
    assert ran["kd_weight_resolved"] == preset.resolved_kd_weight()
    if preset.mode == "clip":
        assert ran["teacher_logit_scales_resolved"] == []
    else:  # the preset's scales win over the dataset card's; a preset without any takes the card's
        assert ran["teacher_logit_scales_resolved"] == (preset.teacher_logit_scales or CARD_LOGIT_SCALES)
        assert len(ran["teacher_dims_resolved"]) == 2
    assert ran["streaming_resolved"] == bool(preset.streaming)

    # The data flowed as the preset lays it out, scaled: one forward pass of MICRO_BATCH, its accumulation steps.
    from training.batch_sizes import resolve_batch_sizes

    steps = resolve_batch_sizes(preset, 1).accumulation_steps
    assert ran["gradient_accumulation_steps_resolved"] == steps
    assert ran["per_device_batch_size_resolved"] == MICRO_BATCH
    assert ran["global_batch_size_resolved"] == MICRO_BATCH * steps

    # Outputs: an exact-resume checkpoint, the TensorBoard logs the preset asks for, the model folder.
    output_dir = Path(config.output_dir)
    assert (output_dir / "checkpoints" / "step_1").is_dir()
    if "tensorboard" in config.trackers:
        assert list((output_dir / config.project_name).rglob("events.out.tfevents.*"))
    assert (result.model_dir / "model.safetensors").is_file()
