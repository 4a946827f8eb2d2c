"""Reading WebDataset tar shards: one streaming reader of `(key, {extension: bytes})` groups, used by every tar
the project reads (Apple's official reinforcement shards, img2dataset image shards, plain image-caption tars and
CLIP_benchmark's evaluation mirrors, through `dataset_scripts.dataset_specs.open_dataset`).
"""

from __future__ import annotations

import lzma
import tarfile
import zlib
from typing import Iterator

import fsspec

# What a missing, truncated or corrupt (possibly compressed) tar raises while it is read.
TAR_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


class ShardReadError(ValueError):
    """A shard could not be opened or read as a tar (missing, truncated, corrupt); the message names the shard."""


def shard_read_error(shard: str, error: BaseException) -> ShardReadError:
    return ShardReadError(f"Cannot read tar shard {shard!r}: {type(error).__name__}: {error}")


def split_member_name(name: str) -> tuple[str, str]:
    # WebDataset convention: the key is the path up to the first dot of the file name.
    directory, _, filename = name.rpartition("/")
    stem, _, extension = filename.partition(".")
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


def iter_tar_samples(shard: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream `(key, {extension: bytes})` groups from one tar shard (local path or fsspec URL).

    A shard that cannot be read raises `ShardReadError` naming it (after the groups read before the damage).
    """
    try:
        with fsspec.open(shard, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as archive:
            key, members = None, {}
            for member in archive:
                if not member.isfile():
                    continue
                member_key, extension = split_member_name(member.name)
                if member_key != key and members:
                    yield key, members
                    members = {}
                key = member_key
                members[extension] = archive.extractfile(member).read()
            if members:
                yield key, members
    except TAR_READ_ERRORS as error:
        raise shard_read_error(shard, error) from error


__all__ = ["TAR_READ_ERRORS", "ShardReadError", "iter_tar_samples", "shard_read_error", "split_member_name"]
