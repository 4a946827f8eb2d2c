"""`--write-space DIR`: a Hugging Face Space (Gradio SDK) that serves the same demo from Hub model ids.

The folder holds `app.py` (the demo's command line with the chosen models; `MOBILECLIP_DEMO_MODELS` overrides them,
comma-separated), `requirements.txt` (this package's runtime requirements plus Gradio, read from its installed
metadata), `README.md` with the Space front matter, and a copy of the project's packages the demo imports, so the
Space runs the code that was tested here. ONNX exports given with `--onnx` are copied into `onnx/`.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import gradio

PACKAGES = ("modeling_mobileclip", "dataset_scripts", "evaluation")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "mobileclip-hf"

APP = '''"""MobileCLIP demo Space, written by `python -m evaluation.demo --write-space`.

MOBILECLIP_DEMO_MODELS (comma-separated Hub ids or folders) replaces the models below; GRADIO_SERVER_NAME and
GRADIO_SERVER_PORT set where it listens (the Space default: 0.0.0.0:7860).
"""

import os

from modeling_mobileclip.cli import run_main

from evaluation.demo.cli import main

MODELS = {models!r}
ONNX = {onnx!r}
OPTIONS = {options!r}

models = [m for m in os.environ.get("MOBILECLIP_DEMO_MODELS", ",".join(MODELS)).split(",") if m]
argv = [arg for model in models for arg in ("--model", model)] + [arg for path in ONNX for arg in ("--onnx", path)]
argv += OPTIONS + ["--host", os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
                   "--port", os.environ.get("GRADIO_SERVER_PORT", "7860")]
run_main(main, argv)
'''

README = """---
title: MobileCLIP demo
emoji: 📎
colorFrom: blue
colorTo: indigo
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
license: mit
{models_yaml}---

# MobileCLIP demo

Zero-shot classification and search with {names}, side by side. Written by `python -m evaluation.demo --write-space`
from the mobileclip-hf project; `app.py` lists the models and options.
"""


def runtime_requirements(onnx: bool) -> list[str]:
    """This package's requirements without extras, plus Gradio (and onnxruntime when ONNX exports are served)."""
    declared = importlib.metadata.requires(DISTRIBUTION) or []
    requirements = [r for r in declared if "extra ==" not in r]
    requirements.append(f"gradio>={gradio.__version__}")
    if onnx:
        requirements += [r.split(";")[0].strip() for r in declared
                         if r.startswith("onnxruntime") and 'extra == "export"' in r]
    return requirements


def write_space(folder: Path, models: list[str], onnx: list[str] | None = None, *, images: str | None = None,
                images_config: str | None = None, images_split: str = "train", template: str | None = None,
                labels: str | None = None) -> Path:
    onnx = onnx or []
    folder.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "data")
    for package in PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, folder / package, ignore=ignore, dirs_exist_ok=True)
    # evaluation's bundled class names and templates are data the package reads; the emoji images are not needed.
    shutil.copytree(PROJECT_ROOT / "evaluation" / "data", folder / "evaluation" / "data", dirs_exist_ok=True)
    onnx_paths = []
    for path in onnx:
        target = Path("onnx") / Path(path).name
        shutil.copytree(path, folder / target, dirs_exist_ok=True)
        onnx_paths.append(target.as_posix())
    options = []
    if images:
        options += ["--images", images, "--images-split", images_split]
        options += ["--images-config", images_config] if images_config else []
    options += ["--template", template] if template else []
    options += ["--labels", labels] if labels else []
    (folder / "app.py").write_text(APP.format(models=list(models), onnx=onnx_paths, options=options))
    (folder / "requirements.txt").write_text("\n".join(runtime_requirements(bool(onnx))) + "\n")
    hub_models = [m for m in models if not Path(m).exists()]
    models_yaml = "models:\n" + "".join(f"  - {m}\n" for m in hub_models) if hub_models else ""
    names = ", ".join(f"`{m}`" for m in [*models, *onnx_paths])
    (folder / "README.md").write_text(README.format(gradio_version=gradio.__version__, models_yaml=models_yaml,
                                                    names=names))
    return folder


__all__ = ["write_space"]
