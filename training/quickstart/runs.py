"""The quickstart's runs: the teacher, the reinforcement of the students' data, the two students.

Each run reuses what an earlier run into the same folder finished, and a training continues from its last
checkpoint.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dataset_scripts.reinforce import ReinforceConfig, reinforce
from dataset_scripts.teachers import load_teachers
from modeling_mobileclip.atomic import atomic_folder

from ..config_loading import CONFIGS_DIR, build_config
from ..train import train
from .scoring import score_own_curve
from .settings import (MODES, PRESET, STUDENT_VARIANT, TEACHER_VARIANT, Settings, eval_interval,
                       model_overrides)


# DataLoader workers per scale (the data does not depend on them: every draw is a function of (seed, epoch, row)).
# On 2 CPU cores one worker saved nothing measurable (15.7 vs 15.9 min); a GPU needs them to stay fed.
LOADER_WORKERS = {"tiny": 0, "default": 0, "full": 4}
# Scales whose two students train at the same time on a multi-core CPU (see `train_students`); tiny runs take
# seconds, where starting two interpreters would dominate.
CONCURRENT_SCALES = ("default", "full")


def _config(settings: Settings, device: str, **overrides: Any):
    return build_config(CONFIGS_DIR / PRESET, {
        "seed": settings.seed, "resume_from_checkpoint": "latest", "report_to": "none",
        "num_workers": LOADER_WORKERS[settings.scale],
        "mixed_precision": "bf16" if device == "cuda" else "no", "save_total_limit": None,
        "config_overrides": model_overrides(settings), **overrides,
    })


def _copy_folder_once(source: Path, destination: Path) -> Path:
    if not (destination / "config.json").is_file():
        with atomic_folder(destination) as staging:
            shutil.copytree(source, staging, dirs_exist_ok=True)
    return destination


def teacher_seed(settings: Settings, index: int) -> int:
    """Teacher `index` of the ensemble: its own initialisation and data order (far from the other runs' seeds)."""
    return settings.seed + 1000 * index


def teacher_folder(output_dir: Path, index: int) -> Path:
    return output_dir / ("teacher" if index == 0 else f"teacher_{index + 1}") / "model"


def train_teacher(settings: Settings, source: Path, output_dir: Path, device: str, index: int = 0) -> Path:
    """A `mobileclip-tiny-wide` CLIP model trained on both styles' train rows (reused when already saved)."""
    folder = teacher_folder(output_dir, index)
    if (folder / "config.json").is_file():
        print(f"Reusing the teacher in {folder}.")
        return folder
    config = _config(
        settings, device, seed=teacher_seed(settings, index), variant=TEACHER_VARIANT, mode="clip",
        train_data=str(source), caption_column="captions",
        output_dir=str(folder.parent / "run"), max_steps=settings.teacher_steps,
        per_device_batch_size=settings.teacher_batch_size, learning_rate=settings.teacher_learning_rate,
        warmup_steps=max(1, settings.teacher_steps // 10), crop_scale=list(settings.crop_scale),
        save_steps=max(1, settings.teacher_steps // 4), save_total_limit=1,
        logging_steps=max(1, settings.teacher_steps // 20),
    )
    result = train(config)
    return _copy_folder_once(result.model_dir, folder)


def train_teachers(settings: Settings, source: Path, output_dir: Path, device: str) -> list[Path]:
    """The `num_teachers` teachers of the ensemble, side by side on a multi-core CPU (see `train_students`)."""
    pending = [i for i in range(settings.num_teachers) if not (teacher_folder(output_dir, i) / "config.json").is_file()]
    if _side_by_side(settings, device, len(pending)):
        _run_side_by_side([(f"teacher {index + 1}", train_teacher, (settings, source, output_dir, device, index))
                           for index in pending])
        return [teacher_folder(output_dir, index) for index in range(settings.num_teachers)]
    return [train_teacher(settings, source, output_dir, device, index) for index in range(settings.num_teachers)]


def check_teachers(specs: list[str], device: str) -> list[str]:
    """Load every `--teacher` spec now, before any work; an ensemble must share one embedding size."""
    loaded = load_teachers(specs, torch.device(device), torch.float32)
    dims = {teacher.spec: teacher.dim for teacher in loaded}
    if len(set(dims.values())) > 1:
        raise ValueError("The --teacher ensemble mixes embedding sizes: " +
                         ", ".join(f"{spec!r} has {dim}" for spec, dim in dims.items()) +
                         "; use teachers with one embedding size.")
    return specs


def reinforce_student_data(settings: Settings, source: Path, teachers: list[str], output: Path, device: str) -> Path:
    """`dataset_scripts.reinforce` on the students' rows, in process (resumes a partial output)."""
    if settings.captioner == "none":  # every ground-truth caption gets teacher embeddings; none is synthetic
        captions = {"captioner": "column:captions", "num_synthetic_captions": 3}
    else:
        captions = {"captioner": settings.captioner}
    report = reinforce(ReinforceConfig(
        source=str(source), split="train", output=str(output), teachers=",".join(teachers), **captions,
        num_augmentations=settings.num_augmentations, caption_column="captions", uid_column="unified",
        image_size=64, dtype="bfloat16" if device == "cuda" else "float32", batch_size=64, shard_size=1024,
        num_workers=0, seed=settings.seed, no_progress=settings.scale == "tiny",
    ))
    if not report["complete"] or report["written"] == 0:
        raise RuntimeError(f"Reinforcement of {source} did not complete: {report}")
    return output


def train_student(mode: str, settings: Settings, data: Path, output_dir: Path, device: str) -> Path:
    """One student; checkpoints every `student_steps / eval_points` steps are the points of its learning curve."""
    folder = output_dir / "students" / mode
    if (folder / "config.json").is_file():
        print(f"Reusing the {mode} student in {folder}.")
        return folder
    steps = settings.student_steps
    config = _config(
        settings, device, variant=STUDENT_VARIANT, mode=mode, train_data=str(data), caption_mode="random",
        output_dir=str(output_dir / "runs" / mode), max_steps=steps, per_device_batch_size=settings.student_batch_size,
        learning_rate=settings.student_learning_rate, warmup_steps=max(1, steps // 10),
        save_steps=eval_interval(settings), logging_steps=max(1, steps // 20),
        **({"kd_weight": settings.kd_weight} if mode == "reinforced" else {}),
        **({"ema_decay": settings.ema_decay, "save_ema_weights": True} if settings.ema_decay else {}),
    )
    result = train(config)
    return _copy_folder_once(result.model_dir, folder)


def _side_by_side(settings: Settings, device: str, runs: int) -> bool:
    return device == "cpu" and runs > 1 and settings.scale in CONCURRENT_SCALES and (os.cpu_count() or 1) > 1


def _with_threads(threads: int, function: Callable[..., Any], *args: Any) -> None:
    torch.set_num_threads(threads)
    function(*args)


def _run_side_by_side(jobs: list[tuple[str, Callable[..., Any], tuple]]) -> None:
    """Each (name, function, args) in its own process, the threads split between them."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no shared Accelerate state or threads
    threads = max(1, torch.get_num_threads() // len(jobs))
    processes = [context.Process(target=_with_threads, name=name, args=(threads, function, *args))
                 for name, function, args in jobs]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    failed = [f"{process.name} (exit code {process.exitcode})" for process in processes if process.exitcode]
    if failed:
        raise RuntimeError(f"Training failed: {', '.join(failed)}; its error is printed above. Rerun the same command "
                           "to resume from the last checkpoints.")


def _train_and_score_student(mode: str, settings: Settings, data: Path, output_dir: Path, device: str) -> None:
    train_student(mode, settings, data, output_dir, device)
    score_own_curve(mode, settings, output_dir, device)


# The student whose process scores its own learning curve once trained: the plain one, which trains faster (one text
# batch a step, no teacher targets), so its scoring overlaps the reinforced student's last steps.
SCORED_IN_PROCESS = MODES[0]


def train_students(settings: Settings, data: Path, output_dir: Path, device: str) -> None:
    """Both students. On a multi-core CPU they train at the same time, as two processes that split the threads:
    measured on 2 cores, two 1-thread runs make 5.1 steps/s each where one 2-thread run makes 6.5. The plain
    student's process then scores its curve while the reinforced student finishes (stage 4 reuses those points and
    scores the rest with every thread: 2.3 s a point on one thread, 1.3 s on two). The curves do not depend on it
    beyond floating-point summation order (tested: equal to training one after the other)."""
    pending = [mode for mode in MODES if not (output_dir / "students" / mode / "config.json").is_file()]
    if _side_by_side(settings, device, len(pending)):
        _run_side_by_side([(f"{mode} student", _train_and_score_student if mode == SCORED_IN_PROCESS else train_student,
                            (mode, settings, data, output_dir, device)) for mode in pending])
        return
    for mode in MODES:
        train_student(mode, settings, data, output_dir, device)


__all__ = ["CONCURRENT_SCALES", "LOADER_WORKERS", "check_teachers", "reinforce_student_data", "teacher_folder",
           "teacher_seed", "train_student", "train_students", "train_teacher", "train_teachers"]
