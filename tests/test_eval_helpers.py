"""Fixtures shared by the evaluation tests (imported by the `test_eval_*` modules; holds no tests itself)."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel
from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor
from torch_threads import single_torch_thread  # noqa: F401 (re-exported: the test_eval_* modules import it from here)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved `mobileclip-tiny` folder (random weights, seed 0) that AutoModel / AutoProcessor load."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_model")
    MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny")).eval().save_pretrained(folder)
    MobileCLIPProcessor.from_variant("mobileclip-tiny").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def emoji_subset(tmp_path_factory, emoji_dir):
    """37 Twemoji rows (every 50th, an odd count so process shards are uneven) as a local parquet dataset."""
    emoji = datasets.load_dataset(str(emoji_dir), "twitter", split="train")
    subset = emoji.select(range(0, len(emoji), 52)).select_columns(["image", "name", "category", "captions"])
    assert len(subset) == 37
    path = tmp_path_factory.mktemp("emoji_subset") / "test.parquet"
    subset.to_parquet(str(path))
    return path


# The colour model: an image embeds as its mean RGB colour, a text as the RGB of its first colour word, so cosine
# similarities, hence predictions and metrics, can be worked out by hand.
COLOURS = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "cyan": (0, 255, 255), "magenta": (255, 0, 255),
    "yellow": (255, 255, 0), "white": (255, 255, 255), "orange": (255, 128, 0), "purple": (128, 0, 255),
    "azure": (0, 128, 255), "rose": (255, 0, 128),
}


def swatch(colour: str) -> Image.Image:
    return Image.new("RGB", (8, 8), COLOURS[colour])


class ColourProcessor:
    """images -> mean RGB in [0, 1]; texts -> RGB of their first colour word (stored as 'input_ids')."""

    def __call__(self, text=None, images=None, return_tensors="pt"):
        out = {}
        if images is not None:
            out["pixel_values"] = torch.tensor(np.stack([np.asarray(i, dtype=np.float32).reshape(-1, 3).mean(0) / 255 for i in images]))
        if text is not None:
            out["input_ids"] = torch.tensor([next(COLOURS[w] for w in t.lower().replace(".", " ").split() if w in COLOURS) for t in text],
                                            dtype=torch.float32) / 255
        return out


class ColourModel(torch.nn.Module):
    def encode_image(self, pixel_values):
        return pixel_values

    def encode_text(self, input_ids):
        return input_ids
