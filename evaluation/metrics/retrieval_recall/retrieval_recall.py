"""Image-text retrieval recall@k with CLIP_benchmark's definition, as an `evaluate` module.

Load it offline by path: `evaluate.load("evaluation/metrics/retrieval_recall")`.
"""

import datasets
import evaluate
import numpy as np
import torch


_DESCRIPTION = """
Retrieval recall@k as CLIP_benchmark (`clip_benchmark.metrics.zeroshot_retrieval.evaluate`) and CLIP-style papers
report it. Inputs are the similarity of every caption (query row) to every image and the index of each caption's
image; an image may have several captions.

- `image_retrieval_recall@k` (text -> image): the fraction of captions whose image is among the k images ranked
  highest for that caption.
- `text_retrieval_recall@k` (image -> text): the fraction of images with at least one of their captions among the
  k captions ranked highest for that image (an image without captions counts as a miss, as in CLIP_benchmark).
- `mean_recall@1`: the mean of the two recall@1 values (DataComp's retrieval main metric), when 1 is among the ks.

Rankings use `torch.topk`; k larger than the number of candidates is clipped to it.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: (T, I) similarity scores, one row per caption and one column per image.
    references: (T,) index in [0, I) of the image each caption describes.
    k_values: recall cut-offs, default (1, 5, 10).
Returns:
    dict with `image_retrieval_recall@k`, `text_retrieval_recall@k` for each k, and `mean_recall@1`.
Example:
    >>> metric = evaluate.load("evaluation/metrics/retrieval_recall")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]], references=[0, 1, 1], k_values=[1])
    {'image_retrieval_recall@1': 0.6666666666666666, 'text_retrieval_recall@1': 1.0, 'mean_recall@1': 0.8333333333333333}
"""

_CITATION = """
@software{cherti_clip_benchmark,
  author = {Cherti, Mehdi and Beaumont, Romain},
  title = {{CLIP Benchmark}},
  url = {https://github.com/LAION-AI/CLIP_benchmark},
}
"""

# Rows ranked per chunk keep the memory of the top-k bookkeeping bounded on 25k x 5k (COCO) score matrices.
_CHUNK = 4096


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    """Text->image and image->text recall@k over a caption x image similarity matrix."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://github.com/LAION-AI/CLIP_benchmark"],
        )

    def _compute(self, predictions, references, k_values=(1, 5, 10)):
        scores = torch.as_tensor(np.asarray(predictions, dtype=np.float32))
        image_of_text = torch.as_tensor(np.asarray(references, dtype=np.int64))
        if scores.ndim != 2 or scores.numel() == 0:
            raise ValueError(f"predictions must be a non-empty (texts, images) matrix, got shape {tuple(scores.shape)}.")
        num_images = scores.shape[1]
        bad = ((image_of_text < 0) | (image_of_text >= num_images)).nonzero()
        if len(bad):
            row = int(bad[0])
            raise ValueError(f"references[{row}] = {int(image_of_text[row])} is not an image index in [0, {num_images}).")
        metrics = {}
        for k in k_values:
            metrics[f"image_retrieval_recall@{k}"] = text_to_image_recall(scores, image_of_text, k)
            metrics[f"text_retrieval_recall@{k}"] = image_to_text_recall(scores, image_of_text, k)
        if 1 in k_values:
            metrics["mean_recall@1"] = 0.5 * (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"])
        return metrics


def text_to_image_recall(scores: torch.Tensor, image_of_text: torch.Tensor, k: int) -> float:
    """Fraction of captions whose own image is among their top-k images."""
    k = min(k, scores.shape[1])
    hits = 0
    for start in range(0, len(scores), _CHUNK):
        top = scores[start : start + _CHUNK].topk(k, dim=1).indices
        hits += int((top == image_of_text[start : start + _CHUNK, None]).any(dim=1).sum())
    return hits / len(scores)


def image_to_text_recall(scores: torch.Tensor, image_of_text: torch.Tensor, k: int) -> float:
    """Fraction of images with at least one own caption among their top-k captions."""
    by_image = scores.t()
    k = min(k, by_image.shape[1])
    hits = 0
    for start in range(0, len(by_image), _CHUNK):
        top = by_image[start : start + _CHUNK].topk(k, dim=1).indices
        images = torch.arange(start, start + len(top))[:, None]
        hits += int((image_of_text[top] == images).any(dim=1).sum())
    return hits / len(by_image)
