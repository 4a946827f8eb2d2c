"""Model cards (README.md with Hub metadata) for converted and trained MobileCLIP folders.

One builder, :func:`build_model_card`, used by `modeling_mobileclip.convert` (official checkpoints),
`training.hub.save_trained_model` (trained folders) and `MobileCLIPModel.push_to_hub`. It returns a
`huggingface_hub.ModelCard` whose `ModelCardData` holds library, pipeline tag, license, tags, base model and a
`model-index` built from `EvalResult`s: the published zero-shot results of an official variant, or the evaluation
results of a training run.

This file is also copied into saved folders as remote code (reached from `modeling_mobileclip.py`), so it imports
only the standard library and `huggingface_hub`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from huggingface_hub import EvalResult, ModelCard, ModelCardData


LIBRARY_NAME = "transformers"
PIPELINE_TAG = "zero-shot-image-classification"

CITATIONS = {
    "mobileclip": """@inproceedings{vasu2024mobileclip,
  title     = {MobileCLIP: Fast Image-Text Models through Multi-Modal Reinforced Training},
  author    = {Vasu, Pavan Kumar Anasosalu and Pouransari, Hadi and Faghri, Fartash and Vemulapalli, Raviteja and Tuzel, Oncel},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024},
  note      = {arXiv:2311.17049}
}""",
    "mobileclip2": """@article{faghri2025mobileclip2,
  title   = {MobileCLIP2: Improving Multi-Modal Reinforced Training},
  author  = {Faghri, Fartash and Vasu, Pavan Kumar Anasosalu and Koc, Cem and Shankar, Vaishaal and Toshev, Alexander and Tuzel, Oncel and Pouransari, Hadi},
  journal = {Transactions on Machine Learning Research (TMLR)},
  year    = {2025},
  note    = {arXiv:2508.20691}
}""",
}
ARXIV = {"mobileclip": "2311.17049", "mobileclip2": "2508.20691"}

# Licenses of the source weights as their Hub repos state them in their card metadata. NOT in the project's
# reference sheets: recalled from the repos' cards, to be verified before a public release.
# v1 (apple/MobileCLIP-*, apple/MobileCLIP-*-OpenCLIP, apple/mobileclip_*_timm): Apple Sample Code License (weights
# and data); v2 (apple/MobileCLIP2-*, timm/MobileCLIP2-*-OpenCLIP): Apple Machine Learning Research Model license.
LICENSES = {
    "mobileclip": dict(license="other", license_name="apple-ascl",
                       license_link="https://github.com/apple/ml-mobileclip/blob/main/LICENSE_weights_data"),
    "mobileclip2": dict(license="other", license_name="apple-amlr",
                        license_link="https://github.com/apple/ml-mobileclip/blob/main/LICENSE_weights_data"),
}

RESULTS_SOURCE_URL = "https://github.com/apple/ml-mobileclip"

# Published zero-shot results, by the row name of Apple's results table: apple/ml-mobileclip README results table
# (rows as named here), whose ImageNet-1k and Avg-38 columns are the official evaluation dumps `results/*.jsonl`
# (2 decimals); tests check them against tests/fixtures/reference/mobileclip_published_results.md, the results table
# of the project's reference sheet (section 10.1). The papers' own table/row numbers are not verified in
# the reference sheets (third-party transcriptions only), so cards cite the README table and row. Keys: ImageNet-1k
# top-1, average over the 38 DataComp tasks, Flickr30k and COCO text-to-image recall@1.
PUBLISHED_RESULTS: dict[str, dict[str, float]] = {
    "MobileCLIP-S0": dict(imagenet=67.79, avg38=58.12, flickr_t2i=67.7, coco_t2i=40.4),
    "MobileCLIP-S1": dict(imagenet=72.62, avg38=61.25, flickr_t2i=71.0, coco_t2i=44.0),
    "MobileCLIP-S2": dict(imagenet=74.44, avg38=63.66, flickr_t2i=73.4, coco_t2i=45.4),
    "MobileCLIP-B": dict(imagenet=76.82, avg38=65.15, flickr_t2i=77.3, coco_t2i=50.6),
    "MobileCLIP-B (LT)": dict(imagenet=77.22, avg38=65.78, flickr_t2i=76.9, coco_t2i=50.0),
    "MobileCLIP-S3": dict(imagenet=78.29, avg38=66.33, flickr_t2i=77.9, coco_t2i=51.3),
    "MobileCLIP-L/14": dict(imagenet=79.53, avg38=66.94, flickr_t2i=75.2, coco_t2i=47.6),
    "MobileCLIP-S4": dict(imagenet=79.41, avg38=68.11, flickr_t2i=79.5, coco_t2i=52.1),
    "MobileCLIP2-S0": dict(imagenet=71.53, avg38=59.67, flickr_t2i=69.2, coco_t2i=43.7),
    "MobileCLIP2-S2": dict(imagenet=77.24, avg38=64.05, flickr_t2i=74.8, coco_t2i=48.8),
    "MobileCLIP2-B": dict(imagenet=79.41, avg38=65.76, flickr_t2i=76.5, coco_t2i=49.9),
    "MobileCLIP2-S3": dict(imagenet=80.68, avg38=66.85, flickr_t2i=77.3, coco_t2i=50.9),
    "MobileCLIP2-L/14": dict(imagenet=81.90, avg38=67.80, flickr_t2i=77.7, coco_t2i=51.6),
    "MobileCLIP2-S4": dict(imagenet=81.85, avg38=67.55, flickr_t2i=78.0, coco_t2i=51.5),
}

# Our variant name -> the default published row (B-LT is the same architecture as B: pass its row explicitly).
DEFAULT_ROWS = {
    "mobileclip-s0": "MobileCLIP-S0", "mobileclip-s1": "MobileCLIP-S1", "mobileclip-s2": "MobileCLIP-S2",
    "mobileclip-b": "MobileCLIP-B", "mobileclip-s3": "MobileCLIP-S3", "mobileclip-s4": "MobileCLIP-S4",
    "mobileclip-l-14": "MobileCLIP-L/14", "mobileclip2-s0": "MobileCLIP2-S0", "mobileclip2-s2": "MobileCLIP2-S2",
    "mobileclip2-b": "MobileCLIP2-B", "mobileclip2-s3": "MobileCLIP2-S3", "mobileclip2-s4": "MobileCLIP2-S4",
    "mobileclip2-l-14": "MobileCLIP2-L/14",
}

# What our tests measure against the source implementations (tests/modeling/test_parity_official.py, random/golden
# weights).
PARITY = {
    "apple": "Apple's `mobileclip` code (golden input/output files, tests/modeling/test_parity_official.py): image "
             "and text embeddings within 1e-5 (absolute and relative), train-time and reparameterized.",
    "open_clip": "open_clip 3.3.0 (`open_clip.create_model`, tests/modeling/test_parity_official.py): image and "
                 "text embeddings within 1e-5 maximum relative error, train-time and reparameterized.",
    "timm": "timm 1.0.31 image tower (tests/modeling/test_parity_official.py): image embeddings within 1e-5 maximum "
            "relative error; the text tower as for its Apple/open_clip checkpoint.",
}

_RESULT_ROWS = [
    # key, task type, task name, dataset type, dataset name, split, metric type, metric name
    ("imagenet", "zero-shot-image-classification", "Zero-shot image classification", "imagenet-1k",
     "ImageNet-1k", "validation", "accuracy", "Zero-shot top-1 accuracy (%)"),
    ("avg38", "zero-shot-image-classification", "Zero-shot image classification", "mlfoundations/datacomp",
     "DataComp 38-task evaluation suite", "test", "accuracy", "Average of 38 tasks (%)"),
    ("flickr_t2i", "zero-shot-retrieval", "Zero-shot text-to-image retrieval",
     "nlphuji/flickr_1k_test_image_text_retrieval", "Flickr30k (1k test)", "test", "recall@1", "Text-to-image recall@1 (%)"),
    ("coco_t2i", "zero-shot-retrieval", "Zero-shot text-to-image retrieval", "mscoco",
     "MSCOCO (5k test)", "test", "recall@1", "Text-to-image recall@1 (%)"),
]


def family(variant: str) -> str:
    """`mobileclip2` for MobileCLIP2 variants, else `mobileclip`."""
    return "mobileclip2" if variant.lower().startswith("mobileclip2") else "mobileclip"


def published_eval_results(row: str) -> list[EvalResult]:
    """The published zero-shot results of `row` (a key of :data:`PUBLISHED_RESULTS`) as `EvalResult`s."""
    if row not in PUBLISHED_RESULTS:
        raise ValueError(f"No published results for {row!r}; known rows: {', '.join(PUBLISHED_RESULTS)}.")
    paper = "MobileCLIP2 (arXiv 2508.20691)" if row.startswith("MobileCLIP2") else "MobileCLIP (arXiv 2311.17049)"
    source = f"{paper}; apple/ml-mobileclip README results table, row '{row}'"
    values = PUBLISHED_RESULTS[row]
    return [
        EvalResult(task_type=task, task_name=task_name, dataset_type=dataset_type, dataset_name=dataset_name,
                   dataset_split=split, metric_type=metric, metric_name=metric_name, metric_value=values[key],
                   source_name=source, source_url=RESULTS_SOURCE_URL)
        for key, task, task_name, dataset_type, dataset_name, split, metric, metric_name in _RESULT_ROWS
    ]


def training_eval_results(metrics: dict[str, Any], dataset: str, split: str | None = None, step: int | None = None,
                          prefixes: Iterable[str] = ("eval/", "eval_ema/")) -> list[EvalResult]:
    """Evaluation metrics of a training run (`eval/acc1`, `eval_ema/mean_per_class_recall`, ...) as `EvalResult`s:
    zero-shot classification on `dataset` (a Hub id or path), one per finite numeric metric; `step` (a periodic
    evaluation) goes into `metric_config` as `step-N`, the final evaluation has none."""
    results = []
    for name, value in metrics.items():
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        metric = name.removeprefix(prefix)
        results.append(EvalResult(
            task_type=PIPELINE_TAG, task_name="Zero-shot image classification",
            dataset_type=dataset, dataset_name=dataset + (f" ({split})" if split else ""), dataset_split=split,
            metric_type=metric if prefix == "eval/" else f"{prefix.rstrip('/')}_{metric}",
            metric_name=name + (f" at step {step}" if step is not None else " (final)"),
            metric_value=float(value), metric_config=f"step-{step}" if step is not None else None,
        ))
    return results


def usage_snippet(repo_id: str, subfolder: str | None = None) -> str:
    """A snippet that runs as written once `photo.jpg` exists (tests execute it against a local folder)."""
    extra = f', subfolder="{subfolder}"' if subfolder else ""
    return f"""```python
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, pipeline

model = AutoModel.from_pretrained("{repo_id}"{extra}, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("{repo_id}"{extra}, trust_remote_code=True)
image = Image.open("photo.jpg").convert("RGB")
labels = ["a photo of a cat", "a photo of a dog"]
inputs = processor(text=labels, images=[image], return_tensors="pt")
with torch.no_grad():
    probs = model(**inputs).logits_per_image.softmax(dim=-1)
print(dict(zip(labels, probs[0].tolist())))

classifier = pipeline("zero-shot-image-classification", model="{repo_id}", trust_remote_code=True)
print(classifier(image, candidate_labels=["cat", "dog"]))
```"""


def build_model_card(
    variant: str,
    *,
    repo_id: str | None = None,
    source: str | None = None,
    source_repo: str | None = None,
    published_row: str | None = None,
    license_family: str | None = None,
    eval_results: list[EvalResult] | None = None,
    description: str | None = None,
    extra_sections: str = "",
    reparameterized: bool = False,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
) -> ModelCard:
    """A `ModelCard` for a MobileCLIP folder.

    Converted official weights: pass `source` (apple / open_clip / timm) and `source_repo`; the published results of
    `published_row` (default: the variant's row) go into the model-index, the license is the source family's.
    Trained models: pass `eval_results` (e.g. :func:`training_eval_results`) and a `description`; no published
    results and, unless `license_family` is given, no license.
    """
    variant = variant.lower()
    fam = family(variant)
    official = source is not None
    row = published_row or (DEFAULT_ROWS.get(variant) if official else None)
    results = list(eval_results or [])
    if row is not None:
        results = published_eval_results(row) + results
    license_fields = LICENSES[license_family or fam] if (official or license_family) else {}
    name = repo_id.split("/")[-1] if repo_id else variant
    card_data = ModelCardData(
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        tags=["mobileclip", "clip", "zero-shot-image-classification", "custom_code", fam, *(tags or [])],
        base_model=base_model or (source_repo if official and source_repo else None),
        datasets=datasets,
        model_name=name if results else None,
        eval_results=results or None,
        **license_fields,
    )
    load_id = repo_id or "PATH_OR_REPO_ID"
    papers = ["mobileclip"] + (["mobileclip2"] if fam == "mobileclip2" else [])
    fused = ("\n**Reparameterized** (fused) inference form: train-time branches folded into single convolutions; "
             "same outputs in eval mode, fewer layers. Use the parent folder to fine-tune.\n"
             if reparameterized else "")
    if description is None:
        what = f"`{row}`" if row else f"`{variant}`"
        origin = f" converted from `{source_repo}` ({source} format)" if source_repo else (
            f" converted from a {source} checkpoint" if source else "")
        description = (f"{what} image-text model{origin} into a Hugging Face `transformers` folder with remote code "
                       f"(`trust_remote_code=True`): `MobileCLIPModel` and `MobileCLIPProcessor`.")
    sections = [f"# {name}\n", description, fused]
    if row:
        values = PUBLISHED_RESULTS[row]
        sections.append(
            f"## Published zero-shot results\n\nFrom the authors (apple/ml-mobileclip README results table, row "
            f"`{row}`; paper arXiv {ARXIV[fam]}), also in this card's `model-index`:\n\n"
            "| ImageNet-1k top-1 | Avg. 38 tasks | Flickr30k T→I R@1 | COCO T→I R@1 |\n|---|---|---|---|\n"
            f"| {values['imagenet']} | {values['avg38']} | {values['flickr_t2i']} | {values['coco_t2i']} |\n"
            "\nThese are the published numbers of the source weights, not re-measured here.\n")
    if official and source in PARITY:
        sections.append(f"## Parity with the source implementation\n\n{PARITY[source]}\n")
    sections.append(f"## Usage\n\n{usage_snippet(load_id)}\n")
    if license_fields:
        sections.append(f"## License\n\nThe weights keep the license of their source "
                        f"(`{license_fields['license_name']}`, {license_fields['license_link']}).\n")
    if extra_sections:
        sections.append(extra_sections.strip() + "\n")
    citations = "\n\n".join(CITATIONS[p] for p in papers)
    sections.append(f"## Citation\n\n```bibtex\n{citations}\n```\n")
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(s for s in sections if s))


__all__ = [
    "CITATIONS",
    "DEFAULT_ROWS",
    "LICENSES",
    "PUBLISHED_RESULTS",
    "build_model_card",
    "published_eval_results",
    "training_eval_results",
    "usage_snippet",
]
