"""A model whose answers are known, shared by the evaluation tests: an image embeds as its mean RGB colour, a text as
the RGB of its first colour word, so cosine similarities, hence predictions and metrics, can be worked out by hand."""

import numpy as np
import torch
from PIL import Image


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


# --- metrics by hand: oracles for scores the code computes with evaluation's own functions -------------------------


def hand_top_k(scores: np.ndarray, labels, k: int) -> float:
    """Fraction of rows whose label is among the k best-scored classes: fewer than k classes score strictly higher."""
    hits = [sum(value > row[label] for value in row) < k for row, label in zip(scores.tolist(), labels)]
    return sum(hits) / len(hits)


def hand_mean_reciprocal_rank(scores: np.ndarray, labels) -> float:
    """Mean over rows of 1 / (1 + the classes scored strictly higher than the label)."""
    ranks = [1 + sum(value > row[label] for value in row) for row, label in zip(scores.tolist(), labels)]
    return sum(1 / rank for rank in ranks) / len(ranks)


def hand_retrieval_recalls(image_embeds: np.ndarray, text_embeds: np.ndarray, image_of_text, k: int) -> dict:
    """CLIP_benchmark's recall@k: text->image counts a caption found when its image ranks in the top k images;
    image->text counts an image found when any of its captions ranks in the top k captions."""
    scores = (text_embeds @ image_embeds.T).tolist()  # caption x image
    image_of_text = list(image_of_text)
    found_images = [sum(value > row[image] for value in row) < k for row, image in zip(scores, image_of_text)]
    found_texts = []
    for image in range(len(image_embeds)):
        column = [row[image] for row in scores]
        ranks = [sum(value > column[t] for value in column) for t, owner in enumerate(image_of_text) if owner == image]
        found_texts.append(bool(ranks) and min(ranks) < k)
    return {f"image_retrieval_recall@{k}": sum(found_images) / len(found_images),
            f"text_retrieval_recall@{k}": sum(found_texts) / len(found_texts)}


@torch.no_grad()
def embed_with_saved_model(folder, images, texts) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised float64 image and text embeddings from a saved model folder (AutoModel, AutoProcessor)."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    pixels = processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
    ids = processor(text=list(texts), return_tensors="pt")["input_ids"]
    image_embeds, text_embeds = model.encode_image(pixels).double(), model.encode_text(ids).double()
    return ((image_embeds / image_embeds.norm(dim=-1, keepdim=True)).numpy(),
            (text_embeds / text_embeds.norm(dim=-1, keepdim=True)).numpy())


def hand_zero_shot_top1(folder, images, labels, template: str) -> float:
    """Zero-shot top-1 of a saved model with one template and the distinct labels as class names."""
    classes = sorted(set(labels))
    image_embeds, class_embeds = embed_with_saved_model(folder, images, [template.format(c=c) for c in classes])
    return hand_top_k(image_embeds @ class_embeds.T, [classes.index(label) for label in labels], 1)
