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
