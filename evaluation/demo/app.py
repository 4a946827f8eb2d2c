"""The demo's page (Gradio): zero-shot classification and search, one column per model.

The answers are computed by `classify` and `search`, plain functions the tests also call; the page only wires them
to components. Bad input (not an image, an image over the processor's limits, no labels, an empty query) is reported
in the page's message line and the app keeps serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import gradio as gr
import numpy as np
from PIL import Image, UnidentifiedImageError

from .encoders import Encoder
from .image_index import ImageIndex

DEFAULT_TEMPLATE = "a photo of {}."
DEFAULT_LABELS = "cat\ndog\ncar"


def image_input(**kwargs) -> gr.Image:
    """`gr.Image` (upload, paste, preview) whose file reaches the handler undecoded: a file that is not an image then
    gets the demo's one-line message instead of Gradio's preprocessing error. An instance attribute, not a subclass:
    Gradio writes a `.pyi` stub beside the source file of every component subclass."""
    component = gr.Image(type="filepath", sources=["upload", "clipboard"], **kwargs)
    component.preprocess = lambda payload: None if payload is None else payload.path
    return component


class DemoInputError(ValueError):
    """Input the demo cannot answer; its message is shown in the page."""


@dataclass
class DemoModel:
    encoder: Encoder
    index: ImageIndex | None = None


def parse_labels(text: str) -> list[str]:
    """One label per line, or comma-separated on one line."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    labels = [part.strip() for part in lines[0].split(",") if part.strip()] if len(lines) == 1 else lines
    if not labels:
        raise DemoInputError("Enter at least one label (one per line, or comma-separated).")
    return labels


def open_image(value) -> Image.Image:
    """A PIL image from what the page sends (a file path, or an image already decoded)."""
    if value is None:
        raise DemoInputError("Upload or paste an image first.")
    if isinstance(value, Image.Image):
        return value
    try:
        with Image.open(value) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError) as error:
        raise DemoInputError(f"{Path(value).name} is not an image Pillow can read: {error}.") from None
    except Image.DecompressionBombError as error:
        raise DemoInputError(f"The image is too large to decode safely: {error}") from None


def classify(models: Sequence[DemoModel], image, labels_text: str, template: str) -> list[dict[str, float]]:
    """Zero-shot probabilities of every label, per model: softmax of logit scale x cosine(image, template(label))."""
    labels = parse_labels(labels_text)
    template = (template or "").strip() or "{}"
    if "{}" not in template:
        raise DemoInputError(f"The prompt template must contain {{}} where the label goes, got {template!r}.")
    picture = open_image(image)
    results = []
    for model in models:
        try:
            image_embeds = model.encoder.encode_images([picture])[0]
        except ValueError as error:  # the processor's own limits (aspect ratio, bit depth)
            raise DemoInputError(str(error)) from None
        text_embeds = model.encoder.encode_texts([template.format(label) for label in labels])
        logits = model.encoder.logit_scale * (text_embeds @ image_embeds)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        results.append({label: float(p) for label, p in zip(labels, probabilities)})
    return results


def search(models: Sequence[DemoModel], query_text: str | None, query_image, k: int) -> list[list[tuple]]:
    """Per model, the top-`k` images of its index as (image, caption with score): for the text query if one is given,
    else for the query image."""
    if any(model.index is None for model in models):
        raise DemoInputError("Search needs an image set: start the demo with --images FOLDER_OR_DATASET.")
    text = (query_text or "").strip()
    if not text and query_image is None:
        raise DemoInputError("Enter a text query or give a query image.")
    picture = None if text else open_image(query_image)
    galleries = []
    for model in models:
        try:
            query = (model.encoder.encode_texts([text]) if text else model.encoder.encode_images([picture]))[0]
        except ValueError as error:
            raise DemoInputError(str(error)) from None
        indices, scores = model.index.search(query, int(k))
        images = model.index.images
        galleries.append([(images.image(i), f"{images.captions[i]} ({s:.3f})") for i, s in zip(indices, scores)])
    return galleries


def build_app(models: Sequence[DemoModel], template: str = DEFAULT_TEMPLATE, labels: str = DEFAULT_LABELS,
              top_k: int = 8) -> gr.Blocks:
    names = [model.encoder.name for model in models]
    with gr.Blocks(title="MobileCLIP demo") as app:
        gr.Markdown(f"# MobileCLIP demo\nModels: {', '.join(f'`{name}`' for name in names)}")
        with gr.Tab("Zero-shot", id="zero-shot"):
            with gr.Row():
                zs_image = image_input(label="Image", elem_id="zs-image")
                with gr.Column():
                    zs_labels = gr.Textbox(value=labels, lines=4, label="Labels (one per line)", elem_id="zs-labels")
                    zs_template = gr.Textbox(value=template, label="Prompt template ({} is the label)",
                                             elem_id="zs-template")
                    zs_button = gr.Button("Classify", variant="primary", elem_id="zs-run")
            zs_message = gr.Markdown(elem_id="zs-message")
            with gr.Row():
                zs_outputs = [gr.Label(num_top_classes=5, label=name, elem_id=f"zs-result-{i}")
                              for i, name in enumerate(names)]

        def on_classify(image, labels_text, template_text):
            try:
                return ["", *classify(models, image, labels_text, template_text)]
            except DemoInputError as error:
                return [f"**Error:** {error}", *[None] * len(models)]

        zs_button.click(on_classify, [zs_image, zs_labels, zs_template], [zs_message, *zs_outputs])

        with gr.Tab("Search", id="search"):
            with gr.Row():
                search_text = gr.Textbox(label="Text query", elem_id="search-text")
                search_image = image_input(label="Or an image query (used when the text query is empty)",
                                           elem_id="search-image")
                search_k = gr.Slider(1, 50, value=top_k, step=1, label="Top k", elem_id="search-k")
            search_button = gr.Button("Search", variant="primary", elem_id="search-run")
            search_message = gr.Markdown(elem_id="search-message")
            with gr.Row():
                search_outputs = [gr.Gallery(label=name, columns=4, elem_id=f"search-result-{i}")
                                  for i, name in enumerate(names)]

        def on_search(text, image, k):
            try:
                return ["", *search(models, text, image, k)]
            except DemoInputError as error:
                return [f"**Error:** {error}", *[None] * len(models)]

        search_button.click(on_search, [search_text, search_image, search_k], [search_message, *search_outputs])
        search_text.submit(on_search, [search_text, search_image, search_k], [search_message, *search_outputs])
    return app


__all__ = ["DemoInputError", "DemoModel", "build_app", "classify", "parse_labels", "search"]
