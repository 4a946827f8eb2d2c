"""Shared plumbing of the evaluation commands: model loading, sharded encoding, metrics and result files.

Every command encodes on all processes of an `accelerate launch` (each one a shard of the data, see
`accelerator.prepare`) and gathers the embeddings with `gather_for_metrics`, so the metric sees each example once
and in dataset order whatever the number of processes.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import evaluate
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from tqdm.auto import tqdm

from modeling_mobileclip import loading
from modeling_mobileclip.atomic import write_json_atomic


PACKAGE_DIR = Path(__file__).resolve().parent
DATA_DIR = PACKAGE_DIR / "data"
METRICS_DIR = PACKAGE_DIR / "metrics"


class EvaluationInputError(ValueError):
    """Input that cannot be evaluated: a missing column, class names of the wrong length, an empty split, ..."""




@dataclass(kw_only=True)
class EvaluationConfig:
    """The options of `evaluation_parser`, with its defaults: the part every evaluation command's settings share."""

    model: str
    """Saved model folder or Hub id (MobileCLIP, or a transformers CLIP-like model)."""
    batch_size: int = 64
    num_workers: int = 4
    cpu: bool = False
    trust_remote_code: bool = False


def evaluation_parser(description: str) -> argparse.ArgumentParser:
    """The argument parser of the zero-shot, retrieval and suite commands: `description` (the module docstring) as
    help, and the arguments they share."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="saved model folder or Hub id (MobileCLIP, or a transformers CLIP-like model)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch and process (default 64)")
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers per process (default 4)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even if an accelerator is available")
    add_trust_remote_code_argument(parser)
    return parser


def add_trust_remote_code_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a non-MobileCLIP --model whose config names custom code to run that code "
                             "(MobileCLIP folders and transformers' own models never need it)")


def make_accelerator(cpu: bool = False) -> Accelerator:
    """An Accelerator for inference (no mixed precision: the official evaluation runs in fp32)."""
    return Accelerator(cpu=cpu)


def load_evaluated_model(model_id: str, accelerator: Accelerator,
                             trust_remote_code: bool = False) -> tuple[torch.nn.Module, Any]:
    """The project's one loader (:func:`modeling_mobileclip.loading.load_model_and_processor`), fused for inference,
    on the accelerator's device, for a CLIP model with `encode_image` / `encode_text`."""
    # One process at a time fills the remote-code module cache: concurrent writers break imports (transformers#27421).
    with accelerator.main_process_first():
        model, processor = loading.load_model_and_processor(model_id, trust_remote_code, fuse=True)
    for method in ("encode_image", "encode_text"):
        if not callable(getattr(model, method, None)):
            raise EvaluationInputError(
                f"{model_id} loads as {type(model).__name__}, which has no {method}(); the evaluation needs a CLIP "
                "model with encode_image(pixel_values) and encode_text(input_ids)."
            )
    return model.to(accelerator.device), processor


def model_name(model: torch.nn.Module, fallback: str) -> str:
    """The variant name recorded in the model's config (e.g. `mobileclip-s2`), else `fallback`."""
    return getattr(getattr(model, "config", None), "variant", None) or fallback


def tokenize(processor: Any, texts: Sequence[str]) -> torch.Tensor:
    """Token ids of `texts` as the processor produces them (MobileCLIP: (N, 77), zero-padded like open_clip)."""
    return processor(text=list(texts), return_tensors="pt")["input_ids"]


def row_images(rows: Sequence[tuple[int, dict]], column: str) -> list[Any]:
    """The images of `(row index, row)` pairs; a row without an image is an error naming the row."""
    images = []
    for index, row in rows:
        if row[column] is None:
            raise EvaluationInputError(f"Row {index}: column {column!r} has no image.")
        images.append(row[column])
    return images


def preprocess_images(processor: Any, images: Sequence[Any]) -> torch.Tensor:
    """Pixel values of PIL images, converted to RGB first as CLIP_benchmark's loaders do."""
    return processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]


def progress(iterable, accelerator: Accelerator, description: str, total: int | None = None):
    """A tqdm bar shown by the local main process only."""
    return tqdm(iterable, desc=description, total=total, disable=not accelerator.is_local_main_process, leave=False)


@torch.no_grad()
def encode_images(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings."""
    return F.normalize(model.encode_image(pixel_values), dim=-1)


@torch.no_grad()
def encode_texts(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """L2-normalised text embeddings."""
    return F.normalize(model.encode_text(input_ids), dim=-1)


def gather_ragged(accelerator: Accelerator, rows: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gathers a variable number of rows per example (e.g. the captions of each image) from every process.

    `rows` holds `counts[i]` consecutive rows for example i of this process's batch. The rows are padded to
    (batch, max count, ...) so that `gather_for_metrics` can drop the examples `even_batches` duplicated, then unpadded.
    """
    padded = rows.new_zeros((len(counts), int(counts.max()) if len(counts) else 0, *rows.shape[1:]))
    offsets = torch.cumsum(counts, 0) - counts
    for i, (offset, count) in enumerate(zip(offsets.tolist(), counts.tolist())):
        padded[i, :count] = rows[offset : offset + count]
    padded = accelerator.pad_across_processes(padded, dim=1)
    padded, counts = accelerator.gather_for_metrics((padded, counts))
    keep = torch.arange(padded.shape[1], device=counts.device)[None, :] < counts[:, None]
    return padded[keep], counts


class IndexedRows(torch.utils.data.Dataset):
    """Rows of a few columns of a `datasets.Dataset`, with their row index (for error messages and labels)."""

    def __init__(self, dataset, columns: Sequence[str]):
        self.dataset = dataset.select_columns(list(dict.fromkeys(columns)))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, dict]:
        return index, self.dataset[index]


def load_metric(name: str, config_name: str | None = None, accelerator: Accelerator | None = None):
    """Loads one of our `evaluate` modules from `evaluation/metrics/<name>` (offline, by path). With `accelerator`,
    the processes load it one after the other: `evaluate`'s module cache takes one writer at a time."""
    if accelerator is None:
        return evaluate.load(str(METRICS_DIR / name), config_name, keep_in_memory=True)
    with accelerator.main_process_first():
        return evaluate.load(str(METRICS_DIR / name), config_name, keep_in_memory=True)


def results_record(dataset: str, model: str, pretrained: str, task: str, metrics: dict, **extra) -> dict:
    """A result in CLIP_benchmark's output shape (`clip_benchmark eval --output`; readable by `clip_benchmark build`)."""
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "metrics": metrics,
            "language": "en", **extra}


def write_json(path: str | Path, record: dict) -> Path:
    """Writes `record` atomically (a crash never leaves a half-written result that a resumed run would trust)."""
    write_json_atomic(path, record, indent=2)
    return Path(path)


def format_metrics(metrics: dict) -> str:
    """One `name: value` line per scalar metric, as percentages where the value is a fraction."""
    lines = []
    for name, value in metrics.items():
        if isinstance(value, float):
            lines.append(f"  {name}: {'nan' if math.isnan(value) else f'{100 * value:.2f}'}")
    return "\n".join(lines)


def report_results(accelerator: Accelerator, model: torch.nn.Module, headline: str, metrics: dict, task: str, *,
                   model_id: str, dataset: str, output: str | None) -> None:
    """How an evaluation command ends: the main process prints `headline` and the metrics and, with `output`,
    writes them there as a CLIP_benchmark record of `task` on `dataset` for the model `model_id`; then every
    process waits, so none exits before the file is written."""
    if accelerator.is_main_process:
        print(headline)
        print(format_metrics(metrics))
        if output:
            record = results_record(dataset, model_name(model, model_id), model_id, task, metrics)
            print(f"Wrote {write_json(output, record)}")
    accelerator.wait_for_everyone()


def build_dataloader(dataset, collate: Callable, batch_size: int, num_workers: int, accelerator: Accelerator):
    """A sharded, ordered DataLoader over a map-style dataset (`gather_for_metrics` restores the order).

    Sharded with accelerate's `prepare_data_loader` rather than `accelerator.prepare`, which would also register it
    for checkpointing: evaluation loaders are transient, and an evaluation inside a training run must leave the
    run's accelerator as it found it.
    """
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate
    )
    return prepare_data_loader(loader, accelerator.device, num_processes=accelerator.num_processes,
                               process_index=accelerator.process_index, put_on_device=True,
                               even_batches=accelerator.even_batches)
