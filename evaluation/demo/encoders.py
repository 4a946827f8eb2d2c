"""What the demo asks of a model: unit-norm image and text embeddings, its logit scale, and a fingerprint of its
weights (the key of the image-embedding cache).

`open_encoder` picks the backend: a folder with an export `manifest.json` runs on onnxruntime (numpy preprocessing,
no torch); anything else (a MobileCLIP folder, its `reparameterized/` copy, a Hub id) loads with the project's loader
in PyTorch.
"""

from __future__ import annotations

import hashlib
import html
import json
from pathlib import Path
from typing import Sequence

import ftfy
import numpy as np
from PIL import Image

# MobileCLIPImageProcessor.max_aspect_ratio: beyond it the shortest-side resize makes the long side explode.
MAX_ASPECT_RATIO = 64


class Encoder:
    """Base of the demo's backends; `name` labels the model's column in the page."""

    name: str
    logit_scale: float
    fingerprint: str

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError


def rgb_on_white(image: Image.Image) -> Image.Image:
    """RGB with transparency composited on white (transformers' `convert_rgb`, which the PyTorch processor uses)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def check_aspect_ratio(image: Image.Image, limit: float = MAX_ASPECT_RATIO) -> None:
    width, height = image.size
    if max(width, height) > limit * min(width, height):
        raise ValueError(f"Image of {width}x{height} pixels has an aspect ratio of "
                         f"{max(width, height) / max(min(width, height), 1):.1f}:1, above the processor's limit of "
                         f"{limit}:1; crop or pad it first.")


class OnnxEncoder(Encoder):
    """An export of `python -m modeling_mobileclip.export` (image and text graphs, manifest, tokenizer.json)."""

    def __init__(self, folder: str | Path):
        import onnxruntime
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / "manifest.json").read_text())
        components = self.manifest.get("components", {})
        missing = [name for name in ("image", "text") if name not in components]
        if missing:
            raise ValueError(f"{self.folder}: the export has no {' and no '.join(missing)} graph (exported with "
                             "--component both?); the demo needs both.")
        self.name = f"{self.folder.name} (ONNX)"
        self.logit_scale = float(self.manifest["logit_scale"])
        self.image_prep = self.manifest["preprocessing"]["image"]
        self.text_prep = self.manifest["preprocessing"]["text"]
        self.tokenizer = Tokenizer.from_file(str(self.folder / self.text_prep["tokenizer_file"]))
        self.sessions = {name: onnxruntime.InferenceSession(str(self.folder / components[name]["file"]),
                                                            providers=["CPUExecutionProvider"])
                         for name in ("image", "text")}
        digest = hashlib.sha256()
        for name in ("image", "text"):
            digest.update((self.folder / components[name]["file"]).read_bytes())
        self.fingerprint = digest.hexdigest()

    def pixel_values(self, image: Image.Image) -> np.ndarray:
        """The PyTorch processor's steps (see the manifest): shortest side resized with PIL, center crop with
        torchvision's offsets, scaled and normalised."""
        check_aspect_ratio(image)
        prep = self.image_prep
        image = rgb_on_white(image)
        if prep.get("resize"):
            short, (width, height) = prep["resize"]["shortest_edge"], image.size
            size = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
            image = image.resize(size, getattr(Image.Resampling, prep["resize"]["resample"].upper()))
        pixels = np.asarray(image, dtype=np.float32)
        if prep.get("center_crop"):
            crop_height, crop_width = prep["center_crop"]["height"], prep["center_crop"]["width"]
            pad_y, pad_x = max(crop_height - pixels.shape[0], 0), max(crop_width - pixels.shape[1], 0)
            pixels = np.pad(pixels, ((pad_y // 2, (pad_y + 1) // 2), (pad_x // 2, (pad_x + 1) // 2), (0, 0)))
            top = int(round((pixels.shape[0] - crop_height) / 2))
            left = int(round((pixels.shape[1] - crop_width) / 2))
            pixels = pixels[top:top + crop_height, left:left + crop_width]
        pixels = (pixels * np.float32(prep["rescale_factor"]) - np.float32(prep["mean"])) / np.float32(prep["std"])
        return pixels.transpose(2, 0, 1).astype(np.float32)

    def input_ids(self, texts: Sequence[str]) -> np.ndarray:
        """open_clip's cleaning and ids: <start> ... <end>, truncated with <end> kept last, padded."""
        prep = self.text_prep
        length = prep["context_length"]
        ids = np.full((len(texts), length), prep["pad_token_id"], dtype=np.int64)
        for row, text in enumerate(texts):
            cleaned = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()
            tokens = self.tokenizer.encode(cleaned).ids
            if len(tokens) > length:
                tokens = tokens[: length - 1] + [prep["eos_token_id"]]
            ids[row, : len(tokens)] = tokens
        return ids

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        batch = np.stack([self.pixel_values(image) for image in images])
        return self.sessions["image"].run(None, {"pixel_values": batch})[0]

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.sessions["text"].run(None, {"input_ids": self.input_ids(texts)})[0]


def open_encoder(spec: str, reparameterize: bool = True) -> Encoder:
    """An ONNX export folder (it has `manifest.json`) or, in PyTorch, a MobileCLIP folder / Hub id."""
    if (Path(spec) / "manifest.json").is_file():
        return OnnxEncoder(spec)
    # torch only where a PyTorch model is served: an ONNX-only demo never imports it.
    from .torch_encoder import TorchEncoder

    return TorchEncoder(spec, reparameterize=reparameterize)


__all__ = ["Encoder", "OnnxEncoder", "check_aspect_ratio", "open_encoder", "rgb_on_white"]
