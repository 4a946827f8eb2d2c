"""The main job: does reinforced training learn faster than plain CLIP training? Measured end to end on real data.

    python -m training.quickstart [--output-dir runs/quickstart] [--scale tiny|default|full] [--device cpu|cuda]
        [--teacher SPEC [--teacher SPEC ...]] [--captioner SPEC] [--seed 0] [--num-threads T]

MobileCLIP's claim is learning efficiency: a dataset reinforced once with a teacher ensemble's embeddings of
recorded augmentations teaches a student far more per sample than the captions alone (arXiv 2311.17049, Fig. 6).
No pretrained weights can be fetched here, so the experiment makes its own teacher from the bundled emoji data
(`dataset_scripts/data/emoji`: the same 1,906 emoji drawn in two art styles, Twemoji and Noto, with CLDR names
and captions; the `split` column holds 10% of the emoji out as `val` in both styles):

1. **Teacher.** `mobileclip-tiny-wide` (twice the student's width) trained with the plain CLIP loss on the
   `train` rows of *both* styles. `--teacher open_clip:ARCH:PRETRAINED` / `--teacher hf:DIR` (repeatable: an
   ensemble) uses real teachers instead.
2. **Reinforce** the students' data, the `train` rows of Twemoji, with `dataset_scripts.reinforce`: N recorded
   augmentations with the teachers' embeddings, plus the teachers' embeddings of *every* caption of an emoji (the
   `column:captions` captioner: the dataset's own captions fill the caption slots; `--captioner` adds real
   synthetic captions instead). The card records each teacher's learned logit scale, which training uses.
3. **Two students**, `mobileclip-tiny`, identical but for the loss: `--mode clip` (the baseline) and
   `--mode reinforced` (lambda = 1: distillation only, the MobileCLIP recipe), same initialisation, same data
   order, same views and captions (one caption of each emoji drawn per epoch), same steps. On a multi-core CPU
   they train at the same time as two processes that split the cores (faster than one after the other).
4. **Learning curves.** Each student's checkpoints are evaluated on two held-out sets the students never saw:
   the `val` rows of Twemoji and *every* Noto emoji (an unseen art style). Metrics: zero-shot classification over
   all 1,906 emoji names (top-5 on Noto is the primary metric), over subcategories and categories, and
   image-text retrieval. The teacher is scored on the same sets (it trained on Noto's `train` rows, so its Noto
   score is not held out for it).
5. **Report.** A table, `learning_curves.png`, `learning_curves.json`, both students as AutoModel folders
   (`students/clip`, `students/reinforced`) and, as the last line, `learning-efficiency factor: <X>x`: the plain
   student's steps divided by the step at which the reinforced student reaches the plain student's final score.

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
import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import datasets  # noqa: E402
import torch  # noqa: E402

import dataset_scripts  # noqa: E402
from modeling_mobileclip.atomic import atomic_folder, atomic_path, write_json_atomic  # noqa: E402

from training import learning_efficiency as le  # noqa: E402


EMOJI_DIR = Path(dataset_scripts.__file__).resolve().parent / "data" / "emoji"
STUDENT_STYLE, UNSEEN_STYLE = "twitter", "google"
STYLE_NAMES = {"twitter": "Twemoji", "google": "Noto"}
STUDENT_VARIANT, TEACHER_VARIANT = "mobileclip-tiny", "mobileclip-tiny-wide"
PRESET = "tiny-cpu.yaml"
SETTINGS_FILE = "quickstart_settings.json"
CURVES_FILE = "learning_curves.json"
PLOT_FILE = "learning_curves.png"
PRIMARY_SET, PRIMARY_METRIC = "unseen_style", "names/acc5"
# One fixed prompt per task, written before any measurement (the captions use the same phrasing for names).
TEMPLATES = {"names": "an emoji of a {}", "subcategories": "a {} emoji", "categories": "an emoji of {}"}
MODES = ("clip", "reinforced")


@dataclass
class Settings:
    """What fixes the experiment's outputs; a rerun into the same folder must use the same values."""

    scale: str = "default"
    teacher_steps: int = 800
    teacher_batch_size: int = 64
    teacher_learning_rate: float = 2e-3
    student_steps: int = 1200
    student_batch_size: int = 32
    student_learning_rate: float = 2e-3
    num_augmentations: int = 8
    kd_weight: float = 1.0
    crop_scale: tuple[float, float] = (0.35, 1.0)
    eval_points: int = 12
    rows_per_style: int | None = None
    """Use only the first N rows of each style (tiny runs); None: all 1,906."""
    teachers: tuple[str, ...] = ()
    captioner: str = "none"
    seed: int = 0

    def check_against(self, output_dir: Path) -> None:
        """Record the settings on the first run; refuse a rerun with other settings (it would mix two runs)."""
        path = output_dir / SETTINGS_FILE
        current = json.loads(json.dumps(dataclasses.asdict(self)))
        if path.is_file():
            saved = json.loads(path.read_text())
            changed = [f"{key}: {saved.get(key)!r} before, {value!r} now" for key, value in current.items()
                       if saved.get(key) != value]
            if changed:
                raise ValueError(f"{output_dir} holds a quickstart run with other settings ({'; '.join(changed)}). "
                                 "Rerun with the same settings to resume it, or pass a new --output-dir.")
            return
        write_json_atomic(path, current)


SCALES = {
    # End to end in seconds: the CI test of every artefact (not of the factor's value).
    "tiny": dict(teacher_steps=6, teacher_batch_size=16, student_steps=8, student_batch_size=16,
                 num_augmentations=2, eval_points=4, rows_per_style=80),
    # Two CPU cores, about 15 minutes, teacher included.
    "default": {},
    # One GPU: a longer teacher and longer students with more augmentations.
    "full": dict(teacher_steps=6000, teacher_batch_size=256, student_steps=4000, student_batch_size=128,
                 num_augmentations=16, eval_points=20),
}


# DataLoader workers per scale (the data does not depend on them: every draw is a function of (seed, epoch, row)).
# On 2 CPU cores one worker saved nothing measurable (15.7 vs 15.9 min); a GPU needs them to stay fed.
LOADER_WORKERS = {"tiny": 0, "default": 0, "full": 4}
# Scales whose two students train at the same time on a multi-core CPU (see `train_students`); tiny runs take
# seconds, where starting two interpreters would dominate.
CONCURRENT_SCALES = ("default", "full")


# ------------------------------------------------------------------------------------------------------ data


def load_style(style: str, limit: int | None) -> datasets.Dataset:
    """All rows of one bundled emoji style (or the first `limit`)."""
    if not (EMOJI_DIR / f"{style}.parquet").is_file():
        raise FileNotFoundError(f"The bundled emoji data is missing from {EMOJI_DIR} (expected {style}.parquet); "
                                "reinstall the package (`pip install -e .`).")
    rows = datasets.load_dataset(str(EMOJI_DIR), style, split="train")
    return rows.select(range(min(limit, len(rows)))) if limit else rows


def train_rows(rows: datasets.Dataset) -> datasets.Dataset:
    return rows.filter(lambda value: value == "train", input_columns="split")


def write_parquet_once(rows: datasets.Dataset, path: Path) -> Path:
    """`rows` as one Parquet file (images keep their PNG bytes); written once, atomically."""
    if not path.is_file():
        with atomic_path(path) as staged:
            rows.to_parquet(str(staged))
    return path


def build_held_out_sets(student_style: datasets.Dataset, unseen_style: datasets.Dataset) -> dict[str, le.HeldOutSet]:
    classnames = json.loads((EMOJI_DIR / "classnames.json").read_text())
    val = student_style.filter(lambda value: value == "val", input_columns="split")
    return {
        "val": le.build_held_out_set(
            "val", f"{STYLE_NAMES[STUDENT_STYLE]} val ({len(val)} held-out emoji)", val, classnames, TEMPLATES,
            student_style["name"]),
        "unseen_style": le.build_held_out_set(
            "unseen_style", f"{STYLE_NAMES[UNSEEN_STYLE]}, unseen style (all {len(unseen_style)} emoji)",
            unseen_style, classnames, TEMPLATES, unseen_style["name"]),
    }


# ------------------------------------------------------------------------------------------------------ stages


def _config(settings: Settings, device: str, **overrides: Any):
    from training.config_loading import CONFIGS_DIR, build_config

    return build_config(CONFIGS_DIR / PRESET, {
        "seed": settings.seed, "resume_from_checkpoint": "latest", "report_to": "none",
        "num_workers": LOADER_WORKERS[settings.scale],
        "mixed_precision": "bf16" if device == "cuda" else "no", "save_total_limit": None, **overrides,
    })


def _copy_folder_once(source: Path, destination: Path) -> Path:
    if not (destination / "config.json").is_file():
        with atomic_folder(destination) as staging:
            shutil.copytree(source, staging, dirs_exist_ok=True)
    return destination


def train_teacher(settings: Settings, source: Path, output_dir: Path, device: str) -> Path:
    """A `mobileclip-tiny-wide` CLIP model trained on both styles' train rows (reused when already saved)."""
    from training.train import train

    folder = output_dir / "teacher" / "model"
    if (folder / "config.json").is_file():
        print(f"Reusing the teacher in {folder}.")
        return folder
    config = _config(
        settings, device, variant=TEACHER_VARIANT, mode="clip", train_data=str(source), caption_column="captions",
        output_dir=str(output_dir / "teacher" / "run"), max_steps=settings.teacher_steps,
        per_device_batch_size=settings.teacher_batch_size, learning_rate=settings.teacher_learning_rate,
        warmup_steps=max(1, settings.teacher_steps // 10), crop_scale=list(settings.crop_scale),
        save_steps=max(1, settings.teacher_steps // 4), save_total_limit=1,
        logging_steps=max(1, settings.teacher_steps // 20),
    )
    result = train(config)
    return _copy_folder_once(result.model_dir, folder)


def check_teachers(specs: list[str], device: str) -> list[str]:
    """Load every `--teacher` spec now, before any work; an ensemble must share one embedding size."""
    from dataset_scripts.teachers import load_teachers

    loaded = load_teachers(specs, torch.device(device), torch.float32)
    dims = {teacher.spec: teacher.dim for teacher in loaded}
    if len(set(dims.values())) > 1:
        raise ValueError("The --teacher ensemble mixes embedding sizes: " +
                         ", ".join(f"{spec!r} has {dim}" for spec, dim in dims.items()) +
                         "; use teachers with one embedding size.")
    return specs


def reinforce_student_data(settings: Settings, source: Path, teachers: list[str], output: Path, device: str) -> Path:
    """`python -m dataset_scripts.reinforce` on the students' rows, in process (resumes a partial output)."""
    from dataset_scripts.reinforce import build_parser, reinforce

    if settings.captioner == "none":  # every ground-truth caption gets teacher embeddings; none is synthetic
        captions = ["--captioner", "column:captions", "--num-synthetic-captions", "3"]
    else:
        captions = ["--captioner", settings.captioner]
    args = build_parser().parse_args([
        "--source", str(source), "--split", "train", "--output", str(output), "--teachers", ",".join(teachers),
        *captions, "--num-augmentations", str(settings.num_augmentations), "--caption-column", "captions",
        "--uid-column", "unified", "--image-size", "64", "--dtype", "bfloat16" if device == "cuda" else "float32",
        "--batch-size", "64", "--shard-size", "1024", "--num-workers", "0", "--seed", str(settings.seed),
        *(["--no-progress"] if settings.scale == "tiny" else []),
    ])
    report = reinforce(args)
    if not report["complete"] or report["written"] == 0:
        raise RuntimeError(f"Reinforcement of {source} did not complete: {report}")
    return output


def train_student(mode: str, settings: Settings, data: Path, output_dir: Path, device: str) -> Path:
    """One student; checkpoints every `student_steps / eval_points` steps are the points of its learning curve."""
    from training.train import train

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
    )
    result = train(config)
    return _copy_folder_once(result.model_dir, folder)


def _train_student_in_process(mode: str, settings: Settings, data: Path, output_dir: Path, device: str,
                              threads: int) -> None:
    torch.set_num_threads(threads)
    train_student(mode, settings, data, output_dir, device)


def train_students(settings: Settings, data: Path, output_dir: Path, device: str) -> None:
    """Both students. On a multi-core CPU they train at the same time, as two processes that split the threads:
    measured on 2 cores, two 1-thread runs make 5.1 steps/s each where one 2-thread run makes 6.5. The curves do
    not depend on it beyond floating-point summation order (tested: equal to training one after the other)."""
    pending = [mode for mode in MODES if not (output_dir / "students" / mode / "config.json").is_file()]
    threads = torch.get_num_threads()
    if not (device == "cpu" and len(pending) == 2 and settings.scale in CONCURRENT_SCALES and (os.cpu_count() or 1) > 1):
        for mode in MODES:
            train_student(mode, settings, data, output_dir, device)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no shared Accelerate state or threads
    processes = [context.Process(target=_train_student_in_process, name=f"{mode} student",
                                 args=(mode, settings, data, output_dir, device, max(1, threads // 2)))
                 for mode in pending]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    failed = [f"{process.name} (exit code {process.exitcode})" for process in processes if process.exitcode]
    if failed:
        raise RuntimeError(f"Training failed: {', '.join(failed)}; its error is printed above. Rerun the same command "
                           "to resume from the last checkpoints.")


def eval_interval(settings: Settings) -> int:
    return max(1, settings.student_steps // settings.eval_points)


def curve_steps(settings: Settings) -> list[int]:
    interval = eval_interval(settings)
    return [0, *range(interval, settings.student_steps, interval), settings.student_steps]


def _student_at(step: int, mode: str, settings: Settings, output_dir: Path):
    """The student's weights after `step` steps: the shared initialisation, a checkpoint or the final folder."""
    from safetensors.torch import load_file

    from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel

    if step == settings.student_steps:
        return MobileCLIPModel.from_pretrained(output_dir / "students" / mode)
    from accelerate.utils import set_seed

    set_seed(settings.seed)  # what `train` does right before building the student: the same initial weights
    model = MobileCLIPModel(MobileCLIPConfig.from_variant(STUDENT_VARIANT))
    if step:
        weights = output_dir / "runs" / mode / "checkpoints" / f"step_{step}" / "model.safetensors"
        model.load_state_dict(load_file(str(weights)))
    return model


def evaluate_students(settings: Settings, held_out: dict[str, le.HeldOutSet], output_dir: Path,
                      device: str) -> dict[str, list[dict]]:
    """Every curve point of both students on every held-out set; each point is stored once (reruns reuse it)."""
    from tqdm.auto import tqdm

    from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor

    tokenizer = MobileCLIPProcessor.from_variant(STUDENT_VARIANT).tokenizer
    points_dir = output_dir / "curve_points"
    points_dir.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list[dict]] = {}
    token_cache: dict[tuple[str, ...], torch.Tensor] = {}
    work = [(mode, step) for mode in MODES for step in curve_steps(settings)]
    for mode, step in tqdm(work, desc="learning curves", disable=settings.scale == "tiny"):
        # Step 0 is the shared initialisation (same seed, same construction): evaluated once for both students.
        path = points_dir / ("init.json" if step == 0 else f"{mode}_step_{step}.json")
        if not path.is_file():
            encoder = le.ModelEncoder(_student_at(step, mode, settings, output_dir), tokenizer, f"{mode}@{step}",
                                      torch.device(device), token_cache)
            point = {"step": step, **le.evaluate_on_sets(encoder, held_out)}
            write_json_atomic(path, point)
        curves.setdefault(mode, []).append(json.loads(path.read_text()))
    return curves


def evaluate_teachers(specs: list[str], held_out: dict[str, le.HeldOutSet], device: str) -> dict[str, dict]:
    from dataset_scripts.teachers import load_teachers

    ensemble = le.EnsembleEncoder(load_teachers(specs, torch.device(device), torch.float32))
    return le.evaluate_on_sets(ensemble, held_out)


# ------------------------------------------------------------------------------------------------------ report


REPORT_METRICS = [
    ("names top-5", "names/acc5"), ("names top-1", "names/acc1"),
    ("subcategories top-1", "subcategories/acc1"), ("categories top-1", "categories/acc1"),
    ("text->image R@5", "retrieval/image_retrieval_recall@5"), ("image->text R@5", "retrieval/text_retrieval_recall@5"),
]


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
    reached = factor.get("reinforced_step_reaching_plain_final")
    primary = f"{curves['held_out_sets'][PRIMARY_SET]} {PRIMARY_METRIC}"
    if reached is not None:
        lines.append(f"Primary metric ({primary}): the plain student ends at {100 * factor['plain_final']:.2f}%; the "
                     f"reinforced student reaches that at step {reached:.0f} of {curves['student_steps']}.")
    else:
        lines.append(f"Primary metric ({primary}): the reinforced student never reaches the plain student's final "
                     f"{100 * factor['plain_final']:.2f}%; the factor below is the plain student's step reaching the "
                     "reinforced final, over the total steps.")
    lines += [
        f"Teacher note: the teacher trained on the {STYLE_NAMES[UNSEEN_STYLE]} train rows, so only the students are "
        f"held out from the {STYLE_NAMES[UNSEEN_STYLE]} set.",
        "",
        f"Students (AutoModel folders): {_display_path(output_dir / 'students' / 'clip')}, "
        f"{_display_path(output_dir / 'students' / 'reinforced')}",
        f"Learning curves: {_display_path(output_dir / CURVES_FILE)}",
        f"Plot: {_display_path(output_dir / PLOT_FILE)}",
    ]
    return "\n".join(lines)


def format_factor(factor: float) -> str:
    return f"learning-efficiency factor: {factor:.2f}x"


# ------------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(prog="python -m training.quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/quickstart", help="everything goes here (reruns resume)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="default",
                        help="tiny: seconds (tests); default: ~15 min on 2 CPU cores; full: a GPU")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--teacher", action="append", default=[], metavar="SPEC",
                        help="open_clip:ARCH:PRETRAINED or hf:DIR instead of training a teacher (repeat: an ensemble)")
    parser.add_argument("--captioner", default="none",
                        help="synthetic captions (e.g. open_clip:coca_ViT-L-14:mscoco_finetuned_laion2b_s13b_b90k); "
                             "default none: the emoji's own captions only")
    parser.add_argument("--seed", type=int, default=0, help="seeds the teacher, the data order, the students")
    parser.add_argument("--num-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    for name, kind in (("teacher-steps", int), ("student-steps", int), ("num-augmentations", int),
                       ("kd-weight", float), ("eval-points", int)):
        parser.add_argument(f"--{name}", type=kind, default=None, help="override the scale's value")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device.")
    values = {**SCALES[args.scale], "scale": args.scale, "seed": args.seed, "teachers": tuple(args.teacher),
              "captioner": args.captioner}
    for name in ("teacher_steps", "student_steps", "num_augmentations", "kd_weight", "eval_points"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    settings = Settings(**values)
    if settings.student_steps < settings.eval_points or min(settings.teacher_steps, settings.eval_points,
                                                            settings.num_augmentations) < 1:
        parser.error("need --teacher-steps, --num-augmentations, --eval-points >= 1 and --student-steps >= "
                     "--eval-points.")
    if not 0.0 < settings.kd_weight <= 1.0:
        parser.error(f"--kd-weight must lie in (0, 1], got {settings.kd_weight}.")
    return args, settings


def _stage(number: int, text: str) -> None:
    print(f"\n[{number}/5] {text}", flush=True)


def run(output_dir: Path, settings: Settings, device: str) -> dict[str, Any]:
    """All stages (see the module docstring); returns the learning curves with the factor."""
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
        _stage(1, f"Training the teacher ({TEACHER_VARIANT}, plain CLIP loss, {settings.teacher_steps} steps) on the "
                  "train rows of both styles")
        both = datasets.concatenate_datasets([train_rows(student_style), train_rows(unseen_style)])
        source = write_parquet_once(both.select_columns(["image", "captions"]),
                                    output_dir / "source" / "teacher" / "train.parquet")
        teachers = [f"hf:{train_teacher(settings, source.parent, output_dir, device)}"]
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
        "chance": {name: le.chance_levels(data) for name, data in held_out.items()},
    }
    primary = [([p["step"] for p in students[mode]], [p[PRIMARY_SET][PRIMARY_METRIC] for p in students[mode]])
               for mode in MODES]
    curves["factor"] = le.learning_efficiency_factor(*primary)
    curves["seconds"] = seconds
    le.plot_learning_curves(curves, PRIMARY_METRIC, output_dir / PLOT_FILE,
                            f"{STUDENT_VARIANT}: plain CLIP vs reinforced training (emoji names, top-5)")
    write_json_atomic(output_dir / CURVES_FILE, curves)
    return curves


@contextlib.contextmanager
def quiet_libraries_on(device: str, num_threads: int | None):
    """Hide the bars `datasets` and `transformers` draw for each small internal step (so the stage bars stay
    readable), keep Accelerate on the CPU when asked (even on a GPU machine), set the threads; restore it all."""
    from transformers.utils import logging as transformers_logging

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


if __name__ == "__main__":
    from modeling_mobileclip.cli import run_main

    run_main(main)
