"""Zero-shot image classification, numerically identical to CLIP_benchmark.

Each class embedding is the mean of the L2-normalised embeddings of its prompts (every template filled with the
class name), renormalised; an image's logits are `100 * normalize(image embedding) @ class embeddings`. Reported:
`acc1`, `acc5`, `mean_per_class_recall` (multi-label datasets: `mean_average_precision`), from the
`evaluation/metrics/zeroshot_accuracy` module.

    python -m evaluation.zero_shot --model DIR_OR_ID --dataset SPEC [--config NAME] [--split test] \
        [--classnames FILE|imagenet1k [--classnames-key KEY]] [--templates FILE] \
        [--image-column image] [--label-column label] [--batch-size 64] [--output results.json]

SPEC is anything `datasets.load_dataset` reads (local folder, data file, Hub id) or a CLIP_benchmark WebDataset
mirror (`clip-benchmark/wds_<task>` layout), whose class names and templates are used unless overridden. Without
`--templates` the 80 OpenAI ImageNet templates are used. Run on several processes with `accelerate launch -m
evaluation.zero_shot ...`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Sequence

import datasets
import torch
from accelerate import Accelerator

from modeling_mobileclip.cli import run_main

from .common import (
    EvaluationInputError, IndexedRows, build_dataloader, encode_images, encode_texts,
    evaluation_parser, load_metric, load_evaluated_model, make_accelerator, preprocess_images, progress,
    report_results, row_images, tokenize
)
from .datasets_io import (
    DatasetEvaluationConfig, EvalDataset, add_dataset_arguments, check_templates, class_prompts, label_indices,
    load_eval_dataset_once, read_classnames, read_templates, require_columns, require_image_column
)


@dataclass
class ZeroShotResult:
    """Metrics plus the gathered logits, targets and extra columns (all examples, dataset order)."""

    metrics: dict
    logits: torch.Tensor
    targets: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class _PromptTokens:
    """Collates one class index into the token ids of that class's prompts."""

    def __init__(self, processor: Any, prompts: list[list[str]]):
        self.processor, self.prompts = processor, prompts

    def __call__(self, indices: list[int]) -> torch.Tensor:
        return tokenize(self.processor, self.prompts[indices[0]])


@torch.no_grad()
def build_classifier(
    model: torch.nn.Module,
    processor: Any,
    classnames: Sequence[str],
    templates: list[str] | dict[str, list[str]],
    accelerator: Accelerator,
) -> torch.Tensor:
    """(embed_dim, num_classes) zero-shot weights; classes are sharded over processes, one class per text batch
    (as CLIP_benchmark encodes them, so the numbers match it exactly)."""
    prompts = class_prompts(classnames, templates)
    loader = build_dataloader(range(len(prompts)), _PromptTokens(processor, prompts), 1, 0, accelerator)
    class_embeddings = []
    for input_ids in progress(loader, accelerator, "class embeddings"):
        embedding = encode_texts(model, input_ids).mean(dim=0)
        embedding = embedding / embedding.norm()
        class_embeddings.append(accelerator.gather_for_metrics(embedding[None]))
    return torch.cat(class_embeddings).t()


class _ClassificationBatch:
    """Collates rows into pixel values, labels (looked up by row) and float tensors of extra columns."""

    def __init__(self, processor: Any, image_column: str, labels: Sequence, extra_columns: Sequence[str]):
        self.processor, self.image_column, self.labels, self.extra_columns = processor, image_column, labels, extra_columns

    def __call__(self, rows: list[tuple[int, dict]]) -> dict[str, torch.Tensor]:
        batch = {
            "pixel_values": preprocess_images(self.processor, row_images(rows, self.image_column)),
            "labels": torch.tensor([self.labels[index] for index, _ in rows]),
        }
        for column in self.extra_columns:
            batch[column] = torch.tensor([row[column] for _, row in rows], dtype=torch.float64)
        return batch


@torch.no_grad()
def classify(model: torch.nn.Module, processor: Any, classifier: torch.Tensor, task: ZeroShotTask,
             accelerator: Accelerator, batch_size: int = 64, num_workers: int = 0,
             extra_columns: Sequence[str] = ()) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Logits of every image of `task` against `classifier`, with labels and extra columns, gathered from all
    processes."""
    rows = IndexedRows(task.loaded.dataset, [task.image_column, *extra_columns])
    collate = _ClassificationBatch(processor, task.image_column, task.labels, extra_columns)
    loader = build_dataloader(rows, collate, batch_size, num_workers, accelerator)
    logits, targets, extras = [], [], {column: [] for column in extra_columns}
    for batch in progress(loader, accelerator, "images"):
        # Same operation order as CLIP_benchmark (scale, then project): identical floats, identical rankings.
        batch_logits = (100.0 * encode_images(model, batch["pixel_values"])) @ classifier
        gathered = accelerator.gather_for_metrics((batch_logits, batch["labels"], *[batch[c] for c in extra_columns]))
        logits.append(gathered[0].float().cpu())
        targets.append(gathered[1].cpu())
        for column, values in zip(extra_columns, gathered[2:]):
            extras[column].append(values.cpu())
    return torch.cat(logits), torch.cat(targets), {c: torch.cat(v) for c, v in extras.items()}


def resolve_classes(
    loaded: EvalDataset,
    label_column: str,
    classnames: list[str] | dict[str, str] | None,
    multilabel: bool = False,
) -> tuple[list, list[str]]:
    """(labels per row, class names): from explicit class names, the WebDataset mirror's, or a `ClassLabel`."""
    if classnames is None and loaded.wds is not None:
        classnames = loaded.wds.classnames
    feature = loaded.dataset.features[label_column]
    if classnames is None and isinstance(feature, datasets.ClassLabel):
        classnames = feature.names
    if classnames is None:
        raise EvaluationInputError(
            f"{loaded.name} declares no class names for column {label_column!r}: pass --classnames (a JSON list, "
            "a {label: name} object or 'imagenet1k')."
        )
    if not multilabel:
        return label_indices(loaded, label_column, classnames)
    names = list(classnames.values()) if isinstance(classnames, dict) else list(classnames)
    labels = loaded.dataset[label_column]
    for row, vector in enumerate(labels):
        if len(vector) != len(names):
            raise EvaluationInputError(
                f"Row {row} of {loaded.name}: multi-label vector in {label_column!r} has {len(vector)} entries but "
                f"there are {len(names)} class names."
            )
    return [list(v) for v in labels], names


@dataclass
class ZeroShotTask:
    """A validated zero-shot task: which columns to read, each row's label, the class names and templates."""

    loaded: EvalDataset
    image_column: str
    labels: list
    classnames: list[str]
    templates: list[str] | dict[str, list[str]]
    multilabel: bool = False


def prepare_zero_shot(
    loaded: EvalDataset,
    image_column: str | None = None,
    label_column: str | None = None,
    classnames: list[str] | dict[str, str] | None = None,
    templates: list[str] | dict[str, list[str]] | None = None,
    extra_columns: Sequence[str] = (),
) -> ZeroShotTask:
    """Checks columns, labels, class names and templates (before any model is loaded) and resolves defaults:
    WebDataset mirrors' own columns, class names and templates, else `image`/`label`, a `ClassLabel`'s names and
    the 80 OpenAI templates."""
    image_column = image_column or loaded.default_columns.get("image", "image")
    label_column = label_column or loaded.default_columns.get("label", "label")
    require_image_column(loaded, image_column)
    require_columns(loaded, label=label_column)
    for column in extra_columns:
        require_columns(loaded, metadata=column)
    multilabel = loaded.wds is not None and loaded.wds.dataset_type == "multilabel"
    labels, names = resolve_classes(loaded, label_column, classnames, multilabel)
    if templates is None:
        templates = loaded.wds.templates if loaded.wds is not None and loaded.wds.templates else read_templates(None)
    templates = check_templates(templates, f"the templates of {loaded.name}")
    class_prompts(names, templates)  # CuPL-style prompts must cover every class
    return ZeroShotTask(loaded, image_column, labels, names, templates, multilabel)


def run_zero_shot(
    model: torch.nn.Module,
    processor: Any,
    task: ZeroShotTask,
    accelerator: Accelerator,
    batch_size: int = 64,
    num_workers: int = 0,
    extra_columns: Sequence[str] = (),
) -> ZeroShotResult:
    """Classifies every image of a prepared task; metrics come from the `zeroshot_accuracy` module."""
    classifier = build_classifier(model, processor, task.classnames, task.templates, accelerator)
    logits, targets, extras = classify(model, processor, classifier, task, accelerator, batch_size, num_workers,
                                       extra_columns)
    metric = load_metric("zeroshot_accuracy", "multilabel" if task.multilabel else None, accelerator)
    metrics = metric.compute(predictions=logits.numpy(), references=targets.numpy())
    return ZeroShotResult(metrics, logits, targets, extras)


def evaluate_zero_shot(
    model: torch.nn.Module,
    processor: Any,
    loaded: EvalDataset,
    accelerator: Accelerator,
    image_column: str | None = None,
    label_column: str | None = None,
    classnames: list[str] | dict[str, str] | None = None,
    templates: list[str] | dict[str, list[str]] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    extra_columns: Sequence[str] = (),
) -> ZeroShotResult:
    """`prepare_zero_shot` then `run_zero_shot`."""
    task = prepare_zero_shot(loaded, image_column, label_column, classnames, templates, extra_columns)
    return run_zero_shot(model, processor, task, accelerator, batch_size, num_workers, extra_columns)


@dataclass(kw_only=True)
class ZeroShotConfig(DatasetEvaluationConfig):
    """One field per command-line option, with the same defaults."""

    classnames: str | None = None
    classnames_key: str | None = None
    templates: str | None = None
    label_column: str | None = None


def zero_shot_evaluation(settings: ZeroShotConfig) -> dict:
    """Evaluate `settings.model` on `settings.dataset`, print (and with `output` write) the metrics; return them."""
    accelerator = make_accelerator(settings.cpu)
    classnames = read_classnames(settings.classnames, settings.classnames_key) if settings.classnames else None
    templates = read_templates(settings.templates) if settings.templates else None
    loaded = load_eval_dataset_once(accelerator, settings.dataset, settings.split, settings.config)
    task = prepare_zero_shot(loaded, settings.image_column, settings.label_column, classnames, templates)
    model, processor = load_evaluated_model(settings.model, accelerator, settings.trust_remote_code)
    result = run_zero_shot(model, processor, task, accelerator, settings.batch_size, settings.num_workers)
    headline = (f"Zero-shot classification of {settings.dataset} ({len(result.targets)} images, "
                f"{result.logits.shape[1]} classes):")
    report_results(accelerator, model, headline, result.metrics, "zeroshot_classification", model_id=settings.model,
                   dataset=settings.dataset, output=settings.output)
    return result.metrics


def parse_args(argv: list[str] | None = None) -> ZeroShotConfig:
    parser = evaluation_parser(__doc__)
    add_dataset_arguments(parser)
    parser.add_argument("--classnames", default=None, help="JSON list / {label: name} object, .txt, or 'imagenet1k'")
    parser.add_argument("--classnames-key", default=None, help="member of the --classnames JSON object to use")
    parser.add_argument("--templates", default=None, help="JSON list of templates with {c} (default: 80 OpenAI)")
    parser.add_argument("--image-column", default=None, help="default 'image' (WebDataset mirrors: webp/png/jpg)")
    parser.add_argument("--label-column", default=None, help="default 'label' (WebDataset mirrors: cls)")
    parser.add_argument("--output", default=None, help="write the result JSON (CLIP_benchmark shape) here")
    return ZeroShotConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point; returns the metrics."""
    return zero_shot_evaluation(parse_args(argv))


if __name__ == "__main__":
    run_main(main)
