"""What fixes the quickstart's outputs: the data, models, prompts and step counts of each scale."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import dataset_scripts
from modeling_mobileclip.atomic import write_json_atomic


EMOJI_DIR = Path(dataset_scripts.__file__).resolve().parent / "data" / "emoji"
STUDENT_STYLE, UNSEEN_STYLE = "twitter", "google"
STYLE_NAMES = {"twitter": "Twemoji", "google": "Noto"}
STUDENT_VARIANT, TEACHER_VARIANT = "mobileclip-tiny", "mobileclip-tiny-wide"
PRESET = "tiny-cpu.yaml"
SETTINGS_FILE = "quickstart_settings.json"
CURVES_FILE = "learning_curves.json"
PLOT_FILE = "learning_curves.png"
# The factor's metric, fixed before the runs it reports: the mean reciprocal rank of each image's true name among all
# the style's names uses every image's rank, where top-5 moves by whole images near chance (a few dozen of 1,270).
# The factor is also reported on names top-5. `CHOOSING_SET` (every third Noto emoji) is for choosing settings; the
# reported figures never use it.
PRIMARY_SET, PRIMARY_METRIC, SECONDARY_METRIC = "unseen_style", "names/mrr", "names/acc5"
CHOOSING_SET = "choose"
EVAL_EVERY = 50  # student steps between curve points at the default scale
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
    num_teachers: int = 1
    """Teachers trained (each with its own seed), an ensemble whose embeddings are all stored; 1: one teacher."""
    student_steps: int = 1200
    student_batch_size: int = 32
    student_learning_rate: float = 2e-3
    num_augmentations: int = 8
    kd_weight: float = 1.0
    ema_decay: float | None = None
    """Both students keep an EMA of their weights (MobileCLIP's recipe keeps one), and their curves score it; None:
    the raw weights."""
    crop_scale: tuple[float, float] = (0.35, 1.0)
    text_context_length: int = 32
    """Tokens of the towers' text context: the emoji captions and prompts take at most 24, and the text tower's
    cost grows with its length (77, the published models' context, made the teacher's step 1.4x longer)."""
    eval_points: int = 1200 // EVAL_EVERY
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
            saved = {**SETTINGS_BEFORE_THEIR_KEY, **json.loads(path.read_text())}
            changed = [f"{key}: {saved.get(key)!r} before, {value!r} now" for key, value in current.items()
                       if saved.get(key) != value]
            if changed:
                raise ValueError(f"{output_dir} holds a quickstart run with other settings ({'; '.join(changed)}). "
                                 "Rerun with the same settings to resume it, or pass a new --output-dir.")
            return
        write_json_atomic(path, current)


# What a folder written before a setting was recorded ran with: it still resumes under those values.
SETTINGS_BEFORE_THEIR_KEY = {"num_teachers": 1, "ema_decay": None, "text_context_length": 77}


def model_overrides(settings: Settings) -> dict:
    """`MobileCLIPConfig.from_variant` keywords of the quickstart's teachers and students."""
    return {"text_config": {"max_position_embeddings": settings.text_context_length}}


SCALES = {
    # End to end in seconds: the CI test of every artefact (not of the factor's value).
    "tiny": dict(teacher_steps=6, teacher_batch_size=16, student_steps=8, student_batch_size=16,
                 num_augmentations=2, eval_points=4, rows_per_style=80),
    # Two CPU cores, about 12 minutes, teacher included (15 at most, issue 21).
    "default": {},
    # One GPU: a longer teacher and longer students with more augmentations.
    "full": dict(teacher_steps=6000, teacher_batch_size=256, student_steps=4000, student_batch_size=128,
                 num_augmentations=16, eval_points=4000 // EVAL_EVERY),
}


def eval_interval(settings: Settings) -> int:
    return max(1, settings.student_steps // settings.eval_points)


def curve_steps(settings: Settings) -> list[int]:
    interval = eval_interval(settings)
    return [0, *range(interval, settings.student_steps, interval), settings.student_steps]


__all__ = [
    "CHOOSING_SET", "CURVES_FILE", "EMOJI_DIR", "EVAL_EVERY", "MODES", "PLOT_FILE", "PRESET", "PRIMARY_METRIC",
    "PRIMARY_SET", "SCALES", "SECONDARY_METRIC", "SETTINGS_FILE", "STUDENT_STYLE", "STUDENT_VARIANT", "STYLE_NAMES",
    "Settings", "TEACHER_VARIANT", "TEMPLATES", "UNSEEN_STYLE", "curve_steps", "eval_interval", "model_overrides",
]
