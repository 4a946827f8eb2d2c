"""Main metrics of the DataComp tasks that are not plain accuracy or recall: WILDS, fairness and WinoGAViL.

Definitions follow DataComp's evaluation (`mlfoundations/datacomp`, `eval_utils/{wilds,fairness,wino}_eval.py`),
which uses the WILDS metric classes: group metrics are computed over the groups present in the data, and the
worst group is their minimum.
"""

from __future__ import annotations

import numpy as np
import torch


def macro_f1(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """F1 averaged over the classes present in `targets` (WILDS `F1(average="macro")`, iWildCam's `F1-macro_all`).

    Per class: precision tp/(tp+fp) and recall tp/(tp+fn), 0 where undefined; F1 = 2PR/(P+R), 0 if P+R = 0.
    """
    scores = []
    for label in targets.unique().tolist():
        predicted, actual = predictions == label, targets == label
        true_positives = int((predicted & actual).sum())
        precision = true_positives / int(predicted.sum()) if predicted.any() else 0.0
        recall = true_positives / int(actual.sum())
        scores.append(2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0)
    return float(np.mean(scores))


def macro_recall(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """Recall averaged over the classes present in `targets` (WILDS `Recall(average="macro")`)."""
    return float(np.mean([float((predictions[targets == c] == c).double().mean()) for c in targets.unique().tolist()]))


def group_accuracies(correct: torch.Tensor, groups: torch.Tensor) -> dict[int, float]:
    """Mean of `correct` within each group value present in `groups`."""
    correct = correct.double()
    return {int(g): float(correct[groups == g].mean()) for g in groups.unique().tolist()}


def worst_group_accuracy(correct: torch.Tensor, groups: torch.Tensor) -> float:
    """Lowest per-group accuracy over the groups present (WILDS `worst_group_metric`)."""
    return min(group_accuracies(correct, groups).values())


def top_k_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """Whether each target is among the k largest logits (`torch.topk` ranking)."""
    return (logits.topk(min(k, logits.shape[1]), dim=1).indices == targets[:, None]).any(dim=1)


def wilds_metrics(task_key: str, logits: torch.Tensor, targets: torch.Tensor, metadata: torch.Tensor) -> dict:
    """Extra metrics of the WILDS and fairness tasks; `metadata` is the per-sample `npy` row of the mirror.

    Metadata columns: FMoW (region, year, y); Dollar Street (income bucket, income, region); GeoDE (region, country).
    """
    predictions = logits.argmax(dim=1)
    correct = predictions == targets
    if task_key == "wilds/iwildcam":
        return {"acc_avg": float(correct.double().mean()), "recall-macro_all": macro_recall(predictions, targets),
                "F1-macro_all": macro_f1(predictions, targets)}
    if task_key == "wilds/fmow":
        return {"acc_avg": float(correct.double().mean()),
                "acc_worst_year": worst_group_accuracy(correct, metadata[:, 1].long()),
                "acc_worst_region": worst_group_accuracy(correct, metadata[:, 0].long())}
    if task_key == "fairness/dollar_street":
        correct_top5 = top_k_correct(logits, targets, 5)
        return {"acc_top5_avg": float(correct_top5.double().mean()),
                "acc_top5_wg": worst_group_accuracy(correct_top5, metadata[:, 0].long())}
    if task_key == "fairness/geode":
        return {"acc_avg": float(correct.double().mean()), "acc_wg": worst_group_accuracy(correct, metadata[:, 0].long())}
    return {}


def jaccard_index(actual: np.ndarray, predicted: np.ndarray) -> float:
    """|actual AND predicted| / |actual OR predicted| of two boolean vectors (scikit-learn's binary `jaccard_score`)."""
    union = int(np.logical_or(actual, predicted).sum())
    return int(np.logical_and(actual, predicted).sum()) / union if union else 0.0


def winogavil_metrics(scores: np.ndarray, candidate_counts: np.ndarray) -> dict:
    """WinoGAViL summary: mean Jaccard index overall and by number of candidates (`jaccard_score_10-12` is the main)."""
    def mean(mask):
        return float(scores[mask].mean()) if mask.any() else float("nan")

    return {
        "avg_jaccard_score": mean(np.ones_like(scores, dtype=bool)),
        "jaccard_score_5": mean(candidate_counts == 5),
        "jaccard_score_6": mean(candidate_counts == 6),
        "jaccard_score_10": mean(candidate_counts == 10),
        "jaccard_score_12": mean(candidate_counts == 12),
        "jaccard_score_5-6": mean(candidate_counts <= 6),
        "jaccard_score_10-12": mean(candidate_counts >= 10),
    }


def winogavil_prompt(cue: str) -> str:
    """DataComp's WinoGAViL prompt: 'An <cue>' / 'A <cue>' (lower-cased)."""
    cue = cue.lower()
    return f"An {cue}" if cue[:1] in "aeiou" and cue else f"A {cue}"
