"""Apple's official DataCompDR WebDataset shards: reader (into our sample structure) and writer (back to it).

An official shard is a tar of members named `<key>.<ext>`, grouped by key (the uid):

    url.txt    image URL                      txt        ground-truth caption (after joining DataComp-12M)
    jpg        image (after img2dataset)      json       {"uid": ..., "sha256": ...}
    syn.json   {"syn_text": [K captions]}     paug.json  {"param_aug": [N compressed augmentations]}
    npz        image_emb (N, D), text_emb (1+K, D), float32        (DataCompDR-12M, -1B)
    pth.gz     gzip of torch.save({"image_emb", "text_emb"}) in bf16 (DataCompDR-12M-bf16)

Newer generator output stores only the ground-truth row in `text_emb` and one `<syn_key>_emb` per synthetic
caption key; both layouts are read. Shards may be local paths, globs, or any fsspec URL (e.g. `hf://datasets/...`).

Images and captions usually live apart, in img2dataset's WebDataset output (`KEY.jpg`, `KEY.txt`, `KEY.json` with
`uid` when run with `--save_additional_columns '["uid"]'`; KEY is img2dataset's own counter, and failed downloads
are absent). `pair_image_shards` pairs each reinforcement shard with its image shard, `index_image_shard` records
where each uid's image and caption lie in one (byte offsets, read from the small `.json` members only), and
`iter_joined_samples` streams a reinforcement shard in its own order with `image`/`caption` filled by uid.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import tarfile
import warnings
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, Iterator, MutableMapping, Sequence

import fsspec
import numpy as np
import torch

from .augmentation import AugmentationParams
from .dataset_specs import IMAGE_EXTENSIONS
from .tar_shards import TAR_READ_ERRORS, ShardReadError, iter_tar_samples, shard_read_error, split_member_name


# DataCompDR-12M / -1B teachers, in the order of Apple's training config (mobileclip.md §8; order unverified).
OFFICIAL_TEACHERS = ("open_clip:ViT-L-14:openai", "open_clip:ViT-L-14:datacomp_xl_s13b_b90k")
OFFICIAL_TEACHER_DIMS = (768, 768)
OFFICIAL_CAPTIONER = "open_clip:coca_ViT-L-14:mscoco_finetuned_laion2b_s13b_b90k"
MISSING_IMAGE = "missing_image"
SHOWN = 5  # shard names listed in one message; the rest are counted
def _load_embeddings(members: dict[str, bytes], key: str) -> dict[str, np.ndarray]:
    if "npz" in members:
        with np.load(io.BytesIO(members["npz"])) as arrays:
            return {name: np.asarray(arrays[name], dtype=np.float32) for name in arrays.files}
    if "pth.gz" in members:
        tensors = torch.load(io.BytesIO(gzip.decompress(members["pth.gz"])), weights_only=True, map_location="cpu")
        return {name: value.float().numpy() for name, value in tensors.items()}
    raise ValueError(f"Sample {key!r} has no embeddings (expected an 'npz' or 'pth.gz' member; "
                     f"found {sorted(members)}).")


def _synthetic_captions(syn: dict[str, Any], key_pattern: str) -> tuple[str | None, list[str]]:
    keys = sorted(k for k in syn if re.match(key_pattern, k))
    if not keys:
        return None, []
    chosen = "syn_text" if "syn_text" in keys else keys[0]
    return chosen, [str(t) for t in syn[chosen]]


def parse_official_sample(key: str, members: dict[str, bytes], syn_key_pattern: str = r"^syn_text") -> dict:
    """One official sample as our sample structure (plus `url` and `json`); `image`/`caption` may be None.

    Raises `ValueError` naming the key and member when a member is malformed.
    """
    try:
        meta = json.loads(members["json"]) if "json" in members else {}
        syn_key, syn_captions = _synthetic_captions(
            json.loads(members["syn.json"]) if "syn.json" in members else {}, syn_key_pattern
        )
        paug = json.loads(members["paug.json"])["param_aug"] if "paug.json" in members else []
        if isinstance(paug, str):
            paug = json.loads(paug)
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"Sample {key!r}: malformed json/syn.json/paug.json member ({error}).") from error
    for entry in paug:
        AugmentationParams.decompress(entry)  # validates; the stored string keeps the official values verbatim
    embeddings = _load_embeddings(members, key)
    text_emb = embeddings["text_emb"]
    if syn_key and f"{syn_key}_emb" in embeddings:  # newer layout: GT row + per-key synthetic rows
        text_emb = np.concatenate([text_emb[:1], embeddings[f"{syn_key}_emb"]])
    image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
    caption = members["txt"].decode("utf-8").strip() if "txt" in members else None
    return {
        "uid": str(meta.get("uid", key.rpartition("/")[2])),
        "image": image,
        "caption": caption,
        "syn_captions": syn_captions,
        "aug_params": [json.dumps(entry) for entry in paug],
        "image_emb": embeddings["image_emb"].astype(np.float16),
        "text_emb": text_emb.astype(np.float16),
        "url": members["url.txt"].decode("utf-8").strip() if "url.txt" in members else None,
        "json": meta,
    }


def expand_shards(shards: str | Sequence[str]) -> list[str]:
    """Sorted shard paths from a glob, a brace-free list, or fsspec URLs."""
    patterns = [shards] if isinstance(shards, str) else list(shards)
    paths: list[str] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            files = fsspec.open_files(pattern)
            paths.extend(f.full_name if "://" in pattern else f.path for f in files)
        else:
            paths.append(pattern)
    if not paths:
        raise ValueError(f"No shards match {shards!r}.")
    return sorted(paths)


def _parse_in_shard(shard: str, key: str, members: dict[str, bytes], syn_key_pattern: str) -> dict:
    try:
        return parse_official_sample(key, members, syn_key_pattern)
    except ValueError as error:  # the sample's own message names the key; add the shard it sits in
        raise ValueError(f"Shard {shard!r}: {error}") from error


# ------------------------------------------------------------------------------------------- joining image shards


@dataclass(frozen=True)
class ImageRef:
    """Where one sample's image (and caption) lie in an image tar: byte offsets and sizes of the members' data."""

    key: str
    image_offset: int
    image_size: int
    caption_offset: int | None = None
    caption_size: int | None = None


def _open_for_random_reads(path: str):
    """An image shard opened for seeks. Remote files keep an LRU of 1 MiB blocks: img2dataset writes a shard almost
    in its input order, so the reads of a join mostly hit cached blocks, and a far jump fetches 1 MiB, not the
    default read-ahead of several MiB. Local files ignore the options."""
    return fsspec.open(path, "rb", block_size=2**20, cache_type="blockcache")


def index_image_shard(path: str) -> dict[str, ImageRef]:
    """uid -> `ImageRef` for every sample of an img2dataset tar that has an image (jpg/jpeg/png/webp).

    One pass over the member headers (local path or fsspec URL; the tar must be uncompressed, since the offsets are
    read back by seeking): only the small `.json` members are read, for their `uid` (samples without one are keyed
    by their member key), so the index holds no image bytes. A uid held by two samples raises `ValueError`.
    """
    members_by_key: dict[str, dict[str, tuple[int, int]]] = {}
    uid_by_key: dict[str, str | None] = {}
    try:
        # Random-access mode: the headers are read one by one and each member's data is skipped by a seek.
        with _open_for_random_reads(path) as raw, tarfile.open(fileobj=raw, mode="r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, extension = split_member_name(member.name)
                members_by_key.setdefault(key, {})[extension] = (member.offset_data, member.size)
                if extension == "json":
                    uid_by_key[key] = _uid_from_json(path, member.name, archive.extractfile(member).read())
    except TAR_READ_ERRORS as error:
        raise shard_read_error(path, error) from error
    index: dict[str, ImageRef] = {}
    for key, members in members_by_key.items():
        image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
        if image is None:  # a json or caption without its image: nothing to join
            continue
        uid = uid_by_key.get(key) or key.rpartition("/")[2]
        if uid in index:
            raise ValueError(f"Image shard {path!r}: uid {uid!r} is held by two samples (keys {index[uid].key!r} "
                             f"and {key!r}); each uid must have one image.")
        caption = members.get("txt", (None, None))
        index[uid] = ImageRef(key, *image, *caption)
    return index


def _uid_from_json(path: str, member_name: str, data: bytes) -> str | None:
    try:
        uid = json.loads(data).get("uid")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise ValueError(f"Image shard {path!r}, member {member_name!r}: expected a JSON object (img2dataset's "
                         f"sample metadata), got {data[:80]!r} ({error}).") from error
    return None if uid is None else str(uid)


def _read_span(images: BinaryIO, path: str, key: str, offset: int, size: int) -> bytes:
    try:
        images.seek(offset)
        data = images.read(size)
    except TAR_READ_ERRORS as error:
        raise shard_read_error(path, error) from error
    if len(data) != size:
        raise ShardReadError(f"Cannot read tar shard {path!r}: sample {key!r} expected {size} bytes at offset "
                             f"{offset}, got {len(data)} (the file changed or was truncated after indexing).")
    return data


def iter_joined_samples(reinforcement_shard: str, image_shard: str | None, syn_key_pattern: str = r"^syn_text",
                        counts: MutableMapping[str, int] | None = None, *, keep_missing: bool = False
                        ) -> Iterator[dict]:
    """The samples of a reinforcement shard, in its order, with `image` and `caption` taken from `image_shard`
    (an img2dataset tar, in any order) by uid; the structure of `parse_official_sample`.

    An image or caption the reinforcement sample already carries is kept. A sample with no image anywhere
    (download failed, or `image_shard` is None) adds 1 to `counts["missing_image"]` and is skipped, or, with
    `keep_missing`, yielded with `image` None (for callers that list the skipped uids themselves). A plain generator
    with no shared state: the image shard is indexed when iteration starts and stays open until it ends.
    """
    index = index_image_shard(image_shard) if image_shard is not None else {}
    with _open_for_random_reads(image_shard) if image_shard is not None else contextlib.nullcontext() as images:
        for key, members in iter_tar_samples(reinforcement_shard):
            sample = _parse_in_shard(reinforcement_shard, key, members, syn_key_pattern)
            ref = index.get(sample["uid"])
            if ref is not None and sample["image"] is None:
                sample["image"] = _read_span(images, image_shard, ref.key, ref.image_offset, ref.image_size)
            if ref is not None and sample["caption"] is None and ref.caption_offset is not None:
                caption = _read_span(images, image_shard, ref.key, ref.caption_offset, ref.caption_size)
                try:
                    sample["caption"] = caption.decode("utf-8").strip()
                except UnicodeDecodeError as error:
                    raise ValueError(f"Image shard {image_shard!r}, member {ref.key + '.txt'!r}: expected a UTF-8 "
                                     f"caption, got {caption[:80]!r} ({error}).") from error
            if sample["image"] is None:
                if counts is not None:
                    counts[MISSING_IMAGE] = counts.get(MISSING_IMAGE, 0) + 1
                if not keep_missing:
                    continue
            yield sample


def _shard_stem(path: str) -> str:
    return os.path.basename(path.rstrip("/")).partition(".")[0]


def _names(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:SHOWN])
    return shown + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "") if paths else "none"


def pair_image_shards(reinforcement_shards: Sequence[str], image_shards: Sequence[str]
                      ) -> list[tuple[str, str | None]]:
    """`(reinforcement shard, its image shard or None)` for each reinforcement shard, in the given order.

    Shards pair by file name stem (`a/00000123.tar` with `b/00000123.tar`); a reinforcement shard whose stem has no
    image shard pairs with None (all its samples are missing_image) and image shards of no reinforcement shard are
    unused. When no stem matches at all (img2dataset numbers its own shards, e.g. `00123.tar`) but the counts are
    equal, they pair in sorted order. Otherwise, and for a stem held by two shards of one side, `ValueError`.
    """
    reinforcement_stems = [_shard_stem(s) for s in reinforcement_shards]
    image_by_stem = {_shard_stem(s): s for s in image_shards}
    if image_by_stem.keys() & set(reinforcement_stems):
        for side, paths in (("reinforcement", reinforcement_shards), ("image", image_shards)):
            stems = [_shard_stem(s) for s in paths]
            repeated = sorted(p for p, stem in zip(paths, stems) if stems.count(stem) > 1)
            if repeated:
                raise ValueError(f"Several {side} shards share a file name stem, so they cannot be paired by name: "
                                 f"{_names(repeated)}.")
        pairs = [(shard, image_by_stem.get(stem)) for shard, stem in zip(reinforcement_shards, reinforcement_stems)]
        unpaired = [shard for shard, image in pairs if image is None]
        unused = sorted(image_by_stem.keys() - set(reinforcement_stems))
        if unpaired and unused:  # both sides left over: more likely a naming mix-up than failed downloads
            warnings.warn(f"{len(unpaired)} reinforcement shard(s) have no image shard of the same name "
                          f"({_names(unpaired)}; their samples count as missing_image) while {len(unused)} image "
                          f"shard(s) pair with none ({_names([image_by_stem[s] for s in unused])}).", stacklevel=2)
        return pairs
    if len(reinforcement_shards) == len(image_shards):
        image_by_shard = dict(zip(sorted(reinforcement_shards), sorted(image_shards)))
        return [(shard, image_by_shard[shard]) for shard in reinforcement_shards]
    raise ValueError(f"Cannot pair {len(reinforcement_shards)} reinforcement shard(s) with {len(image_shards)} image "
                     f"shard(s): no file name stem matches, and pairing in sorted order needs equal counts. "
                     f"Unmatched reinforcement shards: {_names(sorted(reinforcement_shards))}; unmatched image "
                     f"shards: {_names(sorted(image_shards))}.")


def write_official_shard(path: str, samples: Iterable[dict], embedding_format: str = "npz") -> None:
    """Write samples (our structure) as an official-layout tar (`npz` float32 or `pth.gz` bf16 embeddings)."""
    if embedding_format not in ("npz", "pth.gz"):
        raise ValueError(f"embedding_format must be 'npz' or 'pth.gz', got {embedding_format!r}.")
    with tarfile.open(path, "w") as archive:
        for sample in samples:
            members = {
                "json": json.dumps({"uid": sample["uid"]}).encode(),
                "syn.json": json.dumps({"syn_text": list(sample["syn_captions"])}).encode(),
                "paug.json": json.dumps({"param_aug": [json.loads(p) for p in sample["aug_params"]]}).encode(),
                embedding_format: _encode_embeddings(sample, embedding_format),
            }
            if sample.get("url"):
                members["url.txt"] = sample["url"].encode()
            if sample.get("caption") is not None:
                members["txt"] = sample["caption"].encode()
            if sample.get("image") is not None:
                image = sample["image"]
                members["jpg"] = image["bytes"] if isinstance(image, dict) else image
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{sample['uid']}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def _encode_embeddings(sample: dict, embedding_format: str) -> bytes:
    image_emb = np.asarray(sample["image_emb"], dtype=np.float32)
    text_emb = np.asarray(sample["text_emb"], dtype=np.float32)
    buffer = io.BytesIO()
    if embedding_format == "npz":
        np.savez(buffer, image_emb=image_emb, text_emb=text_emb)
        return buffer.getvalue()
    torch.save({"image_emb": torch.from_numpy(image_emb).bfloat16(),
                "text_emb": torch.from_numpy(text_emb).bfloat16()}, buffer)
    return gzip.compress(buffer.getvalue())


__all__ = [
    "MISSING_IMAGE",
    "OFFICIAL_CAPTIONER",
    "OFFICIAL_TEACHERS",
    "OFFICIAL_TEACHER_DIMS",
    "ImageRef",
    "expand_shards",
    "index_image_shard",
    "iter_joined_samples",
    "pair_image_shards",
    "parse_official_sample",
    "write_official_shard",
]
