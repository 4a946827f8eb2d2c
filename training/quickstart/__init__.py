"""The main job: does reinforced training learn faster than plain CLIP training? Measured end to end on real data.

    python -m training.quickstart [--output-dir runs/quickstart] [--scale tiny|default|full] [--device cpu|cuda]
        [--teacher SPEC [--teacher SPEC ...] | --num-teachers N] [--captioner SPEC] [--seed 0] [--num-threads T]
        [--teacher-steps S] [--student-steps S] [--num-augmentations N] [--kd-weight L] [--ema-decay D]

MobileCLIP's claim is learning efficiency: a dataset reinforced once with a teacher ensemble's embeddings of
recorded augmentations teaches a student far more per sample than the captions alone (arXiv 2311.17049, Fig. 6).
No pretrained weights can be fetched here, so the experiment makes its own teacher from the bundled emoji data
(`dataset_scripts/data/emoji`: the same 1,906 emoji drawn in two art styles, Twemoji and Noto, with CLDR names
and captions; the `split` column holds 10% of the emoji out as `val` in both styles):

1. **Teacher.** `mobileclip-tiny-wide` (twice the student's width) trained with the plain CLIP loss on the
   `train` rows of *both* styles (`--num-teachers N`: an ensemble of N, each with its own seed, side by side).
   `--teacher open_clip:ARCH:PRETRAINED` / `--teacher hf:DIR` (repeatable: an ensemble) uses real teachers instead.
2. **Reinforce** the students' data, the `train` rows of Twemoji, with `dataset_scripts.reinforce`: N recorded
   augmentations with the teachers' embeddings, plus the teachers' embeddings of *every* caption of an emoji (the
   `column:captions` captioner: the dataset's own captions fill the caption slots; `--captioner` adds real
   synthetic captions instead). The card records each teacher's learned logit scale, which training uses.
3. **Two students**, `mobileclip-tiny`, identical but for the loss: `--mode clip` (the baseline) and
   `--mode reinforced` (lambda = 1: distillation only, the MobileCLIP recipe), same initialisation, same data
   order, same views and captions (one caption of each emoji drawn per epoch), same steps. On a multi-core CPU
   they train at the same time as two processes that split the cores (faster than one after the other), and the
   plain student's process scores its learning curve while the reinforced student finishes.
4. **Learning curves.** Each student's checkpoints (every 50 steps: the names task on Noto; every metric at the
   curve's ends) are evaluated on held-out sets the students never saw: the `val` rows of Twemoji and two thirds
   of the Noto emoji (an unseen art style); every third Noto emoji forms the `choose` set, for choosing settings,
   never reported. Metrics: zero-shot classification over all
   1,906 emoji names (the primary metric is the mean reciprocal rank of the true name on Noto, which uses every
   image's rank where top-5 moves by whole images; top-5 is reported too), over subcategories and categories, and
   image-text retrieval. The teacher is scored on the same sets (it trained on Noto's `train` rows, so its Noto
   score is not held out for it).
5. **Report.** A table, `learning_curves.png`, `learning_curves.json`, both students as AutoModel folders
   (`students/clip`, `students/reinforced`), the factor on both metrics with a bootstrap 90% interval over the Noto
   images (both students scored on the same resampled images) and, as the last line, `learning-efficiency factor:
   <X>x`: the plain student's steps divided by the step at which the reinforced student reaches the plain
   student's final score on the primary metric.

Every stage resumes: a rerun with the same settings reuses the teacher, the reinforced data, finished students
and evaluated points, and continues an interrupted training from its last checkpoint.
"""

from __future__ import annotations

import os

# Everything the quickstart reads ships with the package; never wait on the Hub (a user's explicit setting wins).
for _variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import datasets  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from .experiment import run  # noqa: E402
from .report import format_factor, format_report  # noqa: E402
from .settings import PLOT_FILE, SCALES, TEMPLATES, Settings  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(prog="python -m training.quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/quickstart", help="everything goes here (reruns resume)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="default",
                        help="tiny: seconds (tests); default: ~12 min on 2 CPU cores; full: a GPU")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--teacher", action="append", default=[], metavar="SPEC",
                        help="open_clip:ARCH:PRETRAINED or hf:DIR instead of training a teacher (repeat: an ensemble)")
    parser.add_argument("--captioner", default="none",
                        help="synthetic captions (e.g. open_clip:coca_ViT-L-14:mscoco_finetuned_laion2b_s13b_b90k); "
                             "default none: the emoji's own captions only")
    parser.add_argument("--seed", type=int, default=0, help="seeds the teacher, the data order, the students")
    parser.add_argument("--num-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    for name, kind in (("teacher-steps", int), ("num-teachers", int), ("student-steps", int),
                       ("num-augmentations", int), ("kd-weight", float), ("ema-decay", float), ("eval-points", int)):
        parser.add_argument(f"--{name}", type=kind, default=None, help="override the scale's value")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device.")
    if args.teacher and args.num_teachers is not None:
        parser.error("--num-teachers sets how many teachers the quickstart trains; with --teacher it trains none.")
    values = {**SCALES[args.scale], "scale": args.scale, "seed": args.seed, "teachers": tuple(args.teacher),
              "captioner": args.captioner}
    for name in ("teacher_steps", "num_teachers", "student_steps", "num_augmentations", "kd_weight", "ema_decay",
                 "eval_points"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    settings = Settings(**values)
    if settings.student_steps < settings.eval_points or min(settings.teacher_steps, settings.num_teachers,
                                                            settings.eval_points, settings.num_augmentations) < 1:
        parser.error("need --teacher-steps, --num-teachers, --num-augmentations, --eval-points >= 1 and "
                     "--student-steps >= --eval-points.")
    if settings.ema_decay is not None and not 0.0 < settings.ema_decay < 1.0:
        parser.error(f"--ema-decay must lie in (0, 1), got {settings.ema_decay}.")
    if not 0.0 < settings.kd_weight <= 1.0:
        parser.error(f"--kd-weight must lie in (0, 1], got {settings.kd_weight}.")
    return args, settings


@contextlib.contextmanager
def quiet_libraries_on(device: str, num_threads: int | None):
    """Hide the bars `datasets` and `transformers` draw for each small internal step (so the stage bars stay
    readable), keep Accelerate on the CPU when asked (even on a GPU machine), set the threads; restore it all."""
    bars = datasets.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    use_cpu, threads = os.environ.get("ACCELERATE_USE_CPU"), torch.get_num_threads()
    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if use_cpu is None:
            os.environ.pop("ACCELERATE_USE_CPU", None)
        else:
            os.environ["ACCELERATE_USE_CPU"] = use_cpu
        if bars[0]:
            datasets.enable_progress_bars()
        if bars[1]:
            transformers_logging.enable_progress_bar()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; returns the learning curves (also in OUTPUT/learning_curves.json)."""
    args, settings = parse_args(argv)
    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    with quiet_libraries_on(args.device, args.num_threads):
        curves = run(output_dir, settings, args.device)
    print(format_report(curves, curves["factor"], output_dir))
    print(f"Done in {(time.perf_counter() - started) / 60:.1f} min.")
    print(format_factor(curves["factor"]["factor"]))
    return curves


__all__ = ["PLOT_FILE", "SCALES", "TEMPLATES", "Settings", "main", "parse_args", "quiet_libraries_on"]
