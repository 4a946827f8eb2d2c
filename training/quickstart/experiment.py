"""The five stages of the quickstart in order (see `training/quickstart/__init__.py`), and the curves they give."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from modeling_mobileclip.atomic import write_json_atomic

from .held_out import build_held_out_sets, chance_levels, load_style, train_rows, write_parquet_once
from .report import bootstrap_factor, learning_efficiency_factor, plot_learning_curves
from .runs import check_teachers, reinforce_student_data, train_students, train_teachers
from .scoring import PER_IMAGE, evaluate_students, evaluate_teachers
from .settings import (CHOOSING_SET, CURVES_FILE, MODES, PLOT_FILE, PRIMARY_METRIC, PRIMARY_SET, SECONDARY_METRIC,
                       STUDENT_STYLE, STUDENT_VARIANT, STYLE_NAMES, TEACHER_VARIANT, TEMPLATES, UNSEEN_STYLE, Settings,
                       curve_steps)


def _stage(number: int, text: str) -> None:
    print(f"\n[{number}/5] {text}", flush=True)


def run(output_dir: Path, settings: Settings, device: str) -> dict[str, Any]:
    """All stages; returns the learning curves with the factor."""
    student_style = load_style(STUDENT_STYLE, settings.rows_per_style)
    unseen_style = load_style(UNSEEN_STYLE, settings.rows_per_style)
    held_out = build_held_out_sets(student_style, unseen_style)
    teachers = list(settings.teachers)
    if teachers:
        check_teachers(teachers, device)  # fail at once, before any training
    settings.check_against(output_dir)  # after the checks above: a refused value must not be recorded
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    if teachers:
        _stage(1, f"Teachers: {teachers}")
    else:
        count = f"{settings.num_teachers} teachers" if settings.num_teachers > 1 else "the teacher"
        _stage(1, f"Training {count} ({TEACHER_VARIANT}, plain CLIP loss, {settings.teacher_steps} steps) on the "
                  "train rows of both styles")
        both = datasets.concatenate_datasets([train_rows(student_style), train_rows(unseen_style)])
        source = write_parquet_once(both.select_columns(["image", "captions"]),
                                    output_dir / "source" / "teacher" / "train.parquet")
        teachers = [f"hf:{folder}" for folder in train_teachers(settings, source.parent, output_dir, device)]
    seconds["teacher"] = time.perf_counter() - start

    start = time.perf_counter()
    _stage(2, f"Reinforcing the {STYLE_NAMES[STUDENT_STYLE]} train rows: {settings.num_augmentations} augmentations, "
              f"teacher embeddings of every view and caption")
    source = write_parquet_once(train_rows(student_style).select_columns(["image", "unified", "captions"]),
                                output_dir / "source" / "students.parquet")
    data = reinforce_student_data(settings, source, teachers, output_dir / "reinforced", device)
    seconds["reinforce"] = time.perf_counter() - start

    start = time.perf_counter()
    _stage(3, f"Training the two students ({STUDENT_VARIANT}, {settings.student_steps} steps each)")
    train_students(settings, data, output_dir, device)
    seconds["students"] = time.perf_counter() - start

    start = time.perf_counter()
    _stage(4, f"Evaluating {len(curve_steps(settings))} points of each learning curve on "
              f"{', '.join(h.description for h in held_out.values())}")
    students = evaluate_students(settings, held_out, output_dir, device)
    teacher_metrics = evaluate_teachers(teachers, held_out, device)
    seconds["evaluate"] = time.perf_counter() - start

    _stage(5, "Report")
    curves = {
        "primary": {"held_out_set": PRIMARY_SET, "metric": PRIMARY_METRIC},
        "held_out_sets": {name: data.description for name, data in held_out.items()},
        "templates": TEMPLATES, "settings": dataclasses.asdict(settings), "teachers": teachers,
        "student_steps": settings.student_steps, "students": students, "teacher": teacher_metrics,
        "chance": {name: chance_levels(data) for name, data in held_out.items()},
    }
    steps = [p["step"] for p in students[MODES[0]]]
    curves["factors"] = {metric: learning_efficiency_factor(*[(steps, [p[PRIMARY_SET][metric] for p in students[mode]])
                                                             for mode in MODES])
                         for metric in (PRIMARY_METRIC, SECONDARY_METRIC)}
    per_image = [np.array([p[PRIMARY_SET][f"names/{PER_IMAGE}"] for p in students[mode]]) for mode in MODES]
    curves["factors"][PRIMARY_METRIC]["interval_90"] = list(bootstrap_factor(steps, *per_image, seed=settings.seed))
    curves["factor"] = curves["factors"][PRIMARY_METRIC]
    curves["choosing_set"] = CHOOSING_SET
    curves["seconds"] = seconds
    plot_learning_curves(curves, PRIMARY_METRIC, output_dir / PLOT_FILE,
                         f"{STUDENT_VARIANT}: plain CLIP vs reinforced training (emoji names, mean reciprocal rank)")
    write_json_atomic(output_dir / CURVES_FILE, curves)
    return curves


__all__ = ["run"]
