"""Apple's official DataCompDR WebDataset shards: reader (into our sample structure) and writer (back to it).

An official shard is a tar of members named `<key>.<ext>`, grouped by key (the uid):

    url.txt    image URL                      txt        ground-truth caption (after joining DataComp-12M)
    jpg        image (after img2dataset)      json       {"uid": ..., "sha256": ...}
    syn.json   {"syn_text": [K captions]}     paug.json  {"param_aug": [N compressed augmentations]}
    npz        image_emb (N, D), text_emb (1+K, D), float32        (DataCompDR-12M, -1B)
    pth.gz     gzip of torch.save({"image_emb", "text_emb"}) in bf16 (DataCompDR-12M-bf16)

Newer generator output stores only the ground-truth row in `text_emb` and one `<syn_key>_emb` per synthetic
caption key; both layouts are read. Shards may be local paths, globs, or any fsspec URL (e.g. `hf://datasets/...`).
"""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .augmentation import AugmentationParams


# DataCompDR-12M / -1B teachers, in the order of Apple's training config (mobileclip.md §8; order unverified).
OFFICIAL_TEACHERS = ("open_clip:ViT-L-14:openai", "open_clip:ViT-L-14:datacomp_xl_s13b_b90k")
OFFICIAL_TEACHER_DIMS = (768, 768)
OFFICIAL_CAPTIONER = "open_clip:coca_ViT-L-14:mscoco_finetuned_laion2b_s13b_b90k"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def _split_member_name(name: str) -> tuple[str, str]:
    # WebDataset convention: the key is the path up to the first dot of the file name.
    directory, _, filename = name.rpartition("/")
    stem, _, extension = filename.partition(".")
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


def iter_tar_samples(shard: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream `(key, {extension: bytes})` groups from one tar shard (local path or fsspec URL)."""
    import fsspec

    with fsspec.open(shard, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as archive:
        key, members = None, {}
        for member in archive:
            if not member.isfile():
                continue
            member_key, extension = _split_member_name(member.name)
            if member_key != key and members:
                yield key, members
                members = {}
            key = member_key
            members[extension] = archive.extractfile(member).read()
        if members:
            yield key, members


def _load_embeddings(members: dict[str, bytes], key: str) -> dict[str, np.ndarray]:
    if "npz" in members:
        with np.load(io.BytesIO(members["npz"])) as arrays:
            return {name: np.asarray(arrays[name], dtype=np.float32) for name in arrays.files}
    if "pth.gz" in members:
        import torch

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
    import fsspec

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


def iter_official_samples(shards: str | Sequence[str], syn_key_pattern: str = r"^syn_text") -> Iterator[dict]:
    """All samples of the given official shards, in order."""
    for shard in expand_shards(shards):
        for key, members in iter_tar_samples(shard):
            yield parse_official_sample(key, members, syn_key_pattern)


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
    import torch

    torch.save({"image_emb": torch.from_numpy(image_emb).bfloat16(),
                "text_emb": torch.from_numpy(text_emb).bfloat16()}, buffer)
    return gzip.compress(buffer.getvalue())


__all__ = [
    "OFFICIAL_CAPTIONER",
    "OFFICIAL_TEACHERS",
    "OFFICIAL_TEACHER_DIMS",
    "expand_shards",
    "iter_official_samples",
    "iter_tar_samples",
    "parse_official_sample",
    "write_official_shard",
]
