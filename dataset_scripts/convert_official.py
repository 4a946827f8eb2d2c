"""Convert Apple's official DataCompDR WebDataset shards to our Parquet format, joining the downloaded images.

    python -m dataset_scripts.convert_official --shards 'DIR/*.tar' --output OUT [--images 'IMAGES/*.tar'] \
        [--num-workers 8] [--split train] [--teachers SPEC,SPEC] [--teacher-dims 768,768] [--captioner SPEC] \
        [--push-to-hub REPO_ID]

`--images` names img2dataset's WebDataset output: each reinforcement shard is paired with one image shard (by file
name, else in sorted order: `official.pair_image_shards`) and its samples take their image and caption from it by
uid (`official.iter_joined_samples`). Without it the images must be inside the reinforcement shards.

Each input shard becomes one Parquet file, written atomically and then recorded by its own state file, by one of
`--num-workers` processes; the output does not depend on their number. A rerun skips shards already converted and
converts again a shard whose Parquet file is gone. Samples without an image (not downloaded), with an undecodable
image or an empty caption are skipped and listed in `reinforce_report.json`. N, K and D come from the first usable
sample; every sample must match them.

The output folder has an owner, as for `reinforce` (`ownership.py`): the shards (absolute local paths with sizes,
or URLs) and the options that decide which samples are kept are recorded, and a folder holding another conversion,
a reinforcement run or files this converter did not write is refused unless `--overwrite`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from modeling_mobileclip.cli import run_main
from .augmentation import AugmentationConfig, decode_rgb
from .dr_format import ReinforcementMetadata, TeacherInfo, shard_filename
from .hub_push import push_reinforced_dataset
from .official import MISSING_IMAGE, OFFICIAL_CAPTIONER, OFFICIAL_TEACHERS, expand_shards, iter_joined_samples
from .official import pair_image_shards
from .ownership import claim_output
from .run_state import (SKIP_EMPTY_CAPTION, SKIP_UNDECODABLE, STATE_DIR, has_part_states, read_part_states,
                        skipped_sample, write_part, write_report, write_split_card)

SKIP_MISSING_IMAGE = MISSING_IMAGE
SKIP_SHA256_MISMATCH = "sha256_mismatch"


@dataclass(kw_only=True)
class ConvertOfficialConfig:
    """One field per command-line option (`--no-verify-images` is `no_verify_images`), with the same defaults."""

    shards: str
    """Glob or path of the official .tar shards (fsspec URLs work)."""
    output: str
    images: str | None = None
    """img2dataset WebDataset shards (glob or fsspec URL) joined by uid; None: images inside the shards."""
    num_workers: int = 1
    split: str = "train"
    teachers: str = ",".join(OFFICIAL_TEACHERS)
    """Teacher specs in embedding order, comma-separated."""
    teacher_dims: str | None = None
    """Comma-separated dims; None: the stored width split equally."""
    captioner: str = OFFICIAL_CAPTIONER
    image_size: int = 224
    syn_key: str = r"^syn_text"
    no_verify_images: bool = False
    verify_sha256: bool = False
    push_to_hub: str | None = None
    no_progress: bool = False
    overwrite: bool = False


def build_metadata(sample: dict, *, teachers: str, teacher_dims: str | None, image_size: int, captioner: str,
                   shards: str, images: str | None) -> ReinforcementMetadata:
    """Metadata of official shards (the conversion's, and streaming training's, which reads them unconverted), with
    teacher dims checked against the stored embedding width."""
    teachers = [s.strip() for s in teachers.split(",") if s.strip()]
    width = sample["image_emb"].shape[1]
    if teacher_dims:
        dims = [int(d) for d in teacher_dims.split(",")]
    elif width % len(teachers) == 0:
        dims = [width // len(teachers)] * len(teachers)
    else:
        raise ValueError(f"Embeddings have {width} dims, not divisible among {len(teachers)} teachers; "
                         "pass --teacher-dims.")
    if len(dims) != len(teachers) or sum(dims) != width:
        raise ValueError(f"--teacher-dims {dims} for teachers {teachers} must sum to the stored width {width}.")
    return ReinforcementMetadata(
        teachers=[TeacherInfo(spec, dim) for spec, dim in zip(teachers, dims)],
        num_augmentations=sample["image_emb"].shape[0],
        num_synthetic_captions=sample["text_emb"].shape[0] - 1,
        augmentation=AugmentationConfig(size=image_size),
        captioner=captioner,
        seed=None,
        source=f"official DataCompDR shards {shards}" + (f" with images {images}" if images else ""),
        shard_size=None,
        extra={"converted_from": "apple/DataCompDR WebDataset"},
    )


def skip_reason(sample: dict, verify_images: bool,
                verify_sha256: bool = False) -> tuple[str, BaseException | None] | None:
    """Why `sample` cannot be converted, and the error behind it (an undecodable image); None: it can."""
    if sample["image"] is None:
        return SKIP_MISSING_IMAGE, None
    if not sample["caption"]:
        return SKIP_EMPTY_CAPTION, None
    expected = sample["json"].get("sha256")
    if verify_sha256 and expected and hashlib.sha256(sample["image"]).hexdigest() != expected:
        # The stored embeddings and crop boxes belong to the original bytes; a changed image would mismatch them.
        return SKIP_SHA256_MISMATCH, None
    if verify_images:
        try:
            decode_rgb(sample["image"])
        except Exception as error:
            return SKIP_UNDECODABLE, error
    return None


def file_identity(path: str) -> list[Any]:
    """A local file by absolute path and size (a rerun from another directory reads the same file, a regenerated
    one is another), a remote one by URL."""
    return [os.path.abspath(path), os.path.getsize(path)] if os.path.isfile(path) else [path, None]


def shards_identity(config: ConvertOfficialConfig, pairs: list[tuple[str, str | None]]) -> dict[str, Any]:
    """What a conversion reads and keeps, for `claim_output`: the shards and the image shard paired with each, and
    the options that change which samples are written, since a resume under other options would mix two
    selections. Without --images, `images` is None, as in the fingerprints written before it existed."""
    return {"source": "official DataCompDR shards", "shards": [file_identity(s) for s, _ in pairs],
            "images": [image and file_identity(image) for _, image in pairs] if config.images else None,
            "split": config.split,
            "options": {"syn_key": config.syn_key, "verify_images": not config.no_verify_images,
                        "verify_sha256": bool(config.verify_sha256)}}


def first_usable_metadata(pairs: list[tuple[str, str | None]], config: ConvertOfficialConfig) -> ReinforcementMetadata:
    """The metadata, from the first usable sample: ownership is settled before anything is written, so it is
    read up front (usually the first sample of the first shard)."""
    reasons: dict[str, int] = {}
    for shard, image_shard in pairs:
        for sample in iter_joined_samples(shard, image_shard, config.syn_key, keep_missing=True):
            skip = skip_reason(sample, not config.no_verify_images, config.verify_sha256)
            if skip is None:
                return build_metadata(sample, teachers=config.teachers, teacher_dims=config.teacher_dims,
                                      image_size=config.image_size, captioner=config.captioner, shards=config.shards,
                                      images=config.images)
            reasons[skip[0]] = reasons.get(skip[0], 0) + 1
    raise ValueError(f"No usable sample in {config.shards!r} (skipped: {reasons}); images must be downloaded first "
                     "and passed with --images (see the README's img2dataset recipe).")


def convert_shard(unit: int, shard: str, image_shard: str | None, metadata: ReinforcementMetadata,
                  config: ConvertOfficialConfig) -> int:
    """Convert one shard: its Parquet file, then its state file (each atomic, so a crash leaves the shard either
    recorded as done or to be redone). Returns the unit; runs in a worker process when --num-workers > 1."""
    output, split = Path(config.output), config.split
    try:
        examples, skipped, rows = [], [], 0
        for row, sample in enumerate(iter_joined_samples(shard, image_shard, config.syn_key, keep_missing=True)):
            rows = row + 1
            skip = skip_reason(sample, not config.no_verify_images, config.verify_sha256)
            if skip:
                skipped.append(skipped_sample(sample["uid"], unit, row, *skip))
                continue
            examples.append({k: sample[k] for k in ("uid", "image", "caption", "syn_captions", "aug_params",
                                                     "image_emb", "text_emb")})
        write_part(output, split, metadata, unit, 0, examples, skipped, rows, True, shard=shard,
                   image_shard=image_shard)
    except Exception as error:  # most errors name the shard already; those from writing its files do not
        error.add_note(f"while converting shard {shard!r} (unit {unit}, image shard {image_shard!r})")
        raise
    return unit


def converted_units(output: Path, split: str) -> set[int]:
    """Units recorded by a state file whose Parquet file (if they wrote rows) is still there: a shard whose file
    was lost is converted again, and its state file rewritten after it, so no sample is lost or counted twice."""
    return {state["unit"] for state in read_part_states(output, split)
            if state["written"] == 0 or (output / shard_filename(split, state["unit"], 0)).is_file()}


def convert_units(jobs: list[tuple[int, str, str | None]], metadata: ReinforcementMetadata,
                  config: ConvertOfficialConfig) -> Iterator[int]:
    """Convert `(unit, shard, image shard)` jobs, yielding each unit as it finishes: here, or in up to
    --num-workers spawned processes (spawn, not fork: the parent may hold threads and open files). After a failure
    the queued shards are cancelled while the running ones finish, so their work is kept for the rerun."""
    workers = min(config.num_workers, len(jobs))
    if workers <= 1:
        for job in jobs:
            yield convert_shard(*job, metadata, config)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(convert_shard, *job, metadata, config) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def convert(config: ConvertOfficialConfig) -> dict[str, Any]:
    """Convert every shard not converted yet; return the report entry of the split."""
    output, split = Path(config.output), config.split
    shards = expand_shards(config.shards)
    pairs = pair_image_shards(shards, expand_shards(config.images)) if config.images else [(s, None) for s in shards]
    metadata = first_usable_metadata(pairs, config)
    claim_output(output, output / STATE_DIR, split, shards_identity(config, pairs), metadata, config.overwrite,
                 is_main=True, has_part_states=has_part_states(output, split))
    done = converted_units(output, split)
    jobs = [(unit, shard, image_shard) for unit, (shard, image_shard) in enumerate(pairs) if unit not in done]
    with tqdm(total=len(pairs), initial=len(pairs) - len(jobs), desc="convert", unit="shard",
              disable=config.no_progress) as progress:
        for _ in convert_units(jobs, metadata, config):
            progress.update()
    states = read_part_states(output, split)
    entry = write_report(output, split, states, len(shards), {})
    write_split_card(output, split, metadata, entry["written"])
    if config.push_to_hub:
        push_reinforced_dataset(output, config.push_to_hub)
    return entry


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dataset_scripts.convert_official",
                                     description="Convert official DataCompDR WebDataset shards to Parquet.")
    parser.add_argument("--shards", required=True, help="Glob (quote it) or path of .tar shards; fsspec URLs work.")
    parser.add_argument("--output", required=True)
    parser.add_argument("--images", default=None, metavar="GLOB",
                        help="img2dataset WebDataset shards (glob or fsspec URL; json members with the uid) to join "
                             "by uid; each pairs with the reinforcement shard of the same file name, or the one at "
                             "its place in sorted order when no name matches and the counts are equal.")
    parser.add_argument("--num-workers", type=positive_int, default=1,
                        help="Processes converting shards in parallel (the output is the same for any number).")
    parser.add_argument("--split", default="train")
    parser.add_argument("--teachers", default=",".join(OFFICIAL_TEACHERS),
                        help="Teacher specs in embedding order (default: DataCompDR's two ViT-L-14).")
    parser.add_argument("--teacher-dims", default=None, help="Comma-separated dims (default: equal split).")
    parser.add_argument("--captioner", default=OFFICIAL_CAPTIONER)
    parser.add_argument("--image-size", type=int, default=224, help="Size of the recorded views.")
    parser.add_argument("--syn-key", default=r"^syn_text", help="Regex selecting the syn.json caption key.")
    parser.add_argument("--no-verify-images", action="store_true", help="Do not decode images to check them.")
    parser.add_argument("--verify-sha256", action="store_true",
                        help="Skip samples whose image bytes do not match the sha256 in their json member.")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an --output folder holding another conversion or run, or files this converter "
                             "did not write (what is removed is printed); a folder holding this same conversion "
                             "still resumes.")
    return parser


def parse_config(argv: list[str] | None = None) -> ConvertOfficialConfig:
    return ConvertOfficialConfig(**vars(build_parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    entry = convert(parse_config(argv))
    print(json.dumps({k: v for k, v in entry.items() if k != "skipped_samples"}, indent=1))
    return entry


__all__ = ["ConvertOfficialConfig", "build_metadata", "build_parser", "convert", "main", "parse_config"]


if __name__ == "__main__":
    run_main(main)
