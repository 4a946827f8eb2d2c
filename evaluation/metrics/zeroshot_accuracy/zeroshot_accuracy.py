"""Zero-shot classification metrics with CLIP_benchmark's definitions, as an `evaluate` module.

Load it offline by path: `evaluate.load("evaluation/metrics/zeroshot_accuracy")` (single-label) or
`evaluate.load("evaluation/metrics/zeroshot_accuracy", "multilabel")`.
"""

import datasets
import evaluate
import numpy as np
import torch


_DESCRIPTION = """
Zero-shot classification metrics as CLIP_benchmark (`clip_benchmark.metrics.zeroshot_classification.evaluate`)
reports them, computed from the logits of every image against every class:

- `acc1`, `acc5`: top-k accuracy (a hit if the label is among the k highest logits, ranked with `torch.topk`);
  `acc5` is NaN when there are fewer than 5 classes.
- `mean_per_class_recall`: the recall of each class present in the references, averaged over those classes
  (scikit-learn's `balanced_accuracy_score` of the arg-max prediction).

With the `multilabel` configuration (references are multi-hot vectors) it reports `mean_average_precision`: the
average precision of each class (precision at the rank of every positive, ranked by descending logit, averaged over
the positives) averaged over classes.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: (N, C) logits, one row per image and one column per class.
    references: (N,) class indices in [0, C), or with the `multilabel` configuration (N, C) multi-hot vectors.
Returns:
    dict with `acc1`, `acc5`, `mean_per_class_recall`, or `mean_average_precision` (multilabel).
Example:
    >>> metric = evaluate.load("evaluation/metrics/zeroshot_accuracy")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]], references=[0, 0, 1])
    {'acc1': 0.3333333333333333, 'acc5': nan, 'mean_per_class_recall': 0.25}
"""

_CITATION = """
@software{cherti_clip_benchmark,
  author = {Cherti, Mehdi and Beaumont, Romain},
  title = {{CLIP Benchmark}},
  url = {https://github.com/LAION-AI/CLIP_benchmark},
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ZeroshotAccuracy(evaluate.Metric):
    """Top-1/top-5 accuracy and mean per-class recall (or multi-label mAP) of zero-shot logits."""

    def _info(self):
        if self.config_name == "multilabel":
            references = datasets.Sequence(datasets.Value("int64"))
        elif self.config_name == "default":
            references = datasets.Value("int64")
        else:
            raise ValueError(f"Unknown configuration {self.config_name!r}; use 'default' or 'multilabel'.")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": references}
            ),
            reference_urls=["https://github.com/LAION-AI/CLIP_benchmark"],
        )

    def _compute(self, predictions, references):
        logits = torch.as_tensor(np.asarray(predictions, dtype=np.float32))
        targets = torch.as_tensor(np.asarray(references, dtype=np.int64))
        if logits.ndim != 2 or len(logits) == 0:
            raise ValueError(f"predictions must be a non-empty (N, C) matrix of logits, got shape {tuple(logits.shape)}.")
        if self.config_name == "multilabel":
            if targets.shape != logits.shape:
                raise ValueError(
                    f"multilabel references must match the logits' shape {tuple(logits.shape)}, got {tuple(targets.shape)}."
                )
            return {"mean_average_precision": mean_average_precision(logits, targets)}
        num_classes = logits.shape[1]
        bad = ((targets < 0) | (targets >= num_classes)).nonzero()
        if len(bad):
            row = int(bad[0])
            raise ValueError(f"references[{row}] = {int(targets[row])} is not a class index in [0, {num_classes}).")
        acc1, acc5 = top_k_accuracy(logits, targets, (1, 5)) if num_classes >= 5 else (
            top_k_accuracy(logits, targets, (1,))[0],
            float("nan"),
        )
        return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": mean_per_class_recall(logits.argmax(dim=1), targets)}


def top_k_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...]) -> list[float]:
    """Fraction of rows whose target is among the k largest logits, for each k (ranking by `torch.topk`)."""
    ranked = logits.topk(max(ks), dim=1, largest=True, sorted=True).indices
    hits = ranked == targets[:, None]
    return [int(hits[:, :k].sum()) / len(targets) for k in ks]


def mean_per_class_recall(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """Recall of every class present in `targets`, averaged (scikit-learn's balanced accuracy)."""
    recalls = [float((predictions[targets == c] == c).double().mean()) for c in targets.unique().tolist()]
    return float(np.mean(recalls))


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Per-class average precision (ranking by descending score), averaged over classes."""
    ranks = torch.arange(1, scores.shape[0] + 1, dtype=torch.float64)
    average_precisions = []
    for k in range(scores.shape[1]):
        order = torch.sort(scores[:, k], dim=0, descending=True).indices
        positives = targets[order, k] > 0
        precision = positives.double().cumsum(0) / ranks
        average_precisions.append(float(precision[positives].sum()) / max(int(positives.sum()), 1))
    return float(np.mean(average_precisions))
