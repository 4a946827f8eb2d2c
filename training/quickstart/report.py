"""The quickstart's result: the learning-efficiency factor, the printed table and the plot.

:func:`learning_efficiency_factor`: total steps of the plain student divided by the first step at which the
reinforced student's curve reaches the plain student's final score (linear interpolation between points);
:func:`bootstrap_factor`: its 90% interval over the evaluation images (both students on the same resampled images).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from modeling_mobileclip.atomic import atomic_path

from .settings import (CURVES_FILE, EMOJI_DIR, MODES, PLOT_FILE, PRIMARY_METRIC, PRIMARY_SET, SECONDARY_METRIC,
                       STUDENT_VARIANT, STYLE_NAMES, TEMPLATES, UNSEEN_STYLE)


BOOTSTRAP_SAMPLES, INTERVAL = 2000, (5.0, 95.0)
REPORT_METRICS = [
    ("names MRR", "names/mrr"), ("names top-5", "names/acc5"), ("names top-1", "names/acc1"),
    ("subcategories top-1", "subcategories/acc1"), ("categories top-1", "categories/acc1"),
    ("text->image R@5", "retrieval/image_retrieval_recall@5"), ("image->text R@5", "retrieval/text_retrieval_recall@5"),
]


def first_step_reaching(steps: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """The first step at which the piecewise-linear curve through (steps, values) reaches `target` (None: never)."""
    for i, (step, value) in enumerate(zip(steps, values)):
        if value >= target:
            if i == 0:
                return float(step)
            before_step, before = steps[i - 1], values[i - 1]
            return before_step + (target - before) / (value - before) * (step - before_step)
    return None


def learning_efficiency_factor(plain: tuple[Sequence[int], Sequence[float]],
                               reinforced: tuple[Sequence[int], Sequence[float]]) -> dict[str, float | None]:
    """X = the plain student's total steps / the step at which the reinforced curve reaches the plain final value.

    If the reinforced curve never reaches it, X is measured the other way round and lies below 1: the step at which
    the plain curve reaches the reinforced student's final value, divided by the total steps.
    """
    (plain_steps, plain_values), (steps, values) = plain, reinforced
    total, target = plain_steps[-1], plain_values[-1]
    reached = first_step_reaching(steps, values, target)
    if reached is not None:
        factor = math.inf if reached <= 0 else total / reached
        return {"factor": factor, "plain_final": target, "reinforced_step_reaching_plain_final": reached}
    plain_reaching = first_step_reaching(plain_steps, plain_values, values[-1])
    return {"factor": (plain_reaching or 0.0) / total, "plain_final": target,
            "reinforced_step_reaching_plain_final": None, "plain_step_reaching_reinforced_final": plain_reaching}


def bootstrap_factor(steps: Sequence[int], plain: np.ndarray, reinforced: np.ndarray,
                     samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """The 90% percentile interval of the factor over the evaluation images: `plain` and `reinforced` hold each curve
    point's per-image scores (points x images); each resample draws images with replacement, the same images for
    both students, and the factor is computed on the curves of their means."""
    rng = np.random.default_rng(seed)
    count = plain.shape[1]
    factors = []
    for _ in range(samples):
        chosen = rng.integers(0, count, count)
        factors.append(learning_efficiency_factor((steps, plain[:, chosen].mean(axis=1)),
                                                  (steps, reinforced[:, chosen].mean(axis=1)))["factor"])
    low, high = np.percentile(np.asarray(factors), INTERVAL, method="inverted_cdf")
    return float(low), float(high)


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def format_report(curves: dict[str, Any], factor: dict[str, Any], output_dir: Path) -> str:
    """The printed table: final scores of both students, the teacher and chance on both held-out sets."""
    lines = ["", f"Learning efficiency: {STUDENT_VARIANT} students, {curves['student_steps']} steps each, "
                 f"teacher {', '.join(curves['teachers'])}", ""]
    header = f"{'metric (%)':<22} {'clip':>7} {'reinf.':>7} {'teacher':>8} {'chance':>7}"
    for set_name, description in curves["held_out_sets"].items():
        lines += [description, header]
        for label, key in REPORT_METRICS:
            plain, reinforced = (curves["students"][mode][-1][set_name][key] for mode in MODES)
            teacher = curves["teacher"][set_name][key]
            lines.append(f"{label:<22} {100 * plain:7.2f} {100 * reinforced:7.2f} {100 * teacher:8.2f} "
                         f"{100 * curves['chance'][set_name][key]:7.2f}")
        lines.append("")
    for metric, measured in ((PRIMARY_METRIC, factor), (SECONDARY_METRIC, curves["factors"][SECONDARY_METRIC])):
        reached = measured.get("reinforced_step_reaching_plain_final")
        role = "Primary" if metric == PRIMARY_METRIC else "Also"
        named = f"{role} ({curves['held_out_sets'][PRIMARY_SET]}, {metric})"
        if reached is not None:
            lines.append(f"{named}: the plain student ends at {100 * measured['plain_final']:.2f}%; the reinforced "
                         f"student reaches that at step {reached:.0f} of {curves['student_steps']}: "
                         f"{measured['factor']:.2f}x.")
        else:
            lines.append(f"{named}: the reinforced student never reaches the plain student's final "
                         f"{100 * measured['plain_final']:.2f}%; factor {measured['factor']:.2f}x (the plain student's "
                         "step reaching the reinforced final, over the total steps).")
    low, high = factor["interval_90"]
    lines += [
        f"Bootstrap 90% interval of the factor over the {curves['held_out_sets'][PRIMARY_SET].split(',')[0]} images "
        f"({BOOTSTRAP_SAMPLES} resamples): {low:.2f}x to {high:.2f}x.",
        f"Teacher note: the teacher trained on the {STYLE_NAMES[UNSEEN_STYLE]} train rows, so only the students are "
        f"held out from the {STYLE_NAMES[UNSEEN_STYLE]} set.",
        "",
        f"Students (AutoModel folders): {_display_path(output_dir / 'students' / 'clip')}, "
        f"{_display_path(output_dir / 'students' / 'reinforced')}",
        f"Learning curves: {_display_path(output_dir / CURVES_FILE)}",
        f"Plot: {_display_path(output_dir / PLOT_FILE)}",
        "",
        f"See them in a browser, on the {STYLE_NAMES[UNSEEN_STYLE]} emoji the students never saw "
        "(pip install -e \".[demo]\"):",
        "  " + demo_command(output_dir),
    ]
    return "\n".join(lines)


def demo_command(output_dir: Path) -> str:
    """The `python -m evaluation.demo` line that compares both students (and the quickstart's own teacher, when it
    trained one) on the unseen style, with the names template the curves score."""
    models = [output_dir / "students" / mode for mode in MODES]
    if (output_dir / "teacher" / "model").is_dir():
        models.append(output_dir / "teacher" / "model")
    words = ["python", "-m", "evaluation.demo", *[w for m in models for w in ("--model", _display_path(m))],
             "--images", _display_path(EMOJI_DIR), "--images-config", UNSEEN_STYLE,
             "--template", TEMPLATES["names"]]
    return shlex.join(words)


def format_factor(factor: float) -> str:
    return f"learning-efficiency factor: {factor:.2f}x"


def plot_learning_curves(curves: dict[str, Any], metric: str, path: Path, title: str) -> Path:
    """Both students' `metric` against steps on every held-out set, the teacher as a horizontal line."""
    # The sets scored at every curve point (the others only at the curve's ends).
    sets = {name: description for name, description in curves["held_out_sets"].items()
            if all(name in point for mode in MODES for point in curves["students"][mode])}
    # A bare Figure renders with Agg when saved: no pyplot, so no global backend is chosen for the caller.
    figure = Figure(figsize=(6 * len(sets), 4.2))
    axes = figure.subplots(1, len(sets), squeeze=False)
    for axis, (set_name, description) in zip(axes[0], sets.items()):
        for mode, color in (("clip", "tab:blue"), ("reinforced", "tab:orange")):
            points = curves["students"][mode]
            axis.plot([p["step"] for p in points], [100 * p[set_name][metric] for p in points], marker="o",
                      markersize=3, color=color, label=f"{mode} student")
        teacher = curves.get("teacher")
        if teacher:
            axis.axhline(100 * teacher[set_name][metric], color="tab:green", linestyle="--", label="teacher")
        axis.axhline(100 * curves["chance"][set_name][metric], color="gray", linestyle=":", label="chance")
        axis.set_title(description, fontsize=10)
        axis.set_xlabel("training step")
        axis.set_ylabel(f"{metric} (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    with atomic_path(path) as staged:
        figure.savefig(staged, dpi=110, format="png")
    return path


__all__ = ["BOOTSTRAP_SAMPLES", "REPORT_METRICS", "bootstrap_factor", "first_step_reaching", "format_factor", "format_report", "learning_efficiency_factor",
           "plot_learning_curves"]
