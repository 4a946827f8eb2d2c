"""Image-text retrieval recall@k, numerically identical to CLIP_benchmark.

Every caption is scored against every image (`normalize(text) @ normalize(image).T`); text->image recall@k counts
a caption as found when its image is in its top k, image->text recall@k counts an image as found when any of its
captions is in its top k (images may have several captions). Metrics come from the
`evaluation/metrics/retrieval_recall` module: `image_retrieval_recall@k`, `text_retrieval_recall@k` (CLIP_benchmark
names) and `mean_recall@1` (DataComp's main retrieval metric).

    python -m evaluation.retrieval --model DIR_OR_ID --dataset SPEC [--config NAME] [--split test] \
        [--image-column image] [--caption-column caption] [--recall-k 1 5 10] [--output results.json]

A caption cell holds one string or a list of strings (WebDataset mirrors: `txt`, one caption per line).
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
    IndexedRows, build_dataloader, encode_images, encode_texts, evaluation_parser, gather_ragged,
    load_metric, load_evaluated_model, make_accelerator, preprocess_images, progress, report_results,
    row_images, tokenize
)
from .datasets_io import (
    DatasetEvaluationConfig, EvalDataset, add_dataset_arguments, captions_of, load_eval_dataset_once,
    require_columns, require_image_column
)


@dataclass
class RetrievalResult:
    """Metrics plus the gathered embeddings: images (I, D), captions (T, D), and each caption's image index."""

    metrics: dict
    image_embeddings: torch.Tensor
    text_embeddings: torch.Tensor
    image_of_text: torch.Tensor


class _RetrievalBatch:
    """Collates rows into pixel values plus the token ids of all their captions and each row's caption count."""

    def __init__(self, processor: Any, image_column: str, captions: Sequence[list[str]]):
        self.processor, self.image_column, self.captions = processor, image_column, captions

    def __call__(self, rows: list[tuple[int, dict]]) -> dict[str, torch.Tensor]:
        captions = [self.captions[index] for index, _ in rows]
        return {
            "pixel_values": preprocess_images(self.processor, row_images(rows, self.image_column)),
            # All captions of the batch in one text batch, as CLIP_benchmark encodes them.
            "input_ids": tokenize(self.processor, [c for row_captions in captions for c in row_captions]),
            "caption_counts": torch.tensor([len(c) for c in captions]),
        }


def read_captions(loaded: EvalDataset, column: str) -> list[list[str]]:
    """The captions of every row, validated (each image needs at least one non-empty caption)."""
    split_lines = loaded.wds is not None  # CLIP_benchmark mirrors store one caption per line of `txt`
    return [captions_of(cell, row, column, split_lines) for row, cell in enumerate(loaded.dataset[column])]


@torch.no_grad()
def embed_pairs(
    model: torch.nn.Module,
    processor: Any,
    dataset: datasets.Dataset,
    image_column: str,
    captions: Sequence[list[str]],
    accelerator: Accelerator,
    batch_size: int = 64,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image embeddings, caption embeddings, image index of each caption), gathered from all processes."""
    loader = build_dataloader(
        IndexedRows(dataset, [image_column]), _RetrievalBatch(processor, image_column, captions), batch_size,
        num_workers, accelerator,
    )
    image_embeddings, text_embeddings, counts = [], [], []
    for batch in progress(loader, accelerator, "image-caption pairs"):
        images = accelerator.gather_for_metrics(encode_images(model, batch["pixel_values"]))
        texts, batch_counts = gather_ragged(accelerator, encode_texts(model, batch["input_ids"]), batch["caption_counts"])
        image_embeddings.append(images.cpu())
        text_embeddings.append(texts.cpu())
        counts.append(batch_counts.cpu())
    counts = torch.cat(counts)
    image_of_text = torch.repeat_interleave(torch.arange(len(counts)), counts)
    return torch.cat(image_embeddings), torch.cat(text_embeddings), image_of_text


def prepare_retrieval(
    loaded: EvalDataset, image_column: str | None = None, caption_column: str | None = None
) -> tuple[str, list[list[str]]]:
    """Checks the columns and captions (before any model is loaded); returns (image column, captions per row)."""
    image_column = image_column or loaded.default_columns.get("image", "image")
    caption_column = caption_column or loaded.default_columns.get("caption", "caption")
    require_image_column(loaded, image_column)
    require_columns(loaded, caption=caption_column)
    return image_column, read_captions(loaded, caption_column)


def evaluate_retrieval(model: torch.nn.Module, processor: Any, loaded: EvalDataset, accelerator: Accelerator,
                       image_column: str | None = None, caption_column: str | None = None,
                       recall_k: Sequence[int] = (1, 5, 10), batch_size: int = 64, num_workers: int = 0,
                       prepared: tuple[str, list[list[str]]] | None = None) -> RetrievalResult:
    """Runs retrieval on a loaded dataset; metrics are computed by the `retrieval_recall` module."""
    image_column, captions = prepared or prepare_retrieval(loaded, image_column, caption_column)
    images, texts, image_of_text = embed_pairs(
        model, processor, loaded.dataset, image_column, captions, accelerator, batch_size, num_workers
    )
    metrics = load_metric("retrieval_recall", accelerator=accelerator).compute(
        predictions=(texts @ images.t()).numpy(), references=image_of_text.numpy(), k_values=list(recall_k)
    )
    return RetrievalResult(metrics, images, texts, image_of_text)


@dataclass(kw_only=True)
class RetrievalConfig(DatasetEvaluationConfig):
    """One field per command-line option, with the same defaults."""

    caption_column: str | None = None
    recall_k: list[int] = field(default_factory=lambda: [1, 5, 10])


def retrieval_evaluation(settings: RetrievalConfig) -> dict:
    """Evaluate `settings.model` on `settings.dataset`, print (and with `output` write) the metrics; return them."""
    accelerator = make_accelerator(settings.cpu)
    loaded = load_eval_dataset_once(accelerator, settings.dataset, settings.split, settings.config)
    prepared = prepare_retrieval(loaded, settings.image_column, settings.caption_column)
    model, processor = load_evaluated_model(settings.model, accelerator, settings.trust_remote_code)
    result = evaluate_retrieval(
        model, processor, loaded, accelerator, recall_k=settings.recall_k, batch_size=settings.batch_size,
        num_workers=settings.num_workers, prepared=prepared,
    )
    headline = (f"Retrieval on {settings.dataset} ({len(result.image_embeddings)} images, "
                f"{len(result.text_embeddings)} captions):")
    report_results(accelerator, model, headline, result.metrics, "zeroshot_retrieval", model_id=settings.model,
                   dataset=settings.dataset, output=settings.output)
    return result.metrics


def parse_args(argv: list[str] | None = None) -> RetrievalConfig:
    parser = evaluation_parser(__doc__)
    add_dataset_arguments(parser)
    parser.add_argument("--image-column", default=None, help="default 'image' (WebDataset mirrors: webp/png/jpg)")
    parser.add_argument("--caption-column", default=None, help="default 'caption' (WebDataset mirrors: txt)")
    parser.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--output", default=None, help="write the result JSON (CLIP_benchmark shape) here")
    args = parser.parse_args(argv)
    bad = [k for k in args.recall_k if k < 1]
    if bad:  # recall@0 is 0 by definition and would be reported as a result
        parser.error(f"--recall-k takes cut-offs >= 1 (the number of top-ranked items searched), got {bad}; "
                     "e.g. --recall-k 1 5 10.")
    return RetrievalConfig(**vars(args))


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point; returns the metrics."""
    return retrieval_evaluation(parse_args(argv))


if __name__ == "__main__":
    run_main(main)
