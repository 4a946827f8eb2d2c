"""Reinforced MobileCLIP training with Accelerate, from one CPU to many GPUs and nodes.

    accelerate launch training/train.py --config training/configs/mobileclip-s0-datacompdr12m.yaml \
        --train_data /data/datacompdr12m [--key value ...]

Modes (`--mode`): `reinforced` (default; CLIP + distillation against the teacher embeddings stored in the dataset,
the MobileCLIP recipe), `clip` (no teacher: the baseline), `online` (the teachers run inside the loop on the same
views: for comparison and for data that has not been reinforced).

Steps, in order: Accelerator; the batch sizes (global batch = per-device batch x accumulation steps x processes,
`training.batch_sizes.resolve_batch_sizes`); the data, map-style or streaming (training/inputs.py), validated with the
teachers (data columns vs mode, teacher dims vs stored embeddings, batch size vs processes); model, optimizer,
`accelerator.prepare`, the weights' EMA (`--ema_decay`); resume (`--resume_from_checkpoint latest`); the loop (lr
from a pure function of the step, forward, loss over the global batch and backward, in `--gradient_accumulation_steps`
micro-batches of `--per_device_batch_size` (training/step.py), clip, AdamW step, logit-scale clamp, EMA update,
logging, checkpoints, periodic zero-shot evaluation of the weights and their EMA); then the final evaluation, a complete
Hugging Face folder in `output_dir/model` (model card included) and an optional push to the Hub.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `accelerate launch training/train.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from dataset_scripts.augmentation import apply_ops_to_batch
from evaluation.datasets_io import load_eval_dataset, read_classnames
from evaluation.zero_shot import evaluate_zero_shot
from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel
from modeling_mobileclip.cli import run_main
from modeling_mobileclip.model_folder import push_folder
from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor
from training.checkpointing import (
    TrainingState,
    check_resume_compatible,
    load_checkpoint,
    resolve_resume_path,
    save_checkpoint,
)
from training.batch_sizes import BatchSizes, resolve_batch_sizes
from training.config import ConfigError, TrainingConfig
from training.config_loading import parse_args
from training.data import Collator, DataSpec
from training.device_support import channels_last_cpu_kernels, check_device_support
from training.inputs import TrainingData, load_training_data, stream_state_files
from training.ema import create_ema, update_ema
from training.hub import save_trained_model
from training.locking import lock_towers
from training.losses import ReinforcedCLIPLoss
from training.run_guard import guard_output_dir
from training.schedule import learning_rate_at
from training.step import OnlineTeachers, accumulate_gradients, normalize_views


DEFAULT_TEACHER_LOGIT_SCALE = 100.0  # MobileCLIP v1's teachers (OpenAI / DataComp-XL ViT-L-14)
HISTORY_FILE = "train_history.jsonl"
# Metric-name prefixes of the periodic evaluation of the raw weights and of their EMA (ema_decay).
EVAL_PREFIXES = {"raw": "eval/", "ema": "eval_ema/"}
OnGradients = Callable[[int, nn.Module, dict[str, torch.Tensor]], None]


@dataclass
class TrainingResult:
    """What a finished run returns (on every process; history and metrics are complete on the main process)."""

    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    model_dir: Path | None = None
    """`output_dir/model`: the saved folder (the EMA weights with `save_ema_weights`)."""
    model: MobileCLIPModel | None = None
    """The trained model in memory (raw weights; unwrapped from DDP/compile)."""
    ema_model: MobileCLIPModel | None = None
    """Its EMA (`ema_decay`), or None."""


def resolve_teacher_logit_scales(config: TrainingConfig, spec: DataSpec) -> list[float]:
    """The config's `teacher_logit_scales`; else the learned scales the dataset card records for every teacher
    (mode reinforced); else DEFAULT_TEACHER_LOGIT_SCALE each. Empty in mode clip (no teachers)."""
    if config.mode == "clip":
        return []
    if config.teacher_logit_scales is not None:  # presets (100 / 70, 60) and explicit choices win
        return list(config.teacher_logit_scales)
    if spec.card_logit_scales is not None:
        return list(spec.card_logit_scales)
    return [DEFAULT_TEACHER_LOGIT_SCALE] * len(spec.teacher_dims)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay for biases, norm weights, layer scales and the logit scale (open_clip's rule)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        exempt = parameter.ndim < 2 or name.endswith(".bias") or "logit_scale" in name or "layer_scale" in name \
            or name.endswith(".gamma")
        (no_decay if exempt else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_model_and_processor(config: TrainingConfig) -> tuple[MobileCLIPModel, Any]:
    """A fresh `variant` (seeded) or the `init_from` checkpoint, with the matching processor."""
    if config.init_from:
        model = MobileCLIPModel.from_pretrained(config.init_from)
        try:
            processor = MobileCLIPProcessor.from_pretrained(config.init_from)
        except (OSError, ValueError):
            processor = MobileCLIPProcessor.from_model_config(model.config, default_variant=config.variant)
    else:
        try:
            model_config = MobileCLIPConfig.from_variant(config.variant, **(config.config_overrides or {}))
        except TypeError as error:
            raise ConfigError(f"config_overrides {config.config_overrides}: {error}") from None
        model = MobileCLIPModel(model_config)
        processor = MobileCLIPProcessor.from_model_config(model_config)
    model.config.logit_scale_max = config.logit_scale_max
    return model, processor


def set_train_mode(model: nn.Module, frozen_norms: list[nn.Module]) -> None:
    """Training mode, except the BatchNorm layers whose running statistics stay (`freeze_batchnorm`, locked groups
    with `lock_image_freeze_bn_stats`)."""
    model.train()
    for module in frozen_norms:
        module.eval()


class PeriodicEvaluation:
    """Zero-shot classification on a small held-out set with the `evaluation` package (CLIP_benchmark semantics)."""

    def __init__(self, config: TrainingConfig, accelerator: Accelerator):
        self.config, self.accelerator = config, accelerator
        with accelerator.main_process_first():
            self.loaded = load_eval_dataset(config.eval_data, config.eval_split, config.eval_data_config)
        if config.eval_max_samples is not None and len(self.loaded.dataset) > config.eval_max_samples:
            self.loaded.dataset = self.loaded.dataset.select(range(config.eval_max_samples))
        self.classnames = read_classnames(config.eval_classnames) if config.eval_classnames else None
        column = config.eval_label_column
        if column not in self.loaded.dataset.column_names:
            raise ConfigError(f"eval_label_column {column!r} is not a column of {config.eval_data} "
                              f"({self.loaded.dataset.column_names}).")
        if self.classnames is None and getattr(self.loaded.dataset.features[column], "dtype", None) == "string":
            # String labels without a class list: the classes are the distinct labels, named by themselves.
            self.classnames = {label: label for label in sorted(set(self.loaded.dataset[column]))}

    def __call__(self, model: MobileCLIPModel, processor: Any,
                 ema_model: MobileCLIPModel | None = None) -> dict[str, float]:
        """`eval/...` metrics of `model` and, with an EMA, `eval_ema/...` metrics of its EMA copy."""
        metrics = self.zero_shot(model, processor, EVAL_PREFIXES["raw"])
        if ema_model is not None:
            metrics.update(self.zero_shot(ema_model, processor, EVAL_PREFIXES["ema"]))
        return metrics

    @torch.no_grad()
    def zero_shot(self, model: MobileCLIPModel, processor: Any, prefix: str) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            result = evaluate_zero_shot(
                model, processor, self.loaded, self.accelerator, self.config.eval_image_column,
                self.config.eval_label_column, self.classnames, self.config.eval_templates,
                batch_size=self.config.eval_batch_size,
            )
        finally:
            model.train(was_training)
        return {f"{prefix}{k}": float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}


def metrics_of_weights(metrics: dict[str, Any], weights: str) -> dict[str, Any]:
    """The model-card metrics of a saved folder holding the `weights` ("raw" or "ema"): the training metrics and the
    evaluation of those weights, without the evaluation of the other ones."""
    others = tuple(prefix for name, prefix in EVAL_PREFIXES.items() if name != weights)
    return {name: value for name, value in metrics.items() if not name.startswith(others)}


class MetricsWindow:
    """Averages per-step metrics between two logging steps; samples/s over the summed step times."""

    def __init__(self, global_batch: int):
        self.global_batch = global_batch
        self.sums: dict[str, float] = {}
        self.steps, self.seconds = 0, 0.0

    def add(self, values: dict[str, float], seconds: float) -> None:
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps, self.seconds = self.steps + 1, self.seconds + seconds

    def flush(self, step: int, **extra: float) -> dict[str, float]:
        record = {"step": step, **{k: v / self.steps for k, v in self.sums.items()}, **extra,
                  "samples_per_second": self.steps * self.global_batch / max(self.seconds, 1e-9)}
        self.sums, self.steps, self.seconds = {}, 0, 0.0
        return record


def _tracker_config(resolved: dict[str, Any], tracker: str) -> dict[str, Any]:
    """The resolved configuration as `tracker` stores it: wandb's config holds any JSON value; TensorBoard's hparams
    hold only numbers, booleans and text (lists and None arrive as text)."""
    if tracker == "wandb":
        return dict(resolved)
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in resolved.items()}


def start_trackers(accelerator: Accelerator, config: TrainingConfig, resolved: dict[str, Any], step: int = 0) -> None:
    """Starts the `report_to` trackers (on the main process; the Accelerator was made with log_with=config.trackers)
    with the resolved configuration: TensorBoard in `output_dir/<project_name>`; wandb named `run_name`, its folder
    `output_dir/wandb` beside the run's other files unless WANDB_DIR chooses one (wandb's own default: the current
    directory). `step`: the step a resumed run starts after."""
    if not config.trackers:
        return
    wandb: dict[str, Any] = {"name": config.run_name} if config.run_name else {}
    if not os.environ.get("WANDB_DIR"):
        wandb["dir"] = config.output_dir
    init_kwargs: dict[str, dict[str, Any]] = {"wandb": wandb}
    if step:  # TensorBoard drops what an interrupted run logged after the checkpoint (redone), as the history does
        init_kwargs["tensorboard"] = {"purge_step": step + 1}
    accelerator.init_trackers(config.project_name, init_kwargs=init_kwargs)
    for tracker in accelerator.trackers:  # empty but on the main process
        tracker.store_init_configuration(_tracker_config(resolved, tracker.name))


def _check_launch(accelerator: Accelerator) -> None:
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise RuntimeError(
            f"{launched} processes were launched but Accelerate runs each alone (no GPU per process?): every "
            "process would train the whole run by itself. On CPUs launch with ACCELERATE_USE_CPU=true "
            "`accelerate launch --multi_gpu --num_processes N ...` (gloo), see the training README."
        )


def _read_history(path: Path, up_to_step: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row["step"] <= up_to_step]


def train(config: TrainingConfig, on_gradients: OnGradients | None = None,
          data: TrainingData | None = None) -> TrainingResult:
    """Runs (or resumes) one training run; see the module docstring for the order of the steps.

    Args:
        config: The run's settings.
        on_gradients: Called after each step's backward with (step, model, losses), before clipping and the
            optimizer step (gradients inspection, tests).
        data: Training data the caller prepared (`training.inputs.TrainingData.from_dataset` for a `datasets.Dataset`
            in memory, or `load_training_data`); default: `load_training_data(config)`, which reads `train_data`.
    """
    with channels_last_cpu_kernels(config):
        return _train(config, on_gradients, data)


def _train(config: TrainingConfig, on_gradients: OnGradients | None, data: TrainingData | None) -> TrainingResult:
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with=config.trackers or None,
        project_dir=config.output_dir,
        dynamo_backend="inductor" if config.torch_compile else "no",
    )
    _check_launch(accelerator)
    # global batch = per-device batch (one forward) x accumulation steps x processes; the loader hands each process
    # per_device x accumulation_steps samples a step, which accumulate_gradients splits into the micro-batches.
    batch_sizes: BatchSizes = resolve_batch_sizes(config, accelerator.num_processes)
    global_batch, accumulation_steps = batch_sizes.global_batch, batch_sizes.accumulation_steps
    check_device_support(config, accelerator.device)
    output_dir = Path(config.output_dir)

    # Teachers and data (map-style or streaming, training/inputs.py), validated before any model is built.
    teachers = None
    if config.mode == "online":
        with accelerator.main_process_first():
            teachers = OnlineTeachers(config.teachers, accelerator.device, config.mixed_precision)
    if data is None:
        with accelerator.main_process_first():
            data = load_training_data(config, teachers.dims if teachers else None)
    spec = data.spec
    kd_weight = config.resolved_kd_weight()
    teacher_scales = resolve_teacher_logit_scales(config, spec)
    resolved = {
        **config.to_dict(),
        "global_batch_size_resolved": global_batch,
        "per_device_batch_size_resolved": batch_sizes.per_device,
        "gradient_accumulation_steps_resolved": accumulation_steps,
        "num_processes": accelerator.num_processes,
        "kd_weight_resolved": kd_weight,
        "teachers_resolved": [] if config.mode == "clip" else spec.teacher_specs,
        "teacher_dims_resolved": [] if config.mode == "clip" else spec.teacher_dims,
        "teacher_logit_scales_resolved": teacher_scales,
        "use_synthetic_captions_resolved": spec.use_synthetic_captions,
        **data.resolved(config, global_batch),
    }
    # Before anything is written: output_dir must be empty or hold this same run (see training/run_guard.py).
    guard_output_dir(output_dir, resolved, bool(config.resume_from_checkpoint), config.overwrite_output_dir,
                     accelerator.is_main_process, accelerator.wait_for_everyone, accelerator.print)
    evaluation = PeriodicEvaluation(config, accelerator) if config.eval_data else None

    # Model and optimizer. Seeding right here makes the initial weights independent of what loaded before
    # (random-weight teachers, datasets), so every mode and process count starts from the same student.
    set_seed(config.seed)
    model, processor = build_model_and_processor(config)
    # Locked parameters get requires_grad=False before the optimizer is built, so they have no optimizer state.
    frozen_norm_names = lock_towers(model, config)
    if config.freeze_batchnorm:
        frozen_norm_names = [name for name, module in model.named_modules()
                             if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if config.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    if config.sync_batchnorm and accelerator.num_processes > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay), lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    # The model itself, without DDP or torch.compile wrappers: its parameter names are the saved ones.
    unwrapped: MobileCLIPModel = accelerator.unwrap_model(model, keep_torch_compile=False)
    frozen_norms = [unwrapped.get_submodule(name) for name in frozen_norm_names]  # after any SyncBatchNorm swap
    # Copied from the prepared model (its device and memory format), so the EMA starts at the initial weights; on
    # resume, load_checkpoint overwrites it with the saved EMA.
    ema = create_ema(unwrapped, config.ema_decay) if config.ema_decay is not None else None
    ema_model: MobileCLIPModel | None = ema.module if ema is not None else None
    # Not registered with accelerator.register_for_checkpointing: accelerate would unpickle it with
    # weights_only=False on resume. training.checkpointing saves and restores it as JSON.
    state = TrainingState()

    resume_path = resolve_resume_path(config)
    if resume_path is not None:
        check_resume_compatible(resume_path, resolved)
        state.step = load_checkpoint(accelerator, resume_path, model, optimizer, ema=ema_model)
        accelerator.print(f"Resumed from {resume_path} at step {state.step}.")
    history = []
    if accelerator.is_main_process:
        # Steps logged after the checkpoint by an interrupted run are redone: drop them from the log.
        history = _read_history(output_dir / HISTORY_FILE, state.step)
        if history or (output_dir / HISTORY_FILE).exists():
            (output_dir / HISTORY_FILE).write_text("".join(json.dumps(row) + "\n" for row in history))

    views = data.build_views(config, unwrapped.config.image_size, unwrapped.config.resample, processor.tokenizer)
    loader = data.loader(views, Collator(processor.tokenizer, keep_text=teachers is not None), config, global_batch,
                         accelerator.process_index, accelerator.num_processes, state.step, resume_path,
                         log=accelerator.print)
    loss_fn = ReinforcedCLIPLoss(
        kd_weight, spec.teacher_dims if kd_weight else (), teacher_scales if kd_weight else (),
        local_loss=config.local_loss, rank=accelerator.process_index, world_size=accelerator.num_processes,
    )
    mean = torch.tensor(unwrapped.config.image_mean, device=accelerator.device).view(1, 3, 1, 1)
    std = torch.tensor(unwrapped.config.image_std, device=accelerator.device).view(1, 3, 1, 1)

    def normalize(views: torch.Tensor) -> torch.Tensor:
        return normalize_views(views, mean, std, config.channels_last)

    accelerator.print(
        f"mode {config.mode} | {config.variant} | {data.describe(global_batch)} | {batch_sizes.describe()} | "
        f"lambda {kd_weight} | teachers {resolved['teachers_resolved']} (scales {teacher_scales}) | "
        f"synthetic captions {spec.use_synthetic_captions} (caption_mode {config.caption_mode}) | "
        f"{config.max_steps} steps"
    )
    start_trackers(accelerator, config, resolved, state.step)

    set_train_mode(model, frozen_norms)
    progress = tqdm(total=config.max_steps, initial=state.step, disable=not accelerator.is_local_main_process,
                    desc="training", dynamic_ncols=True)
    max_log_scale = math.log(config.logit_scale_max)
    window = MetricsWindow(global_batch)
    metrics: dict[str, Any] = {}
    eval_history: list[tuple[int, dict[str, Any]]] = []
    tick = time.perf_counter()
    for batch in loader if state.step < config.max_steps else ():
        lr = learning_rate_at(state.step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = {k: v.to(accelerator.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        if "deferred_ops" in batch:  # augment_on_device: the loader left these RandAugment ops to the device
            batch["views"] = apply_ops_to_batch(batch["views"], batch.pop("deferred_ops"))
        losses = accumulate_gradients(model, batch, loss_fn, unwrapped.logit_scale, normalize, teachers,
                                      accumulation_steps, accelerator)
        if on_gradients is not None:
            on_gradients(state.step, unwrapped, losses)
        grad_norm = None
        if config.max_grad_norm:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            unwrapped.logit_scale.clamp_(0.0, max_log_scale)
        if ema is not None:  # after the clamp: the EMA averages the weights the model evaluates with
            update_ema(ema, unwrapped)
        state.step += 1

        logged = torch.stack([losses["loss"].detach(), losses["clip_loss"], losses["distill_loss"]])
        reduced = accelerator.reduce(logged, reduction="mean").tolist()
        step_metrics = dict(zip(("loss", "clip_loss", "distill_loss"), reduced))
        if grad_norm is not None:
            step_metrics["grad_norm"] = float(grad_norm)
        window.add(step_metrics, time.perf_counter() - tick)
        if state.step % config.logging_steps == 0 or state.step == config.max_steps:
            record = window.flush(state.step, lr=lr, logit_scale=float(unwrapped.logit_scale.detach().exp()))
            history.append(record)
            accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=state.step)
            if accelerator.is_main_process:
                output_dir.mkdir(parents=True, exist_ok=True)
                with open(output_dir / HISTORY_FILE, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
            progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}",
                                 samples_s=f"{record['samples_per_second']:.1f}")
        progress.update(1)

        if config.save_steps and state.step % config.save_steps == 0 and state.step < config.max_steps:
            save_checkpoint(accelerator, output_dir, state.step, resolved, config.save_total_limit, model, optimizer,
                            ema=ema_model, process_files=stream_state_files(loader, accelerator.process_index))
        if evaluation is not None and config.eval_steps and state.step % config.eval_steps == 0 \
                and state.step < config.max_steps:
            metrics = evaluation(unwrapped, processor, ema_model)
            eval_history.append((state.step, metrics))  # the model card's model-index lists every evaluation
            set_train_mode(model, frozen_norms)
            accelerator.log(metrics, step=state.step)
            accelerator.print(f"step {state.step}: {metrics}")
        if state.step >= config.max_steps:
            break
        tick = time.perf_counter()  # samples/s counts training (data included), not checkpoints or evaluation
    progress.close()

    if evaluation is not None:
        metrics = evaluation(unwrapped, processor, ema_model)
        accelerator.log(metrics, step=state.step)
        accelerator.print(f"final: {metrics}")
    if history:
        metrics = {"train/loss": history[-1]["loss"], "train/samples_per_second": history[-1]["samples_per_second"],
                   **metrics}
    model_dir = output_dir / "model"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # `model` (the folder that is pushed) holds the weights save_ema_weights selects; with an EMA the other
        # weights become `model_raw` / `model_ema`, a folder as complete and loadable as `model`.
        selected = "ema" if config.save_ema_weights else "raw"
        for weights, module in {"raw": unwrapped, "ema": ema_model}.items():
            if module is None:
                continue
            folder = model_dir if weights == selected else output_dir / f"model_{weights}"
            save_trained_model(module, processor, folder, {**resolved, "saved_weights": weights},
                               metrics_of_weights(metrics, weights), config.save_reparameterized,
                               [(step, metrics_of_weights(values, weights)) for step, values in eval_history])
        if config.push_to_hub:
            url = push_folder(model_dir, config.hub_model_id, config.hub_private,
                              f"MobileCLIP {config.variant}, {config.mode} training, step {state.step}")
            accelerator.print(f"Pushed to {url}")
    # Waiting before end_training avoids a rare gloo abort at interpreter exit on multi-process CPU runs.
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainingResult(step=state.step, history=history, metrics=metrics, model_dir=model_dir, model=unwrapped,
                          ema_model=ema_model)


def main(argv: list[str] | None = None, on_gradients: OnGradients | None = None) -> TrainingResult:
    """Command-line entry point (`accelerate launch training/train.py --config ... [--key value]`)."""
    return train(parse_args(argv), on_gradients)


if __name__ == "__main__":
    run_main(main)
