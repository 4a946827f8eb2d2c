"""Reinforce an image-text dataset: synthetic captions, recorded augmentations and teacher-ensemble embeddings.

    python -m dataset_scripts.reinforce --source SRC --output DIR --teachers SPEC[,SPEC...] --captioner SPEC \
        --num-augmentations N --num-synthetic-captions K [--split S] [--image-column C] [--caption-column C] \
        [--batch-size B] [--shard-size R] [--dtype float16|bfloat16|float32] [--seed S] [--push-to-hub REPO_ID]

From Python: `reinforce(ReinforceConfig(source=..., output=..., teachers=..., ...))`, the same settings by name.

Runs under `accelerate launch` on any number of GPUs and nodes. The source is cut into units (source files when
streaming, runs of `--shard-size` rows otherwise); each process takes every world_size-th unit, and each unit is
written as Parquet parts of at most `--shard-size` source rows, atomically, with a small state file per part. A
rerun skips finished parts and resumes inside unfinished units, so an interrupted run ends with the same dataset
as an uninterrupted one. Bad samples (undecodable images, empty captions) are skipped and listed in
`reinforce_report.json`. Any other error in one process ends every process with that error (their finished parts
are kept for the rerun); the main process writes the report and the card once all have finished. CPU launches
need ACCELERATE_USE_CPU=true (else each process would run alone).

Decoding and augmentation run in DataLoader workers (`sample_stream`, which also reads the captions of a
`column:NAME` captioner); the main process runs the captioner and the teachers (`reinforce_compute`: batched, under
bf16 autocast by default) and hands finished parts to a writer thread (`run_state.write_part`). This module is the
command line and the order of those steps.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import datasets
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from tqdm.auto import tqdm

from modeling_mobileclip.cli import run_main

from .augmentation import AugmentationConfig
from .captioners import check_captioner_spec, column_captioner_name, load_captioner, resolve_num_synthetic_captions
from .dataset_specs import split_name
from .dr_format import ReinforcementMetadata, TeacherInfo
from .hub_push import push_reinforced_dataset
from .ownership import check_written_uids, claim_output
from .reinforce_compute import Reinforcer
from .reinforce_config import DTYPE_NAMES, ReinforceConfig
from .run_state import (STATE_DIR, failure_exchange_group, has_part_states, raise_on_any_failure, read_part_states,
                        unit_progress, write_part, write_report, write_split_card)
from .sample_stream import ReinforcementStream, StreamSettings, prepare_source
from .teachers import load_teachers, parse_model_spec


DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def check_config(config: ReinforceConfig) -> tuple[list[str], str | None, int]:
    """Fail before anything is loaded on a request that cannot run; return (teacher specs, the `column:NAME`
    captioner's column or None, K synthetic captions per image)."""
    teacher_specs = [s for s in (x.strip() for x in config.teachers.split(",")) if s]
    if not teacher_specs:
        raise ValueError("--teachers needs at least one spec.")
    for spec in teacher_specs:
        parse_model_spec(spec)
    check_captioner_spec(config.captioner)
    syn_column = column_captioner_name(config.captioner)
    num_captions = resolve_num_synthetic_captions(config.captioner, config.num_synthetic_captions)
    if config.num_augmentations < 1 or config.shard_size < 1 or config.batch_size < 1:
        raise ValueError("--num-augmentations, --shard-size and --batch-size must be >= 1.")
    if config.dtype not in DTYPES:  # the command line's choices; a config built in Python skips them
        raise ValueError(f"--dtype must be one of {', '.join(DTYPE_NAMES)}, got {config.dtype!r}.")
    if config.streaming and config.drop_duplicate_uids:  # a stream's uids are not known before the run
        raise ValueError("--drop-duplicate-uids needs the whole uid column up front; drop --streaming for it.")
    return teacher_specs, syn_column, num_captions


def process_state():
    """Accelerate's view of this process, refusing a multi-process launch that would run as N lone processes."""
    # PartialState reads ACCELERATE_USE_CPU only through AcceleratorState: without `cpu=` a CPU launch of N
    # processes would run N independent single-process jobs, each reinforcing every unit.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes == 1:
        raise RuntimeError(f"{launched} processes were launched but Accelerate runs each alone (no GPU per "
                           "process?); on CPUs launch with ACCELERATE_USE_CPU=true.")
    return state


def sample_loader(stream: ReinforcementStream, num_workers: int | None, device: torch.device):
    """Decoding and augmentation in DataLoader workers (default: the cores of this process, less one)."""
    if num_workers is None:  # leave one core per process for the main loop and the Parquet writer
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        num_workers = min(8, max(0, (os.cpu_count() or 1) // local_processes - 1))
    return torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=num_workers, pin_memory=device.type == "cuda",
        prefetch_factor=4 if num_workers else None, persistent_workers=False,
    )


@contextlib.contextmanager
def datasets_progress_bars_disabled():
    """Silence the per-shard "Generating train split" bars of the builder during a run."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def reinforce_parts(loader, reinforcer: Reinforcer, write: Callable[..., None], bar) -> None:
    """Compute every batch of `loader` and write each part once its last batch is in:
    `write(unit, part, examples, skipped, rows, unit_finished)`, on a writer thread.

    One write in flight while the next part is computed: bounds memory, and a failed write stops the run before any
    later part is written (as a crash would).
    """
    buffers: dict[tuple[int, int], dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=1) as writer, datasets_progress_bars_disabled():
        in_flight = None
        for batch in loader:
            key = (batch["unit"], batch["part"])
            buffer = buffers.setdefault(key, {"examples": [], "skipped": [], "batches": 0})
            buffer["examples"].extend(reinforcer.examples(batch, buffer["batches"]))
            buffer["skipped"].extend(batch["skipped"])
            buffer["batches"] += 1
            bar.update(len(batch["uids"]) + len(batch["skipped"]))
            bar.set_postfix(teacher=f"{reinforcer.timing.as_dict()['teacher_share']:.0%}", refresh=False)
            if batch["last_in_part"]:
                done = buffers.pop(key)
                if in_flight is not None:
                    in_flight.result()
                in_flight = writer.submit(write, *key, done["examples"], done["skipped"], batch["rows_in_part"],
                                          batch["unit_finished"])
        if in_flight is not None:
            in_flight.result()


def reinforce(config: ReinforceConfig) -> dict[str, Any]:
    """Run the pipeline described by `config`; return the report entry of the split."""
    teacher_specs, syn_column, num_captions = check_config(config)
    for model_config in config.open_clip_model_config or []:
        import open_clip  # optional dependency (the `reinforce` extra): only needed with open_clip teachers

        open_clip.add_model_config(model_config)
    state = process_state()
    failure_group = failure_exchange_group(state.num_processes)
    output, split = Path(config.output), split_name(config.split)
    source = prepare_source(config, syn_column)

    dtype = DTYPES[config.dtype]
    teachers = load_teachers(teacher_specs, state.device, dtype)
    captioner = load_captioner(config.captioner, state.device, dtype) if num_captions and not syn_column else None
    augmentation = AugmentationConfig(size=config.image_size, rand_augment=not config.no_rand_augment)
    metadata = ReinforcementMetadata(
        teachers=[TeacherInfo(t.spec, t.dim, t.logit_scale) for t in teachers],
        num_augmentations=config.num_augmentations, num_synthetic_captions=num_captions, augmentation=augmentation,
        captioner=config.captioner, seed=config.seed, source=f"{config.source} ({config.split})",
        shard_size=config.shard_size,
    )
    claim_output(output, output / STATE_DIR, split, source.identity, metadata, config.overwrite, state.is_main_process,
                 has_part_states=has_part_states(output, split), barrier=state.wait_for_everyone)

    progress = unit_progress(read_part_states(output, split))
    settings = StreamSettings(
        num_units=source.num_units, units=list(range(state.process_index, source.num_units, state.num_processes)),
        progress=progress, shard_size=config.shard_size, batch_size=config.batch_size,
        num_augmentations=config.num_augmentations, augmentation=augmentation, seed=config.seed, split=split,
        image_column=config.image_column, caption_column=config.caption_column, uid_column=source.uid_column,
        syn_column=syn_column, num_synthetic_captions=num_captions,
    )
    stream = ReinforcementStream(source.rows, settings, captioner.prepare_image if captioner else None)
    loader = sample_loader(stream, config.num_workers, state.device)
    reinforcer = Reinforcer(teachers, captioner, num_captions, config.max_teacher_batch, config.seed, state.device)
    bar = tqdm(desc=f"reinforce {split} [rank {state.process_index}]", unit="img",
               total=source.total_rows if state.num_processes == 1 else None,
               initial=sum(p.rows_done for p in progress.values()) if state.num_processes == 1 else 0,
               disable=not state.is_local_main_process or config.no_progress)
    error = None
    try:
        reinforce_parts(loader, reinforcer, functools.partial(write_part, output, split, metadata), bar)
    except Exception as failure:  # a DataLoader worker, a teacher or the writer: every process must learn of it
        error = failure
    finally:
        bar.close()
    raise_on_any_failure(error, failure_group, state.process_index, state.num_processes)
    timing = reinforcer.timing.as_dict()

    # All processes' parts are written now (the exchange above waited for them): the main process alone writes the
    # report and the card, the others only compute the entry (two writers would race on the same files).
    states = read_part_states(output, split)
    extra = {"timing": timing} if state.is_main_process else {}
    if source.dropped_duplicates is not None:
        extra["dropped_duplicate_uids"] = source.dropped_duplicates
    entry = write_report(output, split, states, source.num_units, extra, write=state.is_main_process)
    if entry["complete"] and state.is_main_process:
        if config.streaming:  # no up-front uid check when streaming: check what was written before the card
            check_written_uids(output, split)
        write_split_card(output, split, metadata, entry["written"])
    if config.push_to_hub and state.is_main_process:
        push_reinforced_dataset(output, config.push_to_hub)
    return {**entry, "timing": timing}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dataset_scripts.reinforce",
        description="Reinforce an image-text dataset (DataCompDR format): synthetic captions, recorded "
                    "augmentations and teacher-ensemble embeddings, written as Parquet shards plus a card.",
    )
    parser.add_argument("--source", required=True,
                        help="Parquet file/glob, WebDataset .tar file/glob, dataset folder or Hub dataset id.")
    parser.add_argument("--output", required=True, help="Output folder (created; reruns resume).")
    parser.add_argument("--teachers", required=True,
                        help="Comma-separated teacher specs: open_clip:ARCH:PRETRAINED, open_clip:hf-hub:REPO, "
                             "hf:PATH_OR_ID.")
    parser.add_argument("--captioner", default="none",
                        help="open_clip:COCA_ARCH:TAG, hf:PATH_OR_ID (image-to-text), column:NAME (the source's "
                             "own extra captions in column NAME) or none.")
    parser.add_argument("--num-augmentations", type=int, default=10, help="N stored augmentations per image.")
    parser.add_argument("--num-synthetic-captions", type=int, default=None,
                        help="K synthetic captions per image (default 5 with a model captioner, 0 without; "
                             "required with column:NAME, where rows with fewer captions store fewer).")
    parser.add_argument("--split", default="train", help="Source split; slicing such as 'train[:1000]' works "
                                                         "without --streaming.")
    parser.add_argument("--source-config", default=None, help="Source dataset configuration name.")
    parser.add_argument("--streaming", action="store_true", help="Stream the source (units = source files).")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--caption-column", default="caption",
                        help="String column, or list-of-strings column (its first non-empty entry is used).")
    parser.add_argument("--uid-column", default=None,
                        help="Column with sample ids (default: uid/__key__/key/id if present, else generated).")
    parser.add_argument("--batch-size", type=int, default=32, help="Images per step (each gives N views).")
    parser.add_argument("--max-teacher-batch", type=int, default=1024, help="Largest teacher forward batch.")
    parser.add_argument("--shard-size", type=int, default=10000, help="Source rows per output Parquet part.")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="bfloat16",
                        help="Autocast dtype of teachers and captioner (embeddings are stored as float16).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=224, help="Size of the recorded views (teachers' size).")
    parser.add_argument("--no-rand-augment", action="store_true", help="Record RandomResizedCrop only.")
    parser.add_argument("--num-workers", type=int, default=None, help="Decoding/augmentation workers per process.")
    parser.add_argument("--open-clip-model-config", action="append",
                        help="Extra open_clip model config JSON file or folder (repeatable).")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="Upload the result when complete.")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an --output folder holding another run or files this pipeline did not write "
                             "(what is removed is printed); a folder holding this same run still resumes.")
    parser.add_argument("--drop-duplicate-uids", action="store_true",
                        help="Keep only the first row of each duplicated uid (and list the others in the report) "
                             "instead of failing; not with --streaming.")
    return parser


def parse_config(argv: list[str] | None = None) -> ReinforceConfig:
    return ReinforceConfig(**vars(build_parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    entry = reinforce(parse_config(argv))
    summary = {k: v for k, v in entry.items() if k != "skipped_samples"}
    print(json.dumps(summary, indent=1))
    return entry


__all__ = ["DTYPES", "ReinforceConfig", "build_parser", "check_config", "main", "parse_config", "reinforce",
           "reinforce_parts"]


if __name__ == "__main__":
    run_main(main)
