"""The training configuration: one typed dataclass, read from a YAML preset and overridden on the command line.

    accelerate launch training/train.py --config training/configs/mobileclip-s0-datacompdr12m.yaml \
        --train_data /data/datacompdr12m --per_device_batch_size 256 --output_dir runs/s0

A preset may start with `base: OTHER.yaml` (a path relative to the preset) to inherit that file's keys; keys in the
preset override the base, and command-line `--key value` overrides both. Values on the command line are parsed as
YAML (`--teacher_logit_scales "[70, 60]"`, `--push_to_hub` alone means true). Every key is documented in
:class:`TrainingConfig` and in the README's table.

Batch sizes follow transformers' Trainer, accelerate and open_clip: `per_device_batch_size` is what one forward
pass of one process holds, and global batch = per_device_batch_size x gradient_accumulation_steps x processes. Any
two of `global_batch_size`, `per_device_batch_size` and `gradient_accumulation_steps` determine the third
(`training.batch_sizes.resolve_batch_sizes`, once the number of processes is known). The global batch is the recipe, the other two
are how it is laid out on the hardware: so when the command line sets one of the three keys and the preset's keys
would then fix all three, the preset's layout keys give way (its `gradient_accumulation_steps` first, then its
`per_device_batch_size`) and are derived again. In the example above the preset's global batch of 8192 stays and
the accumulation steps are derived: 8192 = 256 per device x 32 accumulation steps x 1 process.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


MODES = ("reinforced", "clip", "online")
CAPTION_MODES = ("both", "random")
MIXED_PRECISIONS = ("no", "bf16", "fp16")
TRACKERS = ("tensorboard", "wandb", "all", "none")
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names the key, the source and the fix."""


@dataclass
class TrainingConfig:
    """All settings of one training run (see the README's "Configuration keys" table for the same in one place)."""

    # --- model -------------------------------------------------------------------------------------------------
    variant: str = "mobileclip-s0"
    """Architecture to train from scratch (`modeling_mobileclip.VARIANTS`, or `mobileclip-tiny` for tests)."""
    init_from: str | None = None
    """Saved MobileCLIP folder or Hub id to start from instead of random weights (fine-tuning)."""

    # --- data --------------------------------------------------------------------------------------------------
    train_data: str | None = None
    """Training data: a local folder / data file or Hub dataset id that `datasets.load_dataset` reads."""
    train_data_config: str | None = None
    """`load_dataset` configuration name (e.g. `twitter` for the emoji set)."""
    train_split: str = "train"
    """Split of `train_data` to train on."""
    max_train_samples: int | None = None
    """Use only the first N rows (quick runs)."""
    mode: str = "reinforced"
    """`reinforced` (stored teacher embeddings), `clip` (no teacher: the baseline) or `online` (teachers in the
    loop)."""
    image_column: str = "image"
    """Image column of data without stored augmentations (reinforced data always uses `image`)."""
    caption_column: str = "caption"
    """Ground-truth caption column: a string, or a list of strings (one drawn per sample and epoch)."""
    synthetic_caption_column: str = "syn_captions"
    """Synthetic-caption column (a list of strings) of data without stored augmentations."""
    use_synthetic_captions: bool = True
    """Add the (image, synthetic caption) batch B_syn when the data has synthetic captions."""
    caption_mode: str = "both"
    """`both`: the ground-truth batch plus a synthetic-caption batch B_syn (the paper's recipe); `random`: one
    caption per sample and epoch, drawn uniformly among its ground-truth and synthetic captions, no B_syn (open_clip's
    mix-synthetic). The draws do not depend on `mode`: clip and reinforced runs with one seed see the same data."""
    num_workers: int = 4
    """DataLoader worker processes per training process (decoding and augmentation replay)."""
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    """RandomResizedCrop area range for data *without* stored augmentations (views are sampled per epoch)."""
    rand_augment: bool = True
    """Apply RandAugment to views sampled for data without stored augmentations (DataCompDR's recipe)."""
    streaming: bool | None = None
    """Stream the shards instead of reading map-style (no Arrow copy, no random access; see training/streaming.py).
    null: automatic, on for WebDataset `*.tar` patterns and Hub dataset ids."""
    train_images: str | None = None
    """Glob of img2dataset image tars joined by uid with Apple's official reinforcement tars in `train_data`."""
    stream_slots: int | None = None
    """Streaming: the number of independent shard streams every global batch draws from equally. Must divide the
    global batch, be a multiple of the number of processes and be at most the number of shards; it fixes the data
    order, so keep it when the process count changes. Default: the largest power of two <= min(shards, 1024) that
    divides the global batch."""
    shuffle_block_size: int = 256
    """Streaming: rows of a slot shuffled together (a seeded permutation per block of consecutive rows), on top of a
    per-epoch shard order; the memory is this many raw rows per slot."""

    # --- loss and teachers -------------------------------------------------------------------------------------
    kd_weight: float | None = None
    """lambda in (1 - lambda) * CLIP + lambda * KD. Default: 0.75 for mobileclip-b, 1.0 otherwise, 0 in mode clip."""
    teachers: list[str] = field(default_factory=list)
    """Teacher specs (`open_clip:ARCH:PRETRAINED`, `hf:PATH`). Online mode: the models to run. Reinforced mode:
    optional, checked against the dataset card (which otherwise supplies them)."""
    teacher_logit_scales: list[float] | None = None
    """Per-teacher logit scale (inverse temperature) in teacher order. Default: in mode reinforced the teachers'
    learned scales recorded in the dataset card when it records all of them, else 100 each (MobileCLIP v1)."""
    local_loss: bool = False
    """Score local rows against global columns (O(b x B) memory instead of O(B^2)); same loss and gradients."""

    # --- optimisation ------------------------------------------------------------------------------------------
    max_steps: int = 1000
    """Optimizer steps to train (the run spans as many epochs as that takes)."""
    per_device_batch_size: int | None = None
    """Samples per process in one forward pass (one micro-batch), as transformers' `per_device_train_batch_size` and
    open_clip's `--batch-size`. Global batch = per_device_batch_size x gradient_accumulation_steps x processes: give
    any two of the three keys (null: derived). Set on the command line over a preset that fixes the other two, the
    preset's accumulation steps are derived again."""
    global_batch_size: int | None = None
    """Samples per optimizer step over all processes (the recipe's batch; the data order depends on it only).
    Null: per_device_batch_size x gradient_accumulation_steps x processes. Given with per_device_batch_size, the
    accumulation steps are derived (e.g. 8192 = 256 per device x 32 steps x 1 process); the numbers must divide."""
    gradient_accumulation_steps: int | None = None
    """Forward and backward this many micro-batches of per_device_batch_size per process, then step once: the loss
    and gradients of the whole global batch with one micro-batch's activations in memory (open_clip's
    `--accum-freq`; exact with frozen BatchNorm, see training/step.py). Null: derived from the other two keys, else
    1. Not a resume-invariant key: it changes memory, not the math."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate, reached after `warmup_steps`."""
    min_learning_rate: float = 0.0
    """Floor of the cosine decay, reached at `max_steps`."""
    warmup_steps: int = 1000
    """Linear warmup from 0 (open_clip convention: lr * (step + 1) / warmup_steps)."""
    weight_decay: float = 0.2
    """AdamW decoupled weight decay, not applied to biases, norms, layer scales and the logit scale."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.95
    """AdamW beta2 (0.95 in the MobileCLIP recipes)."""
    adam_epsilon: float = 1e-6
    """AdamW epsilon."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value (null: no clipping)."""
    logit_scale_max: float = 100.0
    """After each step the learned logit scale is clamped to [0, ln(logit_scale_max)]."""
    ema_decay: float | None = None
    """Keep an exponential moving average of the weights, ema = d * ema + (1 - d) * weights after every step, in
    float32 (MobileCLIP: 0.9995); it is evaluated beside the raw weights (`eval_ema/...`) and saved as a second
    model folder. Must lie in (0, 1); null: no EMA."""

    # --- performance -------------------------------------------------------------------------------------------
    mixed_precision: str = "bf16"
    """`bf16` (the recipe), `fp16` (with loss scaling) or `no` (float32; CPU tests)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (both towers) to fit larger batches."""
    torch_compile: bool = False
    """Compile the model with torch.compile (inductor) through Accelerate."""
    channels_last: bool = False
    """Channels-last memory format for the image tower and its inputs (faster convolutions on GPUs)."""
    freeze_batchnorm: bool = False
    """Keep BatchNorm layers in eval mode (running statistics) while training their affine parameters."""
    sync_batchnorm: bool = False
    """Synchronise BatchNorm statistics across GPUs (torch SyncBatchNorm; GPU only)."""

    # --- checkpoints and outputs -------------------------------------------------------------------------------
    output_dir: str = "outputs/mobileclip"
    """Checkpoints, logs, `train_history.jsonl` and the final `model/` folder go here."""
    save_steps: int = 1000
    """Write an exact-resume checkpoint (`output_dir/checkpoints/step_N`) every N steps; 0 disables."""
    save_total_limit: int | None = 3
    """Keep only the newest N checkpoints (null keeps all)."""
    resume_from_checkpoint: str | None = None
    """`latest` (newest complete checkpoint in `output_dir`, fresh start if none) or a checkpoint folder."""
    save_ema_weights: bool = False
    """Save (and push) the EMA weights as `output_dir/model`, the raw weights as `output_dir/model_raw`; false: the
    raw weights in `model`, the EMA ones (if `ema_decay` is set) in `model_ema`. Needs `ema_decay`."""
    save_reparameterized: bool = False
    """Also write `output_dir/model/reparameterized`, the fused inference copy (uploaded with the model)."""
    overwrite_output_dir: bool = False
    """Remove another run's files from `output_dir` at start-up (named in the log) instead of refusing to start;
    a folder holding this same run (same resume-invariant keys) is resumed either way."""

    # --- logging -----------------------------------------------------------------------------------------------
    report_to: str = "tensorboard"
    """`tensorboard`, `wandb`, `all` or `none` (comma-separated combinations allowed)."""
    logging_steps: int = 10
    """Log averaged losses, lr, logit scale and samples/s every N steps."""
    project_name: str = "mobileclip"
    """Tracker project name (TensorBoard logs go to `output_dir/<project_name>`)."""
    run_name: str | None = None
    """Run name shown by wandb."""

    # --- periodic zero-shot evaluation -------------------------------------------------------------------------
    eval_data: str | None = None
    """Small held-out classification set (`load_dataset` spec); none disables evaluation."""
    eval_data_config: str | None = None
    """`load_dataset` configuration name of `eval_data`."""
    eval_split: str = "test"
    """Split of `eval_data`."""
    eval_image_column: str = "image"
    """Image column of `eval_data`."""
    eval_label_column: str = "label"
    """Label column of `eval_data` (class index or class label)."""
    eval_classnames: str | None = None
    """JSON file / `imagenet1k`; default: the label column's ClassLabel names (or its string values)."""
    eval_templates: list[str] | None = None
    """Prompt templates with `{c}`; default: the 80 OpenAI ImageNet templates."""
    eval_steps: int = 0
    """Evaluate every N steps (0: only after training)."""
    eval_max_samples: int | None = 1000
    """Evaluate on the first N images only (null: all)."""
    eval_batch_size: int = 64
    """Images per evaluation batch and process."""

    # --- Hub ---------------------------------------------------------------------------------------------------
    push_to_hub: bool = False
    """Upload `output_dir/model` to `hub_model_id` after training."""
    hub_model_id: str | None = None
    """`ORG/NAME` of the model repo to create or update."""
    hub_private: bool = False
    """Create the Hub repo as private."""

    seed: int = 0
    """Seeds the weights, the data order and every per-sample random choice."""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Checks that need nothing but the config (data- and process-dependent checks run at start-up)."""
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}.")
        if self.caption_mode not in CAPTION_MODES:
            raise ConfigError(f"caption_mode must be one of {CAPTION_MODES}, got {self.caption_mode!r}: 'both' "
                              "(ground-truth plus synthetic-caption batch) or 'random' (one caption drawn per sample).")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ConfigError(f"mixed_precision must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}.")
        unknown = [name for name in self.trackers if name not in TRACKERS]
        if unknown:
            raise ConfigError(f"report_to has unknown tracker(s) {unknown}; choose from {TRACKERS}.")
        for name in ("tensorboard", "wandb"):
            if name in self.trackers and importlib.util.find_spec(name) is None:
                raise ConfigError(f"report_to {name!r} needs the `{name}` package (pip install {name}), or set "
                                  "report_to to another tracker / none.")
        for name in ("max_steps", "logging_steps", "eval_batch_size", "shuffle_block_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("save_steps", "warmup_steps", "eval_steps", "num_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("per_device_batch_size", "global_batch_size", "gradient_accumulation_steps", "max_train_samples",
                     "stream_slots"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 (or null), got {value}.")
        self._check_batch_sizes()
        if self.kd_weight is not None and not 0.0 <= self.kd_weight <= 1.0:
            raise ConfigError(f"kd_weight must lie in [0, 1], got {self.kd_weight}.")
        if self.mode == "clip" and self.kd_weight:
            raise ConfigError(f"mode 'clip' trains without teachers, but kd_weight={self.kd_weight}; use mode "
                              "'reinforced' or 'online', or drop kd_weight.")
        if self.mode == "online" and not self.teachers:
            raise ConfigError("mode 'online' needs `teachers` (e.g. ['open_clip:ViT-L-14:openai']).")
        scales = self.teacher_logit_scales
        if scales is not None and self.teachers and len(scales) != len(self.teachers):
            raise ConfigError(f"teacher_logit_scales has {len(self.teacher_logit_scales)} values for "
                              f"{len(self.teachers)} teachers {self.teachers}; give one per teacher.")
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("push_to_hub needs hub_model_id (ORG/NAME).")
        if self.hub_model_id is not None and self.hub_model_id.count("/") != 1:
            raise ConfigError(f"hub_model_id must look like ORG/NAME, got {self.hub_model_id!r}.")
        if self.min_learning_rate > self.learning_rate:
            raise ConfigError(f"min_learning_rate ({self.min_learning_rate}) exceeds learning_rate "
                              f"({self.learning_rate}).")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError(f"crop_scale must be [low, high] with 0 < low <= high <= 1, got {self.crop_scale}.")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must lie in (0, 1) (MobileCLIP uses 0.9995), or be null for no EMA; got "
                              f"{self.ema_decay}.")
        if self.save_ema_weights and self.ema_decay is None:
            raise ConfigError("save_ema_weights saves the EMA of the weights as the model, but ema_decay is null (no "
                              "EMA is kept); set ema_decay (e.g. 0.9995) or drop save_ema_weights.")
        if self.freeze_batchnorm and self.sync_batchnorm:
            raise ConfigError("freeze_batchnorm and sync_batchnorm exclude each other (frozen statistics need no "
                              "sync).")

    def _check_batch_sizes(self) -> None:
        """What the batch keys must satisfy for any number of processes: the global batch is a multiple of the
        samples one process adds per step (the rest is checked against the processes by resolve_batch_sizes)."""
        total, per_device = self.global_batch_size, self.per_device_batch_size
        steps = self.gradient_accumulation_steps
        if total is None:
            return
        factors = [f"{name} {value}" for name, value in (("per_device_batch_size", per_device),
                                                          ("gradient_accumulation_steps", steps)) if value is not None]
        product = (per_device or 1) * (steps or 1)
        if factors and total % product:
            raise ConfigError(
                f"global_batch_size {total} is not a multiple of {' x '.join(factors)}"
                f"{f' = {product}' if len(factors) > 1 else ''}: global batch = per_device_batch_size x "
                "gradient_accumulation_steps x processes. Give two of the three keys (the third is derived; "
                "`--KEY null` clears a preset's value) and make them divide."
            )

    @property
    def trackers(self) -> list[str]:
        names = [name.strip() for name in self.report_to.split(",") if name.strip()]
        return [] if names == ["none"] else names

    def resolved_kd_weight(self) -> float:
        if self.mode == "clip":
            return 0.0
        if self.kd_weight is not None:
            return self.kd_weight
        # MobileCLIP-B was trained with (w_clip, w_kd) = (0.25, 0.75); S variants and all MobileCLIP2 with (0, 1).
        return 0.75 if self.variant.lower() == "mobileclip-b" else 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELD_TYPES = typing.get_type_hints(TrainingConfig)
# The three batch keys: the global batch (the recipe), then the two keys of its layout on the hardware (a preset's
# layout keys give way to a command-line batch key, accumulation steps first: _rederive_preset_batch_layout).
BATCH_KEYS = ("global_batch_size", "per_device_batch_size", "gradient_accumulation_steps")


def _coerce(name: str, value: Any, where: str) -> Any:
    """Checks/converts a YAML value to the field's annotated type; the error names the key and its source."""
    hint = _FIELD_TYPES[name]
    if name == "mixed_precision" and value is False:  # YAML 1.1 reads a bare `no` as false
        value = "no"
    options = _options(hint)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{where}: key {name!r} cannot be null.")
    errors = []
    for option in (o for o in options if o is not type(None)):
        origin = typing.get_origin(option)
        if origin is list:
            (item_type,) = typing.get_args(option)
            items = value if isinstance(value, list) else [value]
            try:
                return [_scalar(item, item_type) for item in items]
            except (TypeError, ValueError) as error:
                errors.append(str(error))
                continue
        try:
            return _scalar(value, option)
        except (TypeError, ValueError) as error:
            errors.append(str(error))
    raise ConfigError(f"{where}: key {name!r} expects {_type_name(hint)}, got {value!r} ({'; '.join(errors)}).")


def _scalar(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"{value!r} is not true/false")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{value!r} is not an integer")
        return value
    if kind is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise TypeError(f"{value!r} is not a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{value!r} is not a number")
        return float(value)
    if kind is str:
        if isinstance(value, (dict, list)):
            raise TypeError(f"{value!r} is not a string")
        return str(value)
    raise TypeError(f"unsupported type {kind}")


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _options(hint: Any) -> tuple:
    """The members of a `X | Y` annotation, or `(hint,)`."""
    is_union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return typing.get_args(hint) if is_union else (hint,)


def _is_list_field(name: str) -> bool:
    return any(typing.get_origin(option) is list for option in _options(_FIELD_TYPES[name]))


def _check_keys(values: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}.{hint} Valid keys: the fields of TrainingConfig in "
                              "training/config.py.")


def read_yaml_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The keys of a preset, its `base:` chain resolved (base first, then this file's keys)."""
    path = Path(path)
    if not path.is_file() and not path.is_absolute() and (CONFIGS_DIR / path).is_file():
        path = CONFIGS_DIR / path
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path} (presets live in {CONFIGS_DIR}).")
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"{path}: circular `base:` chain {[str(p) for p in _seen]}.")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(values).__name__}.")
    base = values.pop("base", None)
    merged = read_yaml_config(path.parent / base, (*_seen, path)) if base else {}
    _check_keys(values, str(path))
    merged.update({k: (path, v) for k, v in values.items()})
    return merged


def build_config(yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainingConfig:
    """Preset keys, then `overrides` (already YAML-parsed), type-checked into a :class:`TrainingConfig`."""
    values: dict[str, Any] = {}
    sources: dict[str, tuple[Path | str, Any]] = read_yaml_config(yaml_path) if yaml_path else {}
    if overrides:
        _check_keys(overrides, "command line")
        sources.update({k: ("command line", v) for k, v in overrides.items()})
        _rederive_preset_batch_layout(sources)
    for key, (where, value) in sources.items():
        values[key] = _coerce(key, value, str(where))
    return TrainingConfig(**values)


def _rederive_preset_batch_layout(sources: dict[str, tuple[Path | str, Any]]) -> None:
    """The command line set a batch key and, with the preset's, all three are set: drop the preset's accumulation
    steps (else its per-device batch) so that it is derived from the user's value and the recipe's global batch.
    A preset's global batch never gives way: if the user sets both layout keys they must agree with it."""
    given = [key for key in BATCH_KEYS if key in sources and sources[key][1] is not None]
    if len(given) < 3 or all(sources[key][0] != "command line" for key in given):
        return
    for key in reversed(BATCH_KEYS[1:]):  # gradient_accumulation_steps, then per_device_batch_size
        if sources[key][0] != "command line":
            sources[key] = (sources[key][0], None)
            return


def parse_args(argv: list[str] | None = None) -> TrainingConfig:
    """`--config FILE` plus `--key value` overrides for every field of :class:`TrainingConfig`."""
    parser = argparse.ArgumentParser(
        description="Reinforced MobileCLIP training (run with `accelerate launch training/train.py`).",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    parser.add_argument("--config", help="YAML preset (a path, or a file name in training/configs/)")
    for item in dataclasses.fields(TrainingConfig):
        is_bool = _FIELD_TYPES[item.name] in (bool, bool | None)  # `--push_to_hub` / `--streaming` alone: true
        parser.add_argument(
            f"--{item.name}", nargs="?" if is_bool else None, const="true" if is_bool else None,
            metavar="VALUE", help=f"{_type_name(_FIELD_TYPES[item.name])} (default {item.default!r})"
            if item.default is not dataclasses.MISSING else _type_name(_FIELD_TYPES[item.name]),
        )
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config", None)
    overrides = {}
    for key, text in args.items():
        if _FIELD_TYPES[key] in (str, str | None):
            # String keys stay literal (paths like "001", mixed_precision "no"); only "null" clears an optional one.
            overrides[key] = None if text == "null" and _FIELD_TYPES[key] is not str else text
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"command line: cannot parse --{key} {text!r}: {error}") from error
        if isinstance(value, str) and _is_list_field(key):  # `--teachers a,b` like dataset_scripts' CLI
            value = [yaml.safe_load(item.strip()) for item in value.split(",") if item.strip()]
        overrides[key] = value
    return build_config(config_path, overrides)


__all__ = ["BATCH_KEYS", "CAPTION_MODES", "ConfigError", "MODES", "TrainingConfig", "build_config", "parse_args",
           "read_yaml_config"]
