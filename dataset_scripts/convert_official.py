"""Convert Apple's official DataCompDR WebDataset shards (with downloaded images) to our Parquet format.

    python -m dataset_scripts.convert_official --shards 'DIR/*.tar' --output OUT [--split train] \
        [--teachers SPEC,SPEC] [--teacher-dims 768,768] [--captioner SPEC] [--push-to-hub REPO_ID]

Each input shard becomes one Parquet file, written atomically; a rerun skips shards already converted. Samples
without an image (not downloaded), with an undecodable image or an empty caption are skipped and listed in
`reinforce_report.json`. N, K and D come from the first usable sample; every sample must match them.

The output folder has an owner, as for `reinforce` (`ownership.py`): the shards (absolute local paths with sizes,
or URLs) and the options that decide which samples are kept are recorded, and a folder holding another conversion,
a reinforcement run or files this converter did not write is refused unless `--overwrite`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .augmentation import AugmentationConfig, decode_rgb
from .dr_format import ReinforcementMetadata, TeacherInfo, card_split_sizes, shard_filename, write_dataset_card
from .dr_format import write_parquet_shard
from .official import OFFICIAL_CAPTIONER, OFFICIAL_TEACHERS, expand_shards, iter_tar_samples, parse_official_sample
from .ownership import claim_output, record_card
from .reinforce import SKIP_EMPTY_CAPTION, SKIP_UNDECODABLE, push_to_hub
from .run_state import STATE_DIR, part_state_path, read_part_states, state_dir, write_json_atomic, write_report

SKIP_MISSING_IMAGE = "missing_image"
SKIP_SHA256_MISMATCH = "sha256_mismatch"


def build_metadata(sample: dict, args: argparse.Namespace) -> ReinforcementMetadata:
    """Metadata for the converted dataset, with teacher dims checked against the stored embedding width."""
    teachers = [s.strip() for s in args.teachers.split(",") if s.strip()]
    width = sample["image_emb"].shape[1]
    if args.teacher_dims:
        dims = [int(d) for d in args.teacher_dims.split(",")]
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
        augmentation=AugmentationConfig(size=args.image_size),
        captioner=args.captioner,
        seed=None,
        source=f"official DataCompDR shards {args.shards}",
        shard_size=None,
        extra={"converted_from": "apple/DataCompDR WebDataset"},
    )


def skip_reason(sample: dict, verify_images: bool, verify_sha256: bool = False) -> dict[str, str] | None:
    if sample["image"] is None:
        return {"reason": SKIP_MISSING_IMAGE}
    if not sample["caption"]:
        return {"reason": SKIP_EMPTY_CAPTION}
    expected = sample["json"].get("sha256")
    if verify_sha256 and expected and hashlib.sha256(sample["image"]).hexdigest() != expected:
        # The stored embeddings and crop boxes belong to the original bytes; a changed image would mismatch them.
        return {"reason": SKIP_SHA256_MISMATCH}
    if verify_images:
        try:
            decode_rgb(sample["image"])
        except Exception as error:
            return {"reason": SKIP_UNDECODABLE, "error": f"{type(error).__name__}: {error}"}
    return None


def shards_identity(args: argparse.Namespace, shards: list[str]) -> dict[str, Any]:
    """What a conversion reads and keeps, for `claim_output`: local shards by absolute path and size (a rerun from
    another directory is the same source, a regenerated shard is not), remote ones by URL; and the options that
    change which samples are written, since a resume under other options would mix two selections."""
    files = [[os.path.abspath(s), os.path.getsize(s)] if os.path.isfile(s) else [s, None] for s in shards]
    return {"source": "official DataCompDR shards", "shards": files, "split": args.split,
            "options": {"syn_key": args.syn_key, "verify_images": not args.no_verify_images,
                        "verify_sha256": bool(args.verify_sha256)}}


def first_usable_metadata(shards: list[str], args: argparse.Namespace) -> ReinforcementMetadata:
    """The metadata, from the first usable sample: ownership is settled before anything is written, so it is
    read up front (usually the first sample of the first shard)."""
    reasons: dict[str, int] = {}
    for shard in shards:
        for key, members in iter_tar_samples(shard):
            sample = parse_official_sample(key, members, args.syn_key)
            reason = skip_reason(sample, not args.no_verify_images, args.verify_sha256)
            if reason is None:
                return build_metadata(sample, args)
            reasons[reason["reason"]] = reasons.get(reason["reason"], 0) + 1
    raise ValueError(f"No usable sample in {args.shards!r} (skipped: {reasons}); images must be downloaded first "
                     "(see the README's img2dataset recipe).")


def convert(args: argparse.Namespace) -> dict[str, Any]:
    """Convert every shard not converted yet; return the report entry of the split."""
    output, split = Path(args.output), args.split
    shards = expand_shards(args.shards)
    metadata = first_usable_metadata(shards, args)
    claim_output(output, output / STATE_DIR, split, shards_identity(args, shards), metadata, args.overwrite,
                 is_main=True, has_part_states=any(state_dir(output, split).glob("*.json")))
    done = {state["unit"] for state in read_part_states(output, split)}
    for unit, shard in enumerate(tqdm(shards, desc="convert", unit="shard", disable=args.no_progress)):
        if unit in done:
            continue
        examples, skipped, rows = [], [], 0
        for key, members in iter_tar_samples(shard):
            sample = parse_official_sample(key, members, args.syn_key)
            rows += 1
            reason = skip_reason(sample, not args.no_verify_images, args.verify_sha256)
            if reason:
                skipped.append({"uid": sample["uid"], "unit": unit, "row": rows - 1, **reason})
                continue
            examples.append({k: sample[k] for k in ("uid", "image", "caption", "syn_captions", "aug_params",
                                                     "image_emb", "text_emb")})
        if examples:
            write_parquet_shard(examples, metadata, output / shard_filename(split, unit, 0))
        write_json_atomic(part_state_path(output, split, unit, 0), {
            "unit": unit, "part": 0, "rows": rows, "written": len(examples), "skipped": skipped,
            "unit_finished": True, "shard": shard})
    states = read_part_states(output, split)
    entry = write_report(output, split, states, len(shards), {})
    sizes = card_split_sizes(output)
    sizes[split] = entry["written"]
    record_card(output / STATE_DIR, write_dataset_card(output, metadata, sizes))
    if args.push_to_hub:
        push_to_hub(output, args.push_to_hub)
    return entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dataset_scripts.convert_official",
                                     description="Convert official DataCompDR WebDataset shards to Parquet.")
    parser.add_argument("--shards", required=True, help="Glob (quote it) or path of .tar shards; fsspec URLs work.")
    parser.add_argument("--output", required=True)
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    entry = convert(build_parser().parse_args(argv))
    print(json.dumps({k: v for k, v in entry.items() if k != "skipped_samples"}, indent=1))
    return entry


if __name__ == "__main__":
    main()
