"""`python -m evaluation.demo`: serve the demo for one or more models, or write a Hugging Face Space that does.

Examples:
    python -m evaluation.demo --model runs/quickstart/students/clip --model runs/quickstart/students/reinforced \\
        --images dataset_scripts/data/emoji --images-config google --template "an emoji of {}"
    python -m evaluation.demo --model apple/MobileCLIP-S0 --onnx s0-onnx --port 7861
    python -m evaluation.demo --model ORG/MODEL --write-space my-space
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from .app import DEFAULT_LABELS, DEFAULT_TEMPLATE, DemoModel, build_app
from .encoders import open_encoder
from .image_index import ImageIndex, open_image_set
from .space import write_space


@dataclass
class DemoSettings:
    models: list[str] = field(default_factory=list)
    onnx: list[str] = field(default_factory=list)
    images: str | None = None
    images_split: str = "train"
    images_config: str | None = None
    caption_column: str | None = None
    template: str = DEFAULT_TEMPLATE
    labels: str = DEFAULT_LABELS
    top_k: int = 8
    host: str = "127.0.0.1"
    port: int | None = None
    cache_dir: str | None = None
    reparameterize: bool = True
    progress: bool = True
    write_space: str | None = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", dest="models", action="append", default=[], metavar="DIR_OR_ID",
                        help="a MobileCLIP folder (or its reparameterized/ copy) or Hub id; repeat to compare")
    parser.add_argument("--onnx", action="append", default=[], metavar="DIR",
                        help="an export of modeling_mobileclip.export (served with onnxruntime); repeatable")
    parser.add_argument("--images", help="images to search: a folder of images, a data file or a load_dataset spec")
    parser.add_argument("--images-split", default="train")
    parser.add_argument("--images-config", help="dataset configuration of --images (e.g. 'google' for the emoji set)")
    parser.add_argument("--caption-column", help="column that labels search results (default: name/caption/text)")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help="zero-shot prompt template ({} is the label)")
    parser.add_argument("--labels", default=DEFAULT_LABELS, help="the zero-shot labels shown at start")
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="default: the first free port from 7860")
    parser.add_argument("--cache-dir", help="image-embedding cache (default: ~/.cache/mobileclip-demo)")
    parser.add_argument("--no-reparameterize", dest="reparameterize", action="store_false",
                        help="serve PyTorch models in their train-time form instead of the fused one")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--write-space", metavar="DIR",
                        help="write a Hugging Face Space folder serving these models (Hub ids) and exit")
    return parser


def parse_settings(argv: list[str] | None = None) -> DemoSettings:
    parser = build_parser()
    settings = DemoSettings(**vars(parser.parse_args(argv)))
    if not settings.models and not settings.onnx:
        parser.error("give at least one --model or --onnx")
    return settings


def load_models(settings: DemoSettings) -> list[DemoModel]:
    """The encoders, and with --images the index of each (embedded once, then read from the cache). The image set
    opens first: a wrong --images fails before any model loads."""
    images = None
    if settings.images:
        images = open_image_set(settings.images, settings.images_split, settings.images_config,
                                settings.caption_column)
    encoders = [open_encoder(spec, settings.reparameterize) for spec in settings.models]
    encoders += [open_encoder(spec) for spec in settings.onnx]
    seen: dict[str, int] = {}
    for encoder in encoders:  # two folders with the same name still get distinct column titles
        seen[encoder.name] = seen.get(encoder.name, 0) + 1
        if seen[encoder.name] > 1:
            encoder.name = f"{encoder.name} #{seen[encoder.name]}"
    return [DemoModel(encoder, ImageIndex(encoder, images, settings.cache_dir, progress=settings.progress)
                      if images is not None else None) for encoder in encoders]


def main(argv: list[str] | None = None):
    settings = parse_settings(argv)
    if settings.write_space:
        folder = write_space(Path(settings.write_space), settings.models, settings.onnx, images=settings.images,
                             images_config=settings.images_config, images_split=settings.images_split,
                             template=settings.template, labels=settings.labels)
        print(f"Wrote the Space folder {folder} (app.py, requirements.txt, README.md and the demo's code).")
        return folder
    models = load_models(settings)
    app = build_app(models, settings.template, settings.labels, settings.top_k)
    app.launch(server_name=settings.host, server_port=settings.port, show_error=True)
    return app
