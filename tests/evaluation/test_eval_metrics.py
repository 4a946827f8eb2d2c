"""The evaluate modules and task metrics against CLIP_benchmark, scikit-learn and hand-computed values."""

import builtins
import math

import numpy as np
import pytest
import torch
from clip_benchmark.metrics import zeroshot_classification as cb_zsc
from clip_benchmark.metrics import zeroshot_retrieval as cb_zsr
from sklearn.metrics import balanced_accuracy_score, f1_score, jaccard_score

from evaluation.common import load_metric
from evaluation.task_metrics import (
    jaccard_index,
    macro_f1,
    wilds_metrics,
    winogavil_metrics,
    winogavil_prompt,
    worst_group_accuracy,
)


@pytest.fixture
def cb_accuracy(monkeypatch):
    """CLIP_benchmark 1.6.2's `accuracy` calls float() on a 1-element array, which numpy 2 rejects; shadow `float`
    in that module only, leaving its code unchanged."""
    monkeypatch.setattr(
        cb_zsc, "float", lambda x: builtins.float(np.asarray(x).reshape(-1)[0]) if hasattr(x, "shape") else builtins.float(x),
        raising=False,
    )
    return cb_zsc.accuracy


@pytest.mark.parametrize("num_classes", [3, 12])
def test_zeroshot_accuracy_matches_clip_benchmark(cb_accuracy, num_classes):
    generator = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(200, num_classes, generator=generator)
    targets = torch.randint(0, num_classes, (200,), generator=generator)
    ours = load_metric("zeroshot_accuracy").compute(predictions=logits.numpy(), references=targets.numpy())
    if num_classes >= 5:
        acc1, acc5 = cb_accuracy(logits, targets, topk=(1, 5))
        assert ours["acc5"] == pytest.approx(acc5, abs=1e-12)
    else:
        (acc1,) = cb_accuracy(logits, targets, topk=(1,))
        assert math.isnan(ours["acc5"])
    assert ours["acc1"] == pytest.approx(acc1, abs=1e-12)
    assert ours["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(targets, logits.argmax(1)), abs=1e-12)


def test_zeroshot_accuracy_hand_computed():
    # Class 0: rows 0, 1 (row 1 predicted 1); class 1: row 2 (predicted 0): acc1 1/3, recalls 1/2 and 0.
    metrics = load_metric("zeroshot_accuracy").compute(predictions=[[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]], references=[0, 0, 1])
    assert metrics["acc1"] == pytest.approx(1 / 3)
    assert metrics["mean_per_class_recall"] == pytest.approx(0.25)


def test_multilabel_average_precision_matches_clip_benchmark():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(60, 7, generator=generator)
    targets = (torch.rand(60, 7, generator=generator) < 0.3).long()
    ours = load_metric("zeroshot_accuracy", "multilabel").compute(predictions=scores.numpy(), references=targets.numpy())
    expected = cb_zsc.average_precision_per_class(scores, targets).mean().item()
    assert ours["mean_average_precision"] == pytest.approx(expected, abs=1e-6)


def test_metric_modules_reject_bad_references():
    with pytest.raises(ValueError, match=r"references\[1\] = 5 is not a class index in \[0, 2\)"):
        load_metric("zeroshot_accuracy").compute(predictions=[[0.1, 0.2], [0.3, 0.1]], references=[0, 5])
    with pytest.raises(ValueError, match=r"references\[0\] = 3 is not an image index in \[0, 2\)"):
        load_metric("retrieval_recall").compute(predictions=[[0.1, 0.2]], references=[3])


def _cb_recalls(scores: torch.Tensor, image_of_text: torch.Tensor, ks) -> dict:
    """CLIP_benchmark's retrieval recall computation on a given caption x image score matrix."""
    positives = torch.zeros_like(scores, dtype=bool)
    positives[torch.arange(len(scores)), image_of_text] = True
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = (cb_zsr.batchify(cb_zsr.recall_at_k, scores, positives, 16, "cpu", k=k) > 0).float().mean().item()
        out[f"text_retrieval_recall@{k}"] = (cb_zsr.batchify(cb_zsr.recall_at_k, scores.T, positives.T, 16, "cpu", k=k) > 0).float().mean().item()
    return out


def test_retrieval_recall_matches_clip_benchmark():
    generator = torch.Generator().manual_seed(1)
    # 40 images, 1 to 5 captions each; image 7 has none (a miss for image->text in both implementations).
    counts = torch.randint(1, 6, (40,), generator=generator)
    counts[7] = 0
    image_of_text = torch.repeat_interleave(torch.arange(40), counts)
    images = torch.nn.functional.normalize(torch.randn(40, 16, generator=generator), dim=-1)
    texts = torch.nn.functional.normalize(images[image_of_text] + 0.9 * torch.randn(len(image_of_text), 16, generator=generator), dim=-1)
    scores = texts @ images.T
    ours = load_metric("retrieval_recall").compute(predictions=scores.numpy(), references=image_of_text.numpy())
    expected = _cb_recalls(scores, image_of_text, (1, 5, 10))
    assert 0.1 < expected["image_retrieval_recall@1"] < 0.9  # not a degenerate case
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
    assert ours["mean_recall@1"] == pytest.approx(0.5 * (ours["image_retrieval_recall@1"] + ours["text_retrieval_recall@1"]))


def test_retrieval_recall_hand_computed():
    # Caption 0 -> image 0 (hit), caption 1 -> image 0 but belongs to 1 (miss), caption 2 -> image 1 (hit).
    # Image 0's best caption is 0 (hit); image 1's best caption is 2 (hit).
    metrics = load_metric("retrieval_recall").compute(
        predictions=[[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]], references=[0, 1, 1], k_values=[1, 2]
    )
    assert metrics["image_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert metrics["text_retrieval_recall@1"] == 1.0
    assert metrics["image_retrieval_recall@2"] == 1.0  # k clipped to the 2 images


def test_macro_f1_and_jaccard_match_sklearn():
    generator = torch.Generator().manual_seed(2)
    targets = torch.randint(0, 8, (300,), generator=generator)
    predictions = torch.where(torch.rand(300, generator=generator) < 0.5, targets, torch.randint(0, 10, (300,), generator=generator))
    expected = f1_score(targets, predictions, average="macro", labels=torch.unique(targets))
    assert macro_f1(predictions, targets) == pytest.approx(expected, abs=1e-12)
    actual = np.array([1, 0, 1, 1, 0, 0], dtype=bool)
    predicted = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    assert jaccard_index(actual, predicted) == pytest.approx(jaccard_score(actual, predicted)) == pytest.approx(0.5)


def test_group_metrics_hand_computed():
    # Region 0: 2/2 right, region 1: 1/3, region 3: 0/1 (region 2 absent and ignored): worst 0.
    logits = torch.tensor([[2.0, 0], [2, 0], [0, 2], [2, 0], [2, 0], [0, 2]])
    targets = torch.tensor([0, 0, 1, 1, 1, 0])
    metadata = torch.tensor([[0, 2010], [0, 2010], [1, 2011], [1, 2011], [1, 2012], [3, 2012]], dtype=torch.float64)
    fmow = wilds_metrics("wilds/fmow", logits, targets, metadata)
    assert fmow["acc_avg"] == pytest.approx(3 / 6)
    assert fmow["acc_worst_region"] == 0.0
    assert fmow["acc_worst_year"] == pytest.approx(0.0)  # 2012: rows 4 and 5 both wrong
    assert worst_group_accuracy(torch.tensor([True, True, False, True]), torch.tensor([5, 5, 9, 9])) == 0.5
    geode = wilds_metrics("fairness/geode", logits, targets, metadata)
    assert geode["acc_wg"] == 0.0


def test_winogavil_summary_and_prompt():
    scores = np.array([1.0, 0.5, 0.0, 0.25])
    counts = np.array([5, 6, 10, 12])
    summary = winogavil_metrics(scores, counts)
    assert summary["jaccard_score_10-12"] == pytest.approx(0.125)
    assert summary["jaccard_score_5-6"] == pytest.approx(0.75)
    assert summary["avg_jaccard_score"] == pytest.approx(0.4375)
    assert winogavil_prompt("Apple") == "An apple" and winogavil_prompt("Dog") == "A dog"
