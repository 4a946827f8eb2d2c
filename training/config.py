"""The training configuration: one typed dataclass and the checks that need nothing but its values. It is read
from a YAML preset and overridden on the command line by `training.config_loading`:

    accelerate launch training/train.py --config training/configs/mobileclip-s0-datacompdr12m.yaml \
        --train_data /data/datacompdr12m --per_device_batch_size 256 --output_dir runs/s0

Every key is documented in :class:`TrainingConfig` and in the README's table.

Batch sizes follow transformers' Trainer, accelerate and open_clip: `per_device_batch_size` is what one forward
pass of one process holds, and global batch = per_device_batch_size x gradient_accumulation_steps x processes. Any
two of `global_batch_size`, `per_device_batch_size` and `gradient_accumulation_steps` determine the third
(`training.batch_sizes.resolve_batch_sizes`, once the number of processes is known). The global batch is the
recipe, the other two are how it is laid out on the hardware (`training.config_loading` lets a preset's layout keys
give way to the command line's). In the example above the preset's global batch of 8192 stays and the accumulation
steps are derived: 8192 = 256 per device x 32 accumulation steps x 1 process.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from typing import Any


MODES = ("reinforced", "clip", "online")
CAPTION_MODES = ("both", "random")
MIXED_PRECISIONS = ("no", "bf16", "fp16")
TRACKERS = ("tensorboard", "wandb", "all", "none")
LR_SCHEDULERS = ("cosine", "const", "const-cooldown")


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
    config_overrides: dict[str, Any] | None = None
    """Changes to the variant's config for a model trained from scratch (transformers' `config_overrides`), as
    `MobileCLIPConfig.from_variant` takes them, e.g. `{text_config: {max_position_embeddings: 32}}`; the tokenizer
    follows the text context length."""

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
    augment_on_device: bool = False
    """Reinforced data: the loader yields the resized crop and the stored RandAugment ops run on the whole batch on
    the accelerator, for the views whose ops torchvision's tensor ops reproduce within 1/255 of the CPU replay
    (all but Rotate; `dataset_scripts.augmentation.can_defer_ops`); the others are augmented in the loader."""
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
    """Linear warmup from 0 (open_clip convention: lr * (step + 1) / warmup_steps), for every `lr_scheduler`."""
    lr_scheduler: str = "cosine"
    """After warmup (open_clip's `--lr-scheduler`): `cosine` decay to `min_learning_rate` at `max_steps`; `const`
    (`learning_rate` to the end); `const-cooldown` (constant, then the last `lr_cooldown_steps` decay to
    `lr_cooldown_end` as (1 - progress) ** `lr_cooldown_power`: for long runs whose end is decided late)."""
    lr_cooldown_steps: int = 0
    """`const-cooldown`: length of the cooldown, the last steps before `max_steps` (open_clip's `--epochs-cooldown`,
    in steps)."""
    lr_cooldown_power: float = 1.0
    """`const-cooldown`: power of the polynomial cooldown (1: linear), open_clip's `--lr-cooldown-power`."""
    lr_cooldown_end: float = 0.0
    """`const-cooldown`: learning rate reached at `max_steps`, open_clip's `--lr-cooldown-end`."""
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

    # --- locked towers (fine-tuning, LiT) --------------------------------------------------------------------
    lock_image: bool = False
    """Freeze the image tower (open_clip's `--lock-image`): its parameters get no gradient, no optimizer state and
    stay bit-identical; LiT (locked-image tuning) with `init_from`."""
    lock_image_unlocked_groups: int = 0
    """Leave the last N groups of the image tower trainable (`--lock-image-unlocked-groups`), open_clip's (timm's
    `group_matcher`): the stem, one per block, then the final layers with the projection (`training.locking`)."""
    lock_image_freeze_bn_stats: bool = False
    """Keep the BatchNorm layers of the locked groups in eval mode, so their running statistics stay too
    (`--lock-image-freeze-bn-stats`)."""
    lock_text: bool = False
    """Freeze the text tower (open_clip's `--lock-text`)."""
    lock_text_unlocked_layers: int = 0
    """Leave the last N groups of the text tower trainable (`--lock-text-unlocked-layers`): the embeddings, one per
    layer (the last with the final LayerNorm), then the projection; 1 trains the projection only."""
    lock_text_freeze_layer_norm: bool = False
    """Freeze the LayerNorms of the locked text groups too (`--lock-text-freeze-layer-norm`); without it they stay
    trainable, as in open_clip's Hugging Face text towers (its own text transformer accepts only true)."""

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
    """`tensorboard` (event files and hparams in `output_dir/<project_name>`), `wandb` (run folder in
    `output_dir/wandb`, or under `$WANDB_DIR`; `WANDB_MODE=offline` keeps it local), `all` (both) or `none`
    (comma-separated combinations allowed)."""
    logging_steps: int = 10
    """Log averaged losses, lr, logit scale and samples/s every N steps."""
    project_name: str = "mobileclip"
    """Tracker project name: TensorBoard logs go to `output_dir/<project_name>`; the wandb project."""
    run_name: str | None = None
    """wandb's run name (default: one wandb makes up); TensorBoard does not use it."""

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
        if self.config_overrides and self.init_from:
            raise ConfigError("config_overrides change the variant of a model trained from scratch, but init_from "
                              f"({self.init_from!r}) loads a saved one with its own config; drop one of them.")
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
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError(f"lr_scheduler must be one of {LR_SCHEDULERS}, got {self.lr_scheduler!r}.")
        if self.lr_scheduler == "const-cooldown" and not 0 < self.lr_cooldown_steps <= self.max_steps:
            raise ConfigError(f"lr_scheduler 'const-cooldown' needs 1 <= lr_cooldown_steps <= max_steps "
                              f"({self.max_steps}), got lr_cooldown_steps={self.lr_cooldown_steps}.")
        for name in ("lock_image_unlocked_groups", "lock_text_unlocked_layers", "lr_cooldown_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for lock, detail in (("lock_image", ("lock_image_unlocked_groups", "lock_image_freeze_bn_stats")),
                             ("lock_text", ("lock_text_unlocked_layers", "lock_text_freeze_layer_norm"))):
            given = [name for name in detail if getattr(self, name)]
            if given and not getattr(self, lock):
                raise ConfigError(f"{', '.join(given)} refine(s) {lock}, which is false; set {lock}: true or drop "
                                  "them.")
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
        """The trackers to start. `all` means TensorBoard and wandb, not Accelerate's `all` (every tracker package
        it finds installed: MLflow, Comet, Aim... would start too, each writing where it likes)."""
        names = [name.strip() for name in self.report_to.split(",") if name.strip()]
        if names == ["none"]:
            return []
        expanded = [tracker for name in names for tracker in (("tensorboard", "wandb") if name == "all" else (name,))]
        return list(dict.fromkeys(expanded))

    def resolved_kd_weight(self) -> float:
        if self.mode == "clip":
            return 0.0
        if self.kd_weight is not None:
            return self.kd_weight
        # MobileCLIP-B was trained with (w_clip, w_kd) = (0.25, 0.75); S variants and all MobileCLIP2 with (0, 1).
        return 0.75 if self.variant.lower() == "mobileclip-b" else 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = ["CAPTION_MODES", "ConfigError", "MIXED_PRECISIONS", "MODES", "TRACKERS", "TrainingConfig"]
