"""Reinforce an image-text dataset: synthetic captions, recorded augmentations and teacher-ensemble embeddings.

    python -m dataset_scripts.reinforce --source SRC --output DIR --teachers SPEC[,SPEC...] --captioner SPEC \
        --num-augmentations N --num-synthetic-captions K [--split S] [--image-column C] [--caption-column C] \
        [--batch-size B] [--shard-size R] [--dtype float16|bfloat16|float32] [--seed S] [--push-to-hub REPO_ID]

Runs under `accelerate launch` on any number of GPUs and nodes. The source is cut into units (source files when
streaming, runs of `--shard-size` rows otherwise); each process takes every world_size-th unit, and each unit is
written as Parquet parts of at most `--shard-size` source rows, atomically, with a small state file per part. A
rerun skips finished parts and resumes inside unfinished units, so an interrupted run ends with the same dataset
as an uninterrupted one. Bad samples (undecodable images, empty captions) are skipped and listed in
`reinforce_report.json`. Any other error in one process ends every process with that error (their finished parts
are kept for the rerun); the main process writes the report and the card once all have finished. CPU launches
need ACCELERATE_USE_CPU=true (else each process would run alone).

Decoding and augmentation run in DataLoader workers (which also read the captions of a `column:NAME` captioner);
the main process runs the captioner and the teachers (batched, under bf16 autocast by default) and hands finished
parts to a writer thread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import datasets
import numpy as np
import torch

from .augmentation import AugmentationConfig, apply_augmentation, decode_rgb, sample_augmentation, sample_seed
from .captioners import (check_captioner_spec, check_column_captioner, check_text_column, column_captioner_name,
                         column_captions, load_captioner, resolve_num_synthetic_captions)
from .dr_format import (
    ReinforcementMetadata,
    TeacherInfo,
    card_split_sizes,
    pack_text_embeddings,
    shard_filename,
    write_dataset_card,
    write_parquet_shard,
)
from .ownership import check_written_uids, claim_output, record_card, source_identity, without_duplicate_uids
from .run_state import (  # write_part looks write_json_atomic up here: tests patch it in this module
    STATE_DIR,
    UnitProgress,
    failure_exchange_group,
    part_state_path,
    raise_on_any_failure,
    read_part_states,
    state_dir,
    unit_progress,
    write_json_atomic,
    write_report,
)
from .teachers import load_teachers, parse_model_spec


DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
SKIP_UNDECODABLE = "undecodable_image"
SKIP_EMPTY_CAPTION = "empty_caption"


# ----------------------------------------------------------------------------------------------- source loading


def load_source(source: str, split: str, config_name: str | None = None, streaming: bool = False):
    """Open `source` with `datasets`: a Parquet file/glob, a WebDataset .tar file/glob, a folder or a Hub id."""
    builder = None
    if source.endswith(".parquet"):
        builder = "parquet"
    elif source.endswith(".tar"):
        builder = "webdataset"
    if builder:
        return datasets.load_dataset(builder, data_files={split.split("[")[0]: source}, split=split,
                                     streaming=streaming)
    return datasets.load_dataset(source, config_name, split=split, streaming=streaming)


def check_columns(features, image_column: str, caption_column: str, uid_column: str | None,
                  syn_column: str | None = None) -> None:
    """Fail before any model is loaded when a requested column is missing or has the wrong type."""
    available = sorted(features) if features is not None else []
    for flag, column in (("--image-column", image_column), ("--caption-column", caption_column),
                         ("--uid-column", uid_column)):
        if column is not None and column not in available:
            raise ValueError(f"Source has no column {column!r} ({flag}); available columns: {available}.")
    if not isinstance(features[image_column], datasets.Image):
        raise ValueError(f"Column {image_column!r} is {features[image_column]!r}, expected an Image feature.")
    check_text_column(features, caption_column, "--caption-column")
    if syn_column is not None:
        check_column_captioner(features, syn_column, caption_column)


def default_uid_column(features) -> str | None:
    for name in ("uid", "__key__", "key", "id"):
        if features is not None and name in features:
            return name
    return None


def caption_text(value: Any) -> str:
    """A ground-truth caption from a string or a list of strings (the first non-empty one)."""
    if isinstance(value, (list, tuple)):
        value = next((v for v in value if isinstance(v, str) and v.strip()), "")
    return value.strip() if isinstance(value, str) else ""


def image_bytes(value: Any) -> bytes:
    """The encoded bytes of an undecoded `Image` cell (`{"bytes", "path"}`), reading the file if needed."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            import fsspec

            with fsspec.open(value["path"], "rb") as file:  # local file or remote (hf://, s3://, ...) URL
                return file.read()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ValueError(f"no image bytes or path in {type(value).__name__}")


# ----------------------------------------------------------------------------------------------- work stream


@dataclass
class StreamSettings:
    num_units: int
    units: list[int]
    progress: dict[int, UnitProgress]
    shard_size: int
    batch_size: int
    num_augmentations: int
    augmentation: AugmentationConfig
    seed: int
    split: str
    image_column: str
    caption_column: str
    uid_column: str | None
    syn_column: str | None = None
    """`column:NAME` captioner: the column the synthetic captions come from (None: a model or no captioner)."""
    num_synthetic_captions: int = 0


class ReinforcementStream(torch.utils.data.IterableDataset):
    """Yields ready batches of decoded, augmented samples, tagged with their unit and part.

    Each DataLoader worker takes every num_workers-th unit of this process. A batch never spans two parts; the
    last batch of a part carries `last_in_part` (possibly with no samples), so the main process knows when to
    write it.
    """

    def __init__(self, source, settings: StreamSettings, prepare_caption_image=None):
        self.source, self.settings, self.prepare_caption_image = source, settings, prepare_caption_image

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        for unit in self.settings.units[worker::num_workers]:
            progress = self.settings.progress.get(unit, UnitProgress())
            if not progress.finished:
                yield from self._unit_batches(unit, progress)

    def _unit_rows(self, unit: int, start: int) -> Iterator[dict[str, Any]]:
        rows = self.source.shard(num_shards=self.settings.num_units, index=unit)
        if start:
            rows = rows.skip(start)
        # `.iter()` rather than `for row in rows`: inside a DataLoader worker, `datasets` would otherwise split
        # this one-shard stream across workers and hand it to worker 0 only.
        for batch in rows.iter(batch_size=64):
            for i in range(len(next(iter(batch.values())))):
                yield {column: values[i] for column, values in batch.items()}

    def _unit_batches(self, unit: int, progress: UnitProgress) -> Iterator[dict[str, Any]]:
        part, row, part_start = progress.parts_done, progress.rows_done, progress.rows_done
        batch = self._new_batch(unit, part, part_start)
        rows = self._unit_rows(unit, progress.rows_done)
        example = next(rows, None)
        if example is None:  # an empty unit still gets a (finished, empty) part state
            batch.update(last_in_part=True, unit_finished=True)
            yield self._finish(batch)
        while example is not None:
            following = next(rows, None)  # look ahead, so the unit's last part is marked finished
            self._add_example(batch, example, unit, row)
            row += 1
            if following is None or row - part_start == self.settings.shard_size:
                batch.update(rows_in_part=row - part_start, last_in_part=True, unit_finished=following is None)
                yield self._finish(batch)
                part, part_start = part + 1, row
                batch = self._new_batch(unit, part, part_start)
            elif len(batch["uids"]) == self.settings.batch_size:
                yield self._finish(batch)
                batch = self._new_batch(unit, part, part_start)
            example = following

    def _new_batch(self, unit: int, part: int, part_start: int) -> dict[str, Any]:
        return {"unit": unit, "part": part, "part_start": part_start, "rows_in_part": 0, "last_in_part": False,
                "unit_finished": False, "uids": [], "captions": [], "images": [], "aug_params": [], "views": [],
                "caption_pixels": [], "syn_captions": [], "skipped": []}

    def _add_example(self, batch: dict[str, Any], example: dict[str, Any], unit: int, row: int) -> None:
        settings = self.settings
        uid = example.get(settings.uid_column) if settings.uid_column else None
        uid = str(uid) if uid is not None else f"{settings.split}-{unit:05d}-{row:09d}"
        caption = caption_text(example.get(settings.caption_column))
        if not caption:
            batch["skipped"].append({"uid": uid, "unit": unit, "row": row, "reason": SKIP_EMPTY_CAPTION})
            return
        try:
            data = image_bytes(example.get(settings.image_column))
            image = decode_rgb(data)
        except Exception as error:  # any decoder failure (truncated, not an image, bomb, ...) skips the sample
            batch["skipped"].append({"uid": uid, "unit": unit, "row": row, "reason": SKIP_UNDECODABLE,
                                     "error": f"{type(error).__name__}: {error}"})
            return
        generator = torch.Generator().manual_seed(sample_seed(settings.seed, uid))
        params, views = [], []
        for _ in range(settings.num_augmentations):
            p = sample_augmentation(image.height, image.width, settings.augmentation, generator)
            view = apply_augmentation(image, p, settings.augmentation.size, settings.augmentation.interpolation)
            params.append(p.to_json())
            views.append(torch.from_numpy(np.asarray(view, dtype=np.uint8).copy()).permute(2, 0, 1))
        batch["uids"].append(uid)
        batch["captions"].append(caption)
        batch["images"].append(data)
        batch["aug_params"].append(params)
        batch["views"].append(torch.stack(views))
        if settings.syn_column is not None:
            batch["syn_captions"].append(column_captions(example.get(settings.syn_column),
                                                         settings.num_synthetic_captions,
                                                         settings.syn_column == settings.caption_column))
        if self.prepare_caption_image is not None:
            batch["caption_pixels"].append(self.prepare_caption_image(image))

    @staticmethod
    def _finish(batch: dict[str, Any]) -> dict[str, Any]:
        batch["views"] = torch.stack(batch["views"]) if batch["views"] else None
        batch["caption_pixels"] = torch.stack(batch["caption_pixels"]) if batch["caption_pixels"] else None
        return batch


# ----------------------------------------------------------------------------------------------- the run


@dataclass
class Timing:
    teacher_s: float = 0.0
    captioner_s: float = 0.0
    samples: int = 0
    start: float = field(default_factory=time.perf_counter)

    def as_dict(self) -> dict[str, float]:
        wall = time.perf_counter() - self.start
        return {"wall_s": wall, "teacher_s": self.teacher_s, "captioner_s": self.captioner_s,
                "samples": self.samples, "samples_per_s": self.samples / wall if wall else 0.0,
                "teacher_share": self.teacher_s / wall if wall else 0.0,
                "model_share": (self.teacher_s + self.captioner_s) / wall if wall else 0.0}


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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Reinforcer:
    """Computes captions and teacher embeddings for the batches of a :class:`ReinforcementStream`."""

    def __init__(self, teachers, captioner, num_captions: int, max_teacher_batch: int, seed: int, device):
        self.teachers, self.captioner, self.num_captions = teachers, captioner, num_captions
        self.max_teacher_batch, self.seed, self.device = max_teacher_batch, seed, device
        self.timing = Timing()

    def _timed(self, attribute: str, fn, *args):
        _synchronize(self.device)
        start = time.perf_counter()
        result = fn(*args)
        _synchronize(self.device)
        setattr(self.timing, attribute, getattr(self.timing, attribute) + time.perf_counter() - start)
        return result

    def _embed(self, encode, inputs) -> np.ndarray:
        chunks = [encode(inputs[i: i + self.max_teacher_batch]) for i in range(0, len(inputs), self.max_teacher_batch)]
        return torch.cat(chunks).to(torch.float16).cpu().numpy()

    def examples(self, batch: dict[str, Any], batch_index: int) -> list[dict[str, Any]]:
        count = len(batch["uids"])
        if not count:
            return []
        syn = batch["syn_captions"] or [[] for _ in range(count)]  # filled by the stream for `column:NAME`
        if self.captioner is not None and self.num_captions:
            seed = sample_seed(self.seed, f"captions/{batch['unit']}/{batch['part']}/{batch_index}")
            syn = self._timed("captioner_s", self.captioner.generate, batch["caption_pixels"], self.num_captions,
                              seed)
        views = batch["views"].flatten(0, 1)
        texts = [t for caption, captions in zip(batch["captions"], syn) for t in [caption, *captions]]
        image_parts, text_parts = [], []
        for teacher in self.teachers:
            image_parts.append(self._timed("teacher_s", self._embed, teacher.encode_images, views))
            text_parts.append(self._timed("teacher_s", self._embed, teacher.encode_texts, texts))
        image_emb = np.concatenate(image_parts, axis=1).reshape(count, len(views) // count, -1)
        text_emb = pack_text_embeddings(np.concatenate(text_parts, axis=1), [1 + len(c) for c in syn],
                                        self.num_captions)
        self.timing.samples += count
        return [
            {"uid": batch["uids"][i], "image": {"bytes": batch["images"][i], "path": None},
             "caption": batch["captions"][i], "syn_captions": list(syn[i]), "aug_params": batch["aug_params"][i],
             "image_emb": image_emb[i], "text_emb": text_emb[i]}
            for i in range(count)
        ]


def split_name(split: str) -> str:
    return split.split("[")[0]


def reinforce(args: argparse.Namespace) -> dict[str, Any]:
    """Run the pipeline described by parsed CLI arguments; return the report entry of the split."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env
    from tqdm.auto import tqdm

    teacher_specs = [s for s in (x.strip() for x in args.teachers.split(",")) if s]
    if not teacher_specs:
        raise ValueError("--teachers needs at least one spec.")
    for spec in teacher_specs:
        parse_model_spec(spec)
    check_captioner_spec(args.captioner)
    syn_column = column_captioner_name(args.captioner)
    num_captions = resolve_num_synthetic_captions(args.captioner, args.num_synthetic_captions)
    if args.num_augmentations < 1 or args.shard_size < 1 or args.batch_size < 1:
        raise ValueError("--num-augmentations, --shard-size and --batch-size must be >= 1.")
    if args.streaming and args.drop_duplicate_uids:  # a stream's uids are not known before the run
        raise ValueError("--drop-duplicate-uids needs the whole uid column up front; drop --streaming for it.")
    for config_path in args.open_clip_model_config or []:
        import open_clip

        open_clip.add_model_config(config_path)

    # PartialState reads ACCELERATE_USE_CPU only through AcceleratorState: without `cpu=` a CPU launch of N
    # processes would run N independent single-process jobs, each reinforcing every unit.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes == 1:
        raise RuntimeError(f"{launched} processes were launched but Accelerate runs each alone (no GPU per "
                           "process?); on CPUs launch with ACCELERATE_USE_CPU=true.")
    failure_group = failure_exchange_group(state.num_processes)
    output, split = Path(args.output), split_name(args.split)
    source = load_source(args.source, args.split, args.source_config, args.streaming)
    uid_column = args.uid_column or default_uid_column(source.features)
    check_columns(source.features, args.image_column, args.caption_column, uid_column, syn_column)
    source_columns = list(source.features)
    source = source.select_columns(list(dict.fromkeys(
        c for c in (args.image_column, args.caption_column, uid_column, syn_column) if c)))
    source = source.cast_column(args.image_column, datasets.Image(decode=False))
    source_rows = total_rows = dropped_duplicates = None
    if isinstance(source, datasets.Dataset):
        if len(source) == 0:
            raise ValueError(f"Source {args.source!r} split {args.split!r} is empty.")
        source_rows = len(source)
        if uid_column:  # the stored uid keys every later lookup: two rows with one uid would collide
            source, dropped_duplicates = without_duplicate_uids(source, uid_column, args)
        total_rows = len(source)
        source = source.to_iterable_dataset(num_shards=math.ceil(len(source) / args.shard_size))
    num_units = source.num_shards
    identity = source_identity(args, source_rows, num_units, uid_column, syn_column, source_columns)

    dtype = DTYPES[args.dtype]
    teachers = load_teachers(teacher_specs, state.device, dtype)
    captioner = load_captioner(args.captioner, state.device, dtype) if num_captions and not syn_column else None
    augmentation = AugmentationConfig(size=args.image_size, rand_augment=not args.no_rand_augment)
    metadata = ReinforcementMetadata(
        teachers=[TeacherInfo(t.spec, t.dim, t.logit_scale) for t in teachers],
        num_augmentations=args.num_augmentations, num_synthetic_captions=num_captions, augmentation=augmentation,
        captioner=args.captioner, seed=args.seed, source=f"{args.source} ({args.split})", shard_size=args.shard_size,
    )
    claim_output(output, output / STATE_DIR, split, identity, metadata, args.overwrite, state.is_main_process,
                 has_part_states=any(state_dir(output, split).glob("*.json")), barrier=state.wait_for_everyone)

    progress = unit_progress(read_part_states(output, split))
    settings = StreamSettings(
        num_units=num_units, units=list(range(state.process_index, num_units, state.num_processes)),
        progress=progress, shard_size=args.shard_size, batch_size=args.batch_size,
        num_augmentations=args.num_augmentations, augmentation=augmentation, seed=args.seed, split=split,
        image_column=args.image_column, caption_column=args.caption_column, uid_column=uid_column,
        syn_column=syn_column, num_synthetic_captions=num_captions,
    )
    stream = ReinforcementStream(source, settings, captioner.prepare_image if captioner else None)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    num_workers = args.num_workers
    if num_workers is None:  # leave one core per process for the main loop and the Parquet writer
        num_workers = min(8, max(0, (os.cpu_count() or 1) // local_processes - 1))
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=num_workers, pin_memory=state.device.type == "cuda",
        prefetch_factor=4 if num_workers else None, persistent_workers=False,
    )
    reinforcer = Reinforcer(teachers, captioner, num_captions, args.max_teacher_batch, args.seed, state.device)
    bar = tqdm(desc=f"reinforce {split} [rank {state.process_index}]", unit="img",
               total=total_rows if state.num_processes == 1 else None,
               initial=sum(p.rows_done for p in progress.values()) if state.num_processes == 1 else 0,
               disable=not state.is_local_main_process or args.no_progress)

    def write_part(unit, part, examples, skipped, rows, unit_finished):
        if examples:
            write_parquet_shard(examples, metadata, output / shard_filename(split, unit, part))
        write_json_atomic(part_state_path(output, split, unit, part), {
            "unit": unit, "part": part, "rows": rows, "written": len(examples), "skipped": skipped,
            "unit_finished": unit_finished})

    # One write in flight while the next part is computed: bounds memory, and a failed write stops the run
    # before any later part is written (as a crash would).
    buffers: dict[tuple[int, int], dict[str, Any]] = {}
    error = None
    try:
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
                    in_flight = writer.submit(write_part, *key, done["examples"], done["skipped"],
                                              batch["rows_in_part"], batch["unit_finished"])
            if in_flight is not None:
                in_flight.result()
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
    if dropped_duplicates is not None:
        extra["dropped_duplicate_uids"] = dropped_duplicates
    entry = write_report(output, split, states, num_units, extra, write=state.is_main_process)
    if entry["complete"] and state.is_main_process:
        if args.streaming:  # no up-front uid check when streaming: check what was written before the card
            check_written_uids(output, split)
        split_sizes = card_split_sizes(output)
        split_sizes[split] = entry["written"]
        record_card(output / STATE_DIR, write_dataset_card(output, metadata, split_sizes))
    if args.push_to_hub and state.is_main_process:
        push_to_hub(output, args.push_to_hub)
    return {**entry, "timing": timing}


def push_to_hub(output: Path, repo_id: str) -> None:
    """Upload the dataset folder (data, card, report; not the resume state) to a Hub dataset repo."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(output),
                      ignore_patterns=[f"{STATE_DIR}/**", "**/.tmp-*", "*.tmp"],
                      commit_message="Upload reinforced dataset (DataCompDR format)")


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
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16",
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    entry = reinforce(args)
    summary = {k: v for k, v in entry.items() if k != "skipped_samples"}
    print(json.dumps(summary, indent=1))
    return entry


if __name__ == "__main__":
    main()
