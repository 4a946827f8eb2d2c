"""The one dataset-spec opener: data files and globs by suffix, lists of WebDataset shards, folders."""

import io
import json
import os
import tarfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from dataset_scripts.dataset_specs import file_builder, open_dataset, split_name  # noqa: E402


def png_bytes(value):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (value, 0, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def write_shard(path, keys):
    with tarfile.open(path, "w") as archive:
        for key in keys:
            for extension, data in (("png", png_bytes(len(key))), ("json", json.dumps({"uid": key}).encode())):
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def test_suffixes_pick_the_packaged_builder():
    assert [file_builder(s) for s in ("a.parquet", "d/*.PARQUET", "a.jsonl", "a.json", "a.csv", "a.arrow",
                                      "s/{0..3}.tar", "folder", "user/repo")] == [
        "parquet", "parquet", "json", "json", "csv", "arrow", "webdataset", None, None]
    assert split_name("train[:10]") == "train" and split_name("test") == "test"


def test_files_globs_shard_lists_and_folders_open_the_same_rows(tmp_path):
    rows = {"caption": ["a", "b", "c"], "n": [1, 2, 3]}
    datasets.Dataset.from_dict(rows).to_parquet(tmp_path / "rows.parquet")
    datasets.Dataset.from_dict(rows).to_csv(tmp_path / "rows.csv", index=False)
    assert open_dataset(str(tmp_path / "rows.parquet"), "train[:2]")["caption"] == ["a", "b"]
    assert open_dataset(str(tmp_path / "*.csv"), "test")["n"] == [1, 2, 3]
    streamed = open_dataset(str(tmp_path / "rows.parquet"), "train", streaming=True)
    assert isinstance(streamed, datasets.IterableDataset) and [r["n"] for r in streamed] == [1, 2, 3]

    write_shard(tmp_path / "0.tar", ["k0", "k1"])
    write_shard(tmp_path / "1.tar", ["k2"])
    shards = open_dataset([str(tmp_path / "0.tar"), str(tmp_path / "1.tar")], "test")
    assert shards["__key__"] == ["k0", "k1", "k2"] and isinstance(shards.features["png"], datasets.Image)

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.png").write_bytes(png_bytes(i))
    assert len(open_dataset(str(folder), "train")) == 2  # a folder of images: datasets' imagefolder builder
    with pytest.raises(ValueError, match="unknown file type"):
        open_dataset([str(tmp_path / "a.bin")], "train")


def write_mixed_shard(path):
    """A CLIP_benchmark-like shard with every member kind the evaluation mirrors hold; sample `b` lacks its caption."""
    import numpy as np

    members = {"a": {"webp": None, "cls": b"3", "txt": "a red\nswatch".encode(), "json": b'{"uid": "a", "n": [1, 2]}',
                     "npy": np.arange(4, dtype=np.float32)},
               "b": {"webp": None, "cls": b"7", "json": b'{"uid": "b", "n": [3]}', "npy": np.ones(4, np.float32)}}
    with tarfile.open(path, "w") as archive:
        for value, (key, sample) in enumerate(members.items()):
            for extension, data in sample.items():
                if extension == "webp":
                    buffer = io.BytesIO()
                    Image.new("RGB", (5, 3), (40 * value, 9, 200)).save(buffer, "WEBP", lossless=True)
                    data = buffer.getvalue()
                elif extension == "npy":
                    buffer = io.BytesIO()
                    np.save(buffer, data)
                    data = buffer.getvalue()
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def test_tar_rows_equal_the_datasets_webdataset_builder_and_keep_a_sample_lacking_a_member(tmp_path):
    """Tars are read by our one tar reader into the rows `datasets`' webdataset builder gives (oracle: the builder on
    a complete shard); where a sample lacks a member the builder refuses the whole shard and ours fills None."""
    import numpy as np

    write_mixed_shard(tmp_path / "0.tar")
    ours = open_dataset(str(tmp_path / "0.tar"), "test")
    with pytest.raises(ValueError, match="same prefix or the same types"):
        datasets.load_dataset("webdataset", data_files={"test": str(tmp_path / "0.tar")}, split="test")
    assert ours["__key__"] == ["a", "b"] and ours[1]["txt"] is None and ours[1]["cls"] == 7

    complete = tmp_path / "complete"
    complete.mkdir()
    with tarfile.open(tmp_path / "0.tar") as source, tarfile.open(complete / "0.tar", "w") as target:
        for member in source:
            if member.name.startswith("a."):
                target.addfile(member, source.extractfile(member))
    theirs = datasets.load_dataset("webdataset", data_files={"test": str(complete / "0.tar")}, split="test")
    ours = open_dataset(str(complete / "0.tar"), "test")
    assert ours.features == theirs.features, (ours.features, theirs.features)
    for mine, reference in zip(ours, theirs):
        assert np.array_equal(np.asarray(mine.pop("webp")), np.asarray(reference.pop("webp")))
        assert mine == reference


def test_tar_datasets_are_cached_by_content_and_stream_per_shard(tmp_path):
    write_shard(tmp_path / "0.tar", ["k0", "k1"])
    assert open_dataset(str(tmp_path / "0.tar"), "test")["__key__"] == ["k0", "k1"]
    write_shard(tmp_path / "0.tar", ["k5"])  # the same path rewritten: the cached rows must not be served
    os.utime(tmp_path / "0.tar", ns=(1, 1))
    assert open_dataset(str(tmp_path / "0.tar"), "test")["__key__"] == ["k5"]
    write_shard(tmp_path / "1.tar", ["k6", "k7"])
    assert open_dataset(str(tmp_path / "*.tar"), "test[1:]")["__key__"] == ["k6", "k7"]
    streamed = open_dataset(str(tmp_path / "*.tar"), "train", streaming=True)
    assert streamed.num_shards == 2 and [row["__key__"] for row in streamed] == ["k5", "k6", "k7"]
    with pytest.raises(FileNotFoundError, match="No tar shards match"):
        open_dataset(str(tmp_path / "none*.tar"), "test")
