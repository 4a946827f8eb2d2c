"""End-to-end quickstart on the bundled emoji data: reinforce -> train -> evaluate -> reload, in a few CPU minutes.

    python -m training.quickstart [--output-dir runs/quickstart] [--samples N] [--steps S] [--batch-size B]
        [--num-augmentations A] [--kd-weight L] [--eval-samples E] [--seed 0] [--num-threads T]

Every stage calls the project's own functions in this one process, the same code paths as the command lines:

1. **Reinforce** (`dataset_scripts.reinforce`): the first N rows (default: all 1688) of the bundled Twemoji set's
   `train` split (`dataset_scripts/data/emoji`, selected by the dataset's own `split` column) get A recorded
   augmentations and the embeddings of a two-teacher ensemble. The teachers are two *randomly initialised*
   `mobileclip-tiny` models saved as folders and passed as `hf:` teachers; no captioner (K = 0 synthetic captions).
2. **Evaluate the initialisation** (`evaluation.zero_shot`, `evaluation.retrieval`): zero-shot classification of
   the 9 emoji categories and caption retrieval on the 218 held-out `val` rows, for the model `train` is about to
   start from (same seed, same construction).
3. **Train** (`training.train.train`): `mobileclip-tiny` for S steps in mode `reinforced` with the
   `training/configs/tiny-cpu.yaml` preset, the code path of `accelerate launch training/train.py --config
   training/configs/tiny-cpu.yaml --train_data DIR`, writing `OUTPUT/train/model`.
4. **Reload**: `AutoModel.from_pretrained(OUTPUT/train/model, trust_remote_code=True)` must give the same image
   and text embeddings as the model that just finished training in memory.
5. **Evaluate the trained model** (the reloaded folder) on the same rows, then print a table (loss, metrics
   before/after, chance levels) and the next commands; everything is also in `OUTPUT/quickstart_summary.json`.

**What the numbers mean.** Random teachers carry no semantics: their embeddings of an image and of its caption
are unrelated, so the distillation term only teaches the student to mimic two arbitrary functions (its loss falls,
which shows the machinery works, not that anything useful was learned). Whatever image-text alignment the student
gains comes from the CLIP term on the ground-truth captions, which is why the quickstart trains with
lambda = `--kd-weight` 0.5 instead of the recipe's 1.0: at 1.0 the captions enter only through the random teachers
(measured: after 900 steps at lambda 1.0 the loss fell 7x while every held-out metric stayed at chance). Real runs
reinforce with pretrained teachers (`open_clip:ViT-L-14:openai`, ...): see the README.

Rerunning the same command resumes: finished reinforcement parts are skipped and training continues from its
latest checkpoint (`training/checkpointing.py`). Other settings need another `--output-dir` (checked).
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
import math  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import datasets  # noqa: E402
import torch  # noqa: E402

import dataset_scripts  # noqa: E402

if TYPE_CHECKING:
    from evaluation.datasets_io import EvalDataset
    from evaluation.zero_shot import ZeroShotTask


EMOJI_DIR = Path(dataset_scripts.__file__).resolve().parent / "data" / "emoji"
EMOJI_CONFIG = "twitter"
PRESET = "tiny-cpu.yaml"
VARIANT = "mobileclip-tiny"
TEACHER_SEEDS = (100, 101)
SETTINGS_FILE = "quickstart_settings.json"
SUMMARY_FILE = "quickstart_summary.json"
# Category prompts as in the README's emoji example (class names: `category_prompt_names` of classnames.json).
ZERO_SHOT_TEMPLATES = ["an emoji of {c}.", "a {c} emoji.", "an icon of {c}."]
RECALL_K = (1, 5)
EMBEDDING_TOLERANCE = 1e-5


@dataclass
class QuickstartSettings:
    """What fixes the quickstart's outputs; a rerun into the same folder must use the same values."""

    samples: int | None = None
    steps: int = 1200
    batch_size: int = 32
    num_augmentations: int = 4
    kd_weight: float = 0.5
    eval_samples: int | None = None
    seed: int = 0

    def check_against(self, output_dir: Path) -> None:
        """Record the settings on the first run; refuse a rerun with other settings (it would mix two runs)."""
        path = output_dir / SETTINGS_FILE
        current = dataclasses.asdict(self)
        if path.is_file():
            saved = json.loads(path.read_text())
            changed = [f"{key}: {saved.get(key)!r} before, {value!r} now" for key, value in current.items()
                       if saved.get(key) != value]
            if changed:
                raise ValueError(f"{output_dir} holds a quickstart run with other settings ({'; '.join(changed)}). "
                                 "Rerun with the same settings to resume it, or pass a new --output-dir.")
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current, indent=1))


@dataclass
class QuickstartSummary:
    """Everything the quickstart measured (also written as JSON to `OUTPUT/quickstart_summary.json`)."""

    output_dir: str
    model_dir: str
    reinforced_data: str
    train_rows: int
    eval_rows: int
    eval_captions: int
    steps: int
    loss_first: float
    loss_last: float
    history: list[dict[str, float]]
    metrics: dict[str, dict[str, float]]
    chance: dict[str, float]
    reload_max_abs_diff: float
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------------ data


def load_emoji() -> datasets.Dataset:
    """All rows of the bundled Twemoji set (`dataset_scripts/data/emoji`, config `twitter`)."""
    if not (EMOJI_DIR / f"{EMOJI_CONFIG}.parquet").is_file():
        raise FileNotFoundError(f"The bundled emoji data is missing from {EMOJI_DIR} (expected "
                                f"{EMOJI_CONFIG}.parquet); reinstall the package (`pip install -e .`).")
    return datasets.load_dataset(str(EMOJI_DIR), EMOJI_CONFIG, split="train")


def split_rows(emoji: datasets.Dataset, split: str, limit: int | None, flag: str) -> datasets.Dataset:
    """The first `limit` rows whose `split` column is `split` (the card's deterministic split on code points)."""
    rows = emoji.filter(lambda value: value == split, input_columns="split")
    if limit is not None:
        if limit > len(rows):
            raise ValueError(f"{flag} {limit} asks for more {split!r} rows than the emoji set has ({len(rows)}).")
        rows = rows.select(range(limit))
    return rows


def write_source(train_rows: datasets.Dataset, path: Path) -> Path:
    """The rows to reinforce as one Parquet file (images keep their PNG bytes); written once, atomically."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".parquet.tmp")
        train_rows.select_columns(["image", "unified", "captions"]).to_parquet(str(staging))
        os.replace(staging, path)
    return path


def build_random_teachers(folder: Path) -> list[Path]:
    """Two randomly initialised `mobileclip-tiny` folders (seeded, so reruns and resumes see the same teachers)."""
    from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel
    from modeling_mobileclip.convert import save_model_folder
    from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor

    paths = []
    for index, seed in enumerate(TEACHER_SEEDS):
        path = folder / f"random-teacher-{index}"
        if not (path / "config.json").is_file():
            staging = path.with_name(path.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                teacher = MobileCLIPModel(MobileCLIPConfig.from_variant(VARIANT)).eval()
            save_model_folder(teacher, staging, MobileCLIPProcessor.from_variant(VARIANT))
            os.replace(staging, path)
        paths.append(path)
    return paths


def reinforce_emoji(source: Path, teachers: list[Path], output: Path, settings: QuickstartSettings) -> Path:
    """`python -m dataset_scripts.reinforce` on the source rows, in process (resumes a partial output)."""
    from dataset_scripts.reinforce import build_parser, reinforce

    args = build_parser().parse_args([
        "--source", str(source), "--split", "train", "--output", str(output),
        "--teachers", ",".join(f"hf:{path}" for path in teachers), "--captioner", "none",
        "--num-augmentations", str(settings.num_augmentations), "--caption-column", "captions",
        "--uid-column", "unified", "--image-size", "64", "--dtype", "float32", "--batch-size", "64",
        "--shard-size", "256", "--num-workers", "0", "--seed", str(settings.seed),
    ])
    report = reinforce(args)
    if not report["complete"] or report["written"] == 0:
        raise RuntimeError(f"Reinforcement of {source} did not complete: {report}")
    return output


# ------------------------------------------------------------------------------------------------------ evaluation


@dataclass
class HeldOut:
    """The held-out rows, prepared once for both models (zero-shot task, retrieval captions)."""

    loaded: EvalDataset
    zero_shot_task: ZeroShotTask
    retrieval: tuple[str, list[list[str]]]
    """(image column, the captions of each row), as `evaluation.retrieval.prepare_retrieval` returns them."""


def prepare_held_out(val_rows: datasets.Dataset) -> HeldOut:
    """Validates the held-out rows for both tasks before any model runs."""
    from evaluation.datasets_io import EvalDataset, read_classnames
    from evaluation.retrieval import prepare_retrieval
    from evaluation.zero_shot import prepare_zero_shot

    loaded = EvalDataset(val_rows, f"emoji {EMOJI_CONFIG} (val rows)")
    classnames = read_classnames(str(EMOJI_DIR / "classnames.json"), "category_prompt_names")
    task = prepare_zero_shot(loaded, "image", "category", classnames, ZERO_SHOT_TEMPLATES)
    return HeldOut(loaded, task, prepare_retrieval(loaded, "image", "captions"))


def evaluate_model(model: torch.nn.Module, processor: Any, held_out: HeldOut, accelerator) -> dict[str, float]:
    """Zero-shot category accuracy and caption retrieval recall on the held-out rows (CLIP_benchmark semantics)."""
    from evaluation.retrieval import evaluate_retrieval
    from evaluation.zero_shot import run_zero_shot

    model.eval()
    zero_shot = run_zero_shot(model, processor, held_out.zero_shot_task, accelerator, batch_size=64)
    retrieval = evaluate_retrieval(model, processor, held_out.loaded, accelerator, recall_k=RECALL_K,
                                   batch_size=64, prepared=held_out.retrieval)
    return {**{f"zero_shot/{k}": float(v) for k, v in zero_shot.metrics.items()},
            **{f"retrieval/{k}": float(v) for k, v in retrieval.metrics.items()}}


def chance_levels(held_out: HeldOut) -> dict[str, float]:
    """What a model scoring at random would get on these rows (uniform guesses; exact expectations)."""
    num_classes = len(held_out.zero_shot_task.classnames)
    captions_per_image = [len(c) for c in held_out.retrieval[1]]
    num_images, num_captions = len(captions_per_image), sum(captions_per_image)
    levels = {"zero_shot/acc1": 1 / num_classes, "zero_shot/acc5": min(1.0, 5 / num_classes),
              "zero_shot/mean_per_class_recall": 1 / num_classes}
    for k in RECALL_K:
        levels[f"retrieval/image_retrieval_recall@{k}"] = min(1.0, k / num_images)
        # An image counts as found when any of its c captions is among k random picks of all captions.
        levels[f"retrieval/text_retrieval_recall@{k}"] = sum(
            1 - math.comb(num_captions - c, k) / math.comb(num_captions, k) for c in captions_per_image) / num_images
    return levels


@torch.no_grad()
def max_embedding_difference(reloaded: torch.nn.Module, in_memory: torch.nn.Module, processor: Any,
                             held_out: HeldOut, count: int = 16) -> float:
    """Largest |difference| between the two models' image and text embeddings on held-out images and captions."""
    rows = held_out.loaded.dataset.select(range(min(count, len(held_out.loaded.dataset))))
    inputs = processor(text=[captions[0] for captions in rows["captions"]],
                       images=[image.convert("RGB") for image in rows["image"]], return_tensors="pt")
    device = next(in_memory.parameters()).device
    pixels, ids = inputs["pixel_values"].to(device), inputs["input_ids"].to(device)
    reloaded, in_memory = reloaded.eval().to(device), in_memory.eval()
    pairs = [(reloaded.encode_image(pixels), in_memory.encode_image(pixels)),
             (reloaded.encode_text(ids), in_memory.encode_text(ids))]
    return max(float((a - b).abs().max()) for a, b in pairs)


# ------------------------------------------------------------------------------------------------------ report


ROWS = [
    ("zero-shot acc1", "zero_shot/acc1"),
    ("zero-shot acc5", "zero_shot/acc5"),
    ("zero-shot mean per-class recall", "zero_shot/mean_per_class_recall"),
    *[(f"text->image R@{k}", f"retrieval/image_retrieval_recall@{k}") for k in RECALL_K],
    *[(f"image->text R@{k}", f"retrieval/text_retrieval_recall@{k}") for k in RECALL_K],
]


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def format_summary(summary: QuickstartSummary) -> str:
    """The printed report: the table, what the numbers mean, where things are, what to run next."""
    model_dir, data_dir, emoji = summary.model_dir, summary.reinforced_data, _display_path(EMOJI_DIR)
    width = max(len(label) for label, _ in ROWS)
    steps = [0, *(int(row["step"]) for row in summary.history)]
    first, last = f"1-{steps[1]}", f"{steps[-2] + 1}-{steps[-1]}"
    lines = [
        "",
        f"Quickstart summary: mobileclip-tiny, {summary.steps} steps on {summary.train_rows} reinforced emoji, "
        f"evaluated on {summary.eval_rows} held-out emoji ({summary.eval_captions} captions)",
        "",
        f"{f'training loss, steps {first} / {last}':<{width}}  {summary.loss_first:8.4f} -> {summary.loss_last:.4f}"
        "  (mean over each logging window)",
        "",
        f"{'metric (%)':<{width}}  {'init':>8}  {'trained':>8}  {'chance':>8}",
    ]
    for label, key in ROWS:
        before, after = summary.metrics["init"][key], summary.metrics["trained"][key]
        lines.append(f"{label:<{width}}  {100 * before:8.2f}  {100 * after:8.2f}  {100 * summary.chance[key]:8.2f}")
    lines += [
        "",
        f"Reloaded with AutoModel.from_pretrained(..., trust_remote_code=True): embeddings match the in-memory model "
        f"(max |diff| {summary.reload_max_abs_diff:.1e}).",
        "",
        "Read with care: the two teachers have random weights, so the distillation targets carry no semantics "
        "(the distillation loss falls because the student learns to mimic two arbitrary functions). Any gain over "
        "the init comes from the CLIP term on the ground-truth captions: compare each metric with the chance column. "
        "This run exercises the whole pipeline, it is not a recipe; real runs reinforce with pretrained teachers.",
        "",
        f"Model folder:      {model_dir}",
        f"Reinforced data:   {data_dir}",
        f"Summary JSON:      {_display_path(Path(summary.output_dir) / SUMMARY_FILE)}",
        "",
        "Next:",
        f"  python -m evaluation.zero_shot --model {model_dir} --dataset {emoji} --config {EMOJI_CONFIG} --split train "
        f"--label-column category --classnames {emoji}/classnames.json --classnames-key category_prompt_names"
        "   # all 1906 rows, trained ones included",
        f"  python -m evaluation.retrieval --model {model_dir} --dataset {emoji} --config {EMOJI_CONFIG} --split train "
        "--caption-column captions",
        f"  accelerate launch training/train.py --config training/configs/{PRESET} --train_data {data_dir} "
        f"--kd_weight 0.5 --max_steps 3000 --output_dir {_display_path(Path(summary.output_dir) / 'longer')}",
        f"  tensorboard --logdir {_display_path(Path(summary.output_dir) / 'train')}",
        "  python -m dataset_scripts.reinforce --source SRC --teachers open_clip:ViT-L-14:openai,"
        "open_clip:ViT-L-14:datacomp_xl_s13b_b90k ...   (real teachers; see the README)",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, QuickstartSettings]:
    defaults = QuickstartSettings()
    parser = argparse.ArgumentParser(prog="python -m training.quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/quickstart", help="everything goes here (reruns resume)")
    parser.add_argument("--samples", type=int, default=defaults.samples,
                        help="train-split emoji to reinforce and train on (default: all 1688)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"training steps (default {defaults.steps})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"training batch (default {defaults.batch_size})")
    parser.add_argument("--num-augmentations", type=int, default=defaults.num_augmentations,
                        help=f"augmentations recorded per image (default {defaults.num_augmentations})")
    parser.add_argument("--kd-weight", type=float, default=defaults.kd_weight,
                        help=f"lambda of (1 - lambda) CLIP + lambda KD (default {defaults.kd_weight}; see above)")
    parser.add_argument("--eval-samples", type=int, default=defaults.eval_samples,
                        help="held-out (val) emoji to evaluate on (default: all 218)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--num-threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice; 1 is fastest on a busy machine)")
    args = parser.parse_args(argv)
    for name in ("samples", "steps", "batch_size", "num_augmentations", "eval_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}.")
    if not 0.0 <= args.kd_weight <= 1.0:
        parser.error(f"--kd-weight must lie in [0, 1], got {args.kd_weight}.")
    if args.samples is not None and args.batch_size > args.samples:
        parser.error(f"--batch-size {args.batch_size} exceeds --samples {args.samples}: a batch needs that many rows.")
    settings = QuickstartSettings(args.samples, args.steps, args.batch_size, args.num_augmentations, args.kd_weight,
                                  args.eval_samples, args.seed)
    return args, settings


@contextlib.contextmanager
def library_progress_bars_hidden():
    """Hide the bars `datasets` and `transformers` draw for each small internal step (filtering, writing Parquet,
    loading weights), so the stage bars (reinforce, training, evaluation) stay readable; restore them afterwards."""
    from transformers.utils import logging as transformers_logging

    datasets_bars = datasets.is_progress_bar_enabled()
    transformers_bars = transformers_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_bars:
            datasets.enable_progress_bars()
        if transformers_bars:
            transformers_logging.enable_progress_bar()


def _stage(number: int, text: str) -> float:
    print(f"\n[{number}/5] {text}", flush=True)
    return time.perf_counter()


def run(output_dir: Path, settings: QuickstartSettings) -> QuickstartSummary:
    """All five stages; see the module docstring."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import AutoModel, AutoProcessor

    from training.config import CONFIGS_DIR, build_config
    from training.train import build_model_and_processor, train

    emoji = load_emoji()
    train_rows = split_rows(emoji, "train", settings.samples, "--samples")
    val_rows = split_rows(emoji, "val", settings.eval_samples, "--eval-samples")
    if settings.batch_size > len(train_rows):
        raise ValueError(f"--batch-size {settings.batch_size} exceeds the {len(train_rows)} train rows.")
    settings.check_against(output_dir)  # after the checks above: a refused value must not be recorded
    seconds: dict[str, float] = {}

    start = _stage(1, f"Reinforcing {len(train_rows)} emoji with two random-weight tiny teachers "
                      f"({settings.num_augmentations} augmentations each, no synthetic captions)")
    source = write_source(train_rows, output_dir / "source" / f"emoji-{EMOJI_CONFIG}-train.parquet")
    teachers = build_random_teachers(output_dir / "teachers")
    data_dir = reinforce_emoji(source, teachers, output_dir / "emoji-reinforced", settings)
    seconds["reinforce"] = time.perf_counter() - start

    config = build_config(CONFIGS_DIR / PRESET, {
        "train_data": str(data_dir), "output_dir": str(output_dir / "train"), "max_steps": settings.steps,
        "per_device_batch_size": settings.batch_size, "kd_weight": settings.kd_weight, "seed": settings.seed,
        "resume_from_checkpoint": "latest", "save_steps": max(1, math.ceil(settings.steps / 3)),
        "save_total_limit": 1,
    })

    start = _stage(2, f"Evaluating the untrained {VARIANT} on {len(val_rows)} held-out emoji")
    held_out = prepare_held_out(val_rows)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    set_seed(config.seed)  # the initialisation `train` builds: same seed, same construction
    init_model, init_processor = build_model_and_processor(config)
    metrics = {"init": evaluate_model(init_model.to(accelerator.device), init_processor, held_out, accelerator)}
    del init_model
    seconds["evaluate_init"] = time.perf_counter() - start

    start = _stage(3, f"Training {VARIANT} for {settings.steps} steps (mode reinforced, preset {PRESET}, "
                      f"lambda {settings.kd_weight})")
    live: dict[str, torch.nn.Module] = {}

    def keep_model(step: int, model: torch.nn.Module, losses: dict) -> None:
        live["model"] = model  # the very module being optimised; it holds the final weights once `train` returns

    result = train(config, on_gradients=keep_model)
    if "model" not in live:
        raise RuntimeError(f"{config.output_dir} already holds a finished run beyond {settings.steps} steps; pass a "
                           "new --output-dir.")
    losses = [row["loss"] for row in result.history]
    seconds["train"] = time.perf_counter() - start

    start = _stage(4, f"Reloading {_display_path(result.model_dir)} with AutoModel (trust_remote_code=True)")
    reloaded = AutoModel.from_pretrained(result.model_dir, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(result.model_dir, trust_remote_code=True)
    difference = max_embedding_difference(reloaded, live["model"], processor, held_out)
    if not difference <= EMBEDDING_TOLERANCE:
        raise RuntimeError(f"The saved folder {result.model_dir} does not reproduce the trained model: embeddings "
                           f"differ by up to {difference:.3g} (tolerance {EMBEDDING_TOLERANCE}).")
    seconds["reload"] = time.perf_counter() - start

    start = _stage(5, f"Evaluating the trained model on the same {len(val_rows)} held-out emoji")
    metrics["trained"] = evaluate_model(reloaded.to(accelerator.device), processor, held_out, accelerator)
    seconds["evaluate_trained"] = time.perf_counter() - start

    summary = QuickstartSummary(
        output_dir=str(output_dir), model_dir=_display_path(result.model_dir), reinforced_data=_display_path(data_dir),
        train_rows=len(train_rows), eval_rows=len(val_rows), eval_captions=sum(map(len, held_out.retrieval[1])),
        steps=result.step, loss_first=losses[0], loss_last=losses[-1], history=result.history, metrics=metrics,
        chance=chance_levels(held_out), reload_max_abs_diff=difference, seconds=seconds,
    )
    return summary


def main(argv: list[str] | None = None) -> QuickstartSummary:
    """Command-line entry point; returns the summary (also printed and written to OUTPUT/quickstart_summary.json)."""
    args, settings = parse_args(argv)
    threads = torch.get_num_threads()
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    started = time.perf_counter()
    try:
        with library_progress_bars_hidden():
            summary = run(Path(args.output_dir), settings)
    finally:
        torch.set_num_threads(threads)
    summary.seconds["total"] = time.perf_counter() - started
    (Path(args.output_dir) / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=1))
    print(format_summary(summary))
    print(f"\nDone in {summary.seconds['total'] / 60:.1f} min.")
    return summary


if __name__ == "__main__":
    main()
