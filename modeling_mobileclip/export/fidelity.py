"""The fidelity measurement that judges every export: fp32 PyTorch's normalised embeddings of the fidelity set
(images and their names) against the exported graphs', as cosines and zero-shot top-1 agreement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn

from .preparation import MobileCLIPImageEncoder, MobileCLIPTextEncoder

FIDELITY_TEMPLATE = "an emoji of a {}"  # the quickstart's name prompt
# The bundled Twemoji set, read as data files where the repository keeps them: the dataset_scripts package sits
# above this one, so it is not imported.
FIDELITY_DATA = Path(__file__).resolve().parents[2] / "dataset_scripts" / "data" / "emoji"


def fidelity_rows(count: int):
    """The fidelity set: `count` evenly spaced rows of the bundled Twemoji set (`datasets.Dataset`)."""
    rows = datasets.load_dataset(str(FIDELITY_DATA), "twitter", split="train")
    return rows.select(sorted({int(i * len(rows) / count) for i in range(min(count, len(rows)))}))


def fidelity_set(count: int) -> tuple[list, list[str]]:
    """The fidelity set's images (RGB) and names."""
    rows = fidelity_rows(count)
    return [image.convert("RGB") for image in rows["image"]], list(rows["name"])


def fidelity_inputs(processor, count: int) -> dict[str, np.ndarray]:
    images, names = fidelity_set(count)
    return {"image": processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32),
            "text": processor(text=[FIDELITY_TEMPLATE.format(n) for n in names], return_tensors="np")["input_ids"]}


@torch.no_grad()
def pytorch_embeddings(model: nn.Module, inputs: dict[str, np.ndarray], batch: int = 32) -> dict[str, np.ndarray]:
    """fp32 PyTorch's normalised embeddings of the fidelity inputs (the reference)."""
    encoders = {"image": MobileCLIPImageEncoder(model).eval(), "text": MobileCLIPTextEncoder(model).eval()}
    return {c: np.concatenate([encoders[c](torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])
            for c, x in inputs.items()}


def fidelity_metrics(exported: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, Any]:
    """Cosine of each exported embedding to fp32 PyTorch, and zero-shot top-1 agreement: image i is classified among
    all names (its own is the label) with the exported graphs (PyTorch's embeddings stand in for a component that was
    not exported or cannot run here) vs with PyTorch."""
    report: dict[str, Any] = {}
    for component, values in exported.items():
        ref = reference[component]
        cosine = (values * ref).sum(-1) / (np.linalg.norm(values, axis=-1) * np.linalg.norm(ref, axis=-1))
        report[component] = {"cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
                             "max_abs_diff": float(np.abs(values - ref).max()), "samples": len(values)}
    image, text = exported.get("image", reference["image"]), exported.get("text", reference["text"])
    ours, theirs = (image @ text.T).argmax(-1), (reference["image"] @ reference["text"].T).argmax(-1)
    labels = np.arange(len(ours))
    report["zero_shot"] = {
        "classes": len(labels), "top1_agreement": float((ours == theirs).mean()),
        "pytorch_top1_accuracy": float((theirs == labels).mean()),
        "export_top1_accuracy": float((ours == labels).mean()),
        "exported_components": sorted(exported),
    }
    return report


def format_fidelity(report: dict[str, Any]) -> str:
    """The printed table."""
    lines = [f"Fidelity vs fp32 PyTorch ({report['setting']}; {report['samples']} emoji images and names)"]
    if report.get("not_measured"):
        return "\n".join(lines + [f"  not measured: {report['not_measured']}"])
    lines += [f"{'encoder':<8} {'cos min':>9} {'cos mean':>9} {'max|diff|':>10}", "-" * 39]
    for component in ("image", "text"):
        if component in report:
            r = report[component]
            lines.append(f"{component:<8} {r['cosine_min']:>9.6f} {r['cosine_mean']:>9.6f} {r['max_abs_diff']:>10.2e}")
    z = report["zero_shot"]
    lines.append(f"zero-shot top-1 over {z['classes']} names: agreement {100 * z['top1_agreement']:.1f}% "
                 f"(accuracy: PyTorch {100 * z['pytorch_top1_accuracy']:.1f}%, "
                 f"export {100 * z['export_top1_accuracy']:.1f}%)")
    return "\n".join(lines)
