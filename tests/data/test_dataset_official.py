"""Official DataCompDR shards: built here byte by byte in Apple's layout, then read, joined with img2dataset-style
image shards and converted."""

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dataset_scripts.augmentation import AugmentationParams  # noqa: E402
from dataset_scripts.convert_official import main as convert_main  # noqa: E402
from dataset_scripts.dr_format import load_reinforcement_metadata  # noqa: E402
from conftest import REPO_ROOT  # noqa: E402
from dataset_scripts.official import (  # noqa: E402
    OFFICIAL_TEACHERS,
    expand_shards,
    index_image_shard,
    iter_joined_samples,
    pair_image_shards,
    write_official_shard,
)
from dataset_scripts.tar_shards import ShardReadError, iter_tar_samples  # noqa: E402

N, K, D = 2, 2, 6
PARAM_AUG = [[[23, 47, 35, 27], [[9, -0.27], [3, -30.45]]], [[0, 1, 20, 30], [[10, 7], [11, 178.5]]]]


def read_official(shards):
    """Every sample of `shards` as the converter reads them (no image shards to join: images inside)."""
    return [sample for shard in expand_shards(shards)
            for sample in iter_joined_samples(shard, None, keep_missing=True)]


def jpeg(seed):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (60, 50, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def official_sample(uid, seed, embedding_format, with_image=True, new_layout=False):
    rng = np.random.default_rng(seed)
    image_emb = rng.standard_normal((N, D)).astype(np.float32)
    text_emb = rng.standard_normal((1 + K, D)).astype(np.float32)
    syn_key = "syn_text_dfn_mscoco38k" if new_layout else "syn_text"
    members = {
        "url.txt": f"https://example.com/{uid}.jpg".encode(),
        "txt": f"ground truth {uid}".encode(),
        # Shard 00000001's samples carry their image's true sha256, shard 00000000's a wrong one.
        "json": json.dumps({"uid": uid, "sha256": hashlib.sha256(jpeg(seed)).hexdigest() if uid >= "0b" else "0" * 64
                            }).encode(),
        "syn.json": json.dumps({syn_key: [f"synthetic {uid} {j}" for j in range(K)]}).encode(),
        "paug.json": json.dumps({"param_aug": PARAM_AUG}).encode(),
    }
    if with_image:
        members["jpg"] = jpeg(seed)
    arrays = {"image_emb": image_emb, "text_emb": text_emb[:1] if new_layout else text_emb}
    if new_layout:
        arrays[f"{syn_key}_emb"] = text_emb[1:]
    buffer = io.BytesIO()
    if embedding_format == "npz":
        np.savez(buffer, **arrays)
        members["npz"] = buffer.getvalue()
    else:
        torch.save({k: torch.from_numpy(v).bfloat16() for k, v in arrays.items()}, buffer)
        members["pth.gz"] = gzip.compress(buffer.getvalue())
    expected = {"uid": uid, "image_emb": image_emb, "text_emb": text_emb, "image": members.get("jpg"),
                "caption": f"ground truth {uid}", "syn_captions": [f"synthetic {uid} {j}" for j in range(K)]}
    return members, expected


def write_tar(path, samples):
    with tarfile.open(path, "w") as archive:
        for uid, members in samples:
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{uid}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    expected = {}
    first = []
    for i, uid in enumerate(["0a1b", "0a1c", "0a1d"]):
        members, expected[uid] = official_sample(uid, i, "npz", with_image=uid != "0a1c")
        first.append((uid, members))
    second = []
    for i, uid in enumerate(["0b00", "0b01"]):
        members, expected[uid] = official_sample(uid, 10 + i, "pth.gz", new_layout=i == 1)
        second.append((uid, members))
    write_tar(root / "00000000.tar", first)
    write_tar(root / "00000001.tar", second)
    return root, expected


def test_reader_yields_our_sample_structure(shards):
    root, expected = shards
    samples = list(read_official(str(root / "*.tar")))
    assert [s["uid"] for s in samples] == ["0a1b", "0a1c", "0a1d", "0b00", "0b01"]
    for sample in samples:
        want = expected[sample["uid"]]
        assert sample["caption"] == want["caption"] and sample["syn_captions"] == want["syn_captions"]
        assert sample["image"] == want["image"] and sample["url"].endswith(f"{sample['uid']}.jpg")
        assert sample["aug_params"] == [json.dumps(entry) for entry in PARAM_AUG]  # verbatim official values
        assert AugmentationParams.from_json(sample["aug_params"][0]).crop == (23, 47, 35, 27)
        assert sample["image_emb"].dtype == np.float16 and sample["text_emb"].shape == (1 + K, D)
        bf16 = sample["uid"].startswith("0b")
        reference_image = torch.from_numpy(want["image_emb"]).bfloat16().float().numpy() if bf16 else want["image_emb"]
        reference_text = torch.from_numpy(want["text_emb"]).bfloat16().float().numpy() if bf16 else want["text_emb"]
        np.testing.assert_array_equal(sample["image_emb"], reference_image.astype(np.float16))
        np.testing.assert_array_equal(sample["text_emb"], reference_text.astype(np.float16))


def test_conversion_to_parquet_skips_missing_images_and_resumes(shards, tmp_path):
    root, expected = shards
    output = tmp_path / "converted"
    entry = convert_main(["--shards", str(root / "*.tar"), "--output", str(output), "--no-progress"])
    assert entry["complete"] and entry["written"] == 4 and entry["skipped_by_reason"] == {"missing_image": 1}
    assert entry["skipped_samples"][0]["uid"] == "0a1c"
    metadata = load_reinforcement_metadata(output)
    assert [t.spec for t in metadata.teachers] == list(OFFICIAL_TEACHERS) and metadata.teacher_dims == [3, 3]
    assert (metadata.num_augmentations, metadata.num_synthetic_captions) == (N, K)
    dataset = datasets.load_dataset(str(output), split="train")
    assert dataset.features["image_emb"] == datasets.Array2D(shape=(N, D), dtype="float16")
    rows = {row["uid"]: row for row in dataset}
    assert set(rows) == {"0a1b", "0a1d", "0b00", "0b01"}
    np.testing.assert_array_equal(np.asarray(rows["0a1b"]["image_emb"], np.float16),
                                  expected["0a1b"]["image_emb"].astype(np.float16))
    assert rows["0b01"]["syn_captions"] == expected["0b01"]["syn_captions"]

    checked = convert_main(["--shards", str(root / "*.tar"), "--output", str(tmp_path / "sha"), "--verify-sha256",
                            "--no-progress"])
    assert checked["skipped_by_reason"] == {"missing_image": 1, "sha256_mismatch": 2} and checked["written"] == 2

    mtime = {p: p.stat().st_mtime_ns for p in (output / "data").glob("*.parquet")}
    again = convert_main(["--shards", str(root / "*.tar"), "--output", str(output), "--no-progress"])
    assert again["written"] == 4 and {p: p.stat().st_mtime_ns for p in mtime} == mtime  # nothing redone
    with pytest.raises(ValueError, match="must sum to the stored width 6"):
        convert_main(["--shards", str(root / "*.tar"), "--output", str(tmp_path / "bad"), "--teacher-dims",
                      "4,4", "--no-progress"])


@pytest.mark.parametrize("embedding_format", ["npz", "pth.gz"])
def test_writer_round_trips_through_the_reader(shards, tmp_path, embedding_format):
    root, _ = shards
    samples = [s for s in read_official(str(root / "*.tar")) if s["image"] is not None]
    path = tmp_path / f"export-{embedding_format}.tar"
    write_official_shard(str(path), samples, embedding_format)
    names = tarfile.open(path).getnames()
    assert f"0a1b.{embedding_format}" in names and "0a1b.paug.json" in names and "0a1b.url.txt" in names
    for original, restored in zip(samples, read_official(str(path))):
        for key in ("uid", "caption", "syn_captions", "aug_params", "image", "url"):
            assert restored[key] == original[key], key
        tolerance = 0 if embedding_format == "npz" else 1e-2  # bf16 keeps 8 mantissa bits
        np.testing.assert_allclose(restored["image_emb"], original["image_emb"], atol=tolerance, rtol=tolerance)


def test_malformed_members_are_reported(tmp_path):
    members, _ = official_sample("bad0", 0, "npz")
    members["paug.json"] = b'{"param_aug": [[[1, 2, 3]]]}'
    write_tar(tmp_path / "bad.tar", [("bad0", members)])
    with pytest.raises(ValueError, match="crop box"):
        read_official(str(tmp_path / "bad.tar"))
    del members["npz"]
    members["paug.json"] = json.dumps({"param_aug": PARAM_AUG}).encode()
    write_tar(tmp_path / "bad.tar", [("bad0", members)])
    with pytest.raises(ValueError, match="'bad0' has no embeddings"):
        read_official(str(tmp_path / "bad.tar"))


# ------------------------------------------------------------------------ joining img2dataset image shards by uid

EMOJI = REPO_ROOT / "dataset_scripts" / "data" / "emoji" / "google.parquet"
# Reinforcement shard -> its uids in the shard's order, and the order img2dataset happened to write them in
# (download order, not the shard's). c0ffee02's download failed: its image shard has no sample for it.
REINFORCEMENT_UIDS = {"00000000": ["c0ffee00", "c0ffee01", "c0ffee02", "c0ffee03"],
                      "00000001": ["beef0000", "beef0001", "beef0002"]}
DOWNLOADED_ORDER = {"00000": ["c0ffee03", "c0ffee00", "c0ffee01"], "00001": ["beef0002", "beef0000", "beef0001"]}
MISSING_UID = "c0ffee02"


def emoji_jpegs_and_captions(count):
    """Real emoji images, re-encoded as the JPEGs img2dataset would store, with their first caption."""
    import pyarrow.parquet as pq

    table = pq.ParquetFile(EMOJI).read_row_group(0, columns=["image", "captions"]).slice(0, count).to_pylist()
    out = []
    for row in table:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB").save(buffer, "JPEG", quality=90)
        out.append((buffer.getvalue(), row["captions"][0]))
    return out


def write_img2dataset_shard(path, uids, expected, first_key):
    """An img2dataset WebDataset shard: sequential keys (not uids), each with jpg, txt and a json holding the uid."""
    with tarfile.open(path, "w") as archive:
        for offset, uid in enumerate(uids):
            key = f"{first_key + offset:09d}"
            meta = {"url": f"https://example.com/{uid}.jpg", "caption": expected[uid]["caption"], "key": key,
                    "status": "success", "uid": uid}
            for extension, data in (("jpg", expected[uid]["image"]), ("txt", expected[uid]["caption"].encode()),
                                    ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def joined_set(tmp_path_factory):
    """Reinforcement shards in Apple's layout without images or captions (npz, then pth.gz), and image shards
    named as img2dataset names them; returns (reinforcement dir, image dir, uid -> expected sample)."""
    root = tmp_path_factory.mktemp("joined")
    (root / "reinforcement").mkdir()
    (root / "images").mkdir()
    all_uids = [uid for uids in REINFORCEMENT_UIDS.values() for uid in uids]
    expected = {}
    for i, (uid, (image, caption)) in enumerate(zip(all_uids, emoji_jpegs_and_captions(len(all_uids)))):
        rng = np.random.default_rng(100 + i)
        expected[uid] = {"uid": uid, "image": image, "caption": caption, "url": f"https://example.com/{uid}.jpg",
                         "syn_captions": [f"synthetic {uid} {j}" for j in range(K)],
                         "aug_params": [json.dumps(entry) for entry in PARAM_AUG],
                         "image_emb": rng.standard_normal((N, D)).astype(np.float32),
                         "text_emb": rng.standard_normal((1 + K, D)).astype(np.float32)}
    for (stem, uids), embedding_format in zip(REINFORCEMENT_UIDS.items(), ["npz", "pth.gz"]):
        without_image = [{k: v for k, v in expected[uid].items() if k not in ("image", "caption")} for uid in uids]
        write_official_shard(str(root / "reinforcement" / f"{stem}.tar"), without_image, embedding_format)
    for shard_index, (stem, uids) in enumerate(DOWNLOADED_ORDER.items()):
        write_img2dataset_shard(root / "images" / f"{stem}.tar", uids, expected, first_key=shard_index * 10000)
    return root / "reinforcement", root / "images", expected


def stored_as_float16(array, embedding_format):
    """What the reader returns for float32 embeddings stored as npz (exact) or pth.gz (through bf16)."""
    if embedding_format == "pth.gz":
        array = torch.from_numpy(array).bfloat16().float().numpy()
    return array.astype(np.float16)


def test_image_shard_index_records_offsets_not_bytes(joined_set):
    _, images, expected = joined_set
    index = index_image_shard(str(images / "00000.tar"))
    assert set(index) == {"c0ffee03", "c0ffee00", "c0ffee01"}
    assert index["c0ffee03"].key == "000000000" and index["c0ffee01"].key == "000000002"
    raw = (images / "00000.tar").read_bytes()
    for uid, ref in index.items():
        assert raw[ref.image_offset:ref.image_offset + ref.image_size] == expected[uid]["image"]
        assert raw[ref.caption_offset:ref.caption_offset + ref.caption_size] == expected[uid]["caption"].encode()


@pytest.mark.parametrize("stem, image_stem, embedding_format",
                         [("00000000", "00000", "npz"), ("00000001", "00001", "pth.gz")])
def test_join_fills_image_and_caption_by_uid_in_reinforcement_order(joined_set, stem, image_stem, embedding_format):
    reinforcement, images, expected = joined_set
    counts = Counter()
    samples = list(iter_joined_samples(str(reinforcement / f"{stem}.tar"), str(images / f"{image_stem}.tar"),
                                       counts=counts))
    want_uids = [uid for uid in REINFORCEMENT_UIDS[stem] if uid != MISSING_UID]
    assert [s["uid"] for s in samples] == want_uids
    assert counts == (Counter({"missing_image": 1}) if MISSING_UID in REINFORCEMENT_UIDS[stem] else Counter())
    for sample in samples:
        want = expected[sample["uid"]]
        for key in ("image", "caption", "url", "syn_captions", "aug_params"):
            assert sample[key] == want[key], (sample["uid"], key)
        np.testing.assert_array_equal(sample["image_emb"], stored_as_float16(want["image_emb"], embedding_format))
        np.testing.assert_array_equal(sample["text_emb"], stored_as_float16(want["text_emb"], embedding_format))


def test_join_counts_every_sample_without_an_image(joined_set):
    reinforcement, images, _ = joined_set
    kept = list(iter_joined_samples(str(reinforcement / "00000000.tar"), str(images / "00000.tar"),
                                    keep_missing=True))
    assert [(s["uid"], s["image"] is None, s["caption"] is None) for s in kept] == [
        ("c0ffee00", False, False), ("c0ffee01", False, False), ("c0ffee02", True, True), ("c0ffee03", False, False)]
    counts = {}
    assert list(iter_joined_samples(str(reinforcement / "00000001.tar"), None, counts=counts)) == []
    assert counts == {"missing_image": 3}


def test_join_reads_fsspec_urls(joined_set):
    import fsspec

    reinforcement, images, expected = joined_set
    memory = fsspec.filesystem("memory")
    memory.pipe({"/joined/r/00000000.tar": (reinforcement / "00000000.tar").read_bytes(),
                 "/joined/i/00000.tar": (images / "00000.tar").read_bytes()})
    try:
        samples = list(iter_joined_samples("memory://joined/r/00000000.tar", "memory://joined/i/00000.tar"))
    finally:
        memory.rm("/joined", recursive=True)
    assert [(s["uid"], s["image"], s["caption"]) for s in samples] == [
        (uid, expected[uid]["image"], expected[uid]["caption"]) for uid in ("c0ffee00", "c0ffee01", "c0ffee03")]


def test_join_keeps_an_image_and_caption_the_reinforcement_shard_already_has(shards, joined_set, tmp_path):
    root, with_images = shards
    _, _, expected = joined_set
    # An image shard offering other bytes for 0a1b (which has its own) and the image 0a1c lacks.
    other = {"0a1b": {"image": expected["beef0000"]["image"], "caption": "other caption"},
             "0a1c": {"image": expected["beef0001"]["image"], "caption": "downloaded caption"}}
    write_img2dataset_shard(tmp_path / "00000.tar", ["0a1c", "0a1b"], other, first_key=0)
    samples = {s["uid"]: s for s in iter_joined_samples(str(root / "00000000.tar"), str(tmp_path / "00000.tar"))}
    assert samples["0a1b"]["image"] == with_images["0a1b"]["image"]
    assert samples["0a1b"]["caption"] == "ground truth 0a1b"
    assert samples["0a1c"]["image"] == other["0a1c"]["image"] and samples["0a1c"]["caption"] == "ground truth 0a1c"
    assert samples["0a1d"]["image"] == with_images["0a1d"]["image"]


def test_image_shards_pair_by_name_else_in_sorted_order():
    assert pair_image_shards(["hf://datasets/apple/x/00000000.tar", "r/00000001.tar", "r/00000002.tar"],
                             ["i/00000002.tar", "i/00000000.tar"]) == [
        ("hf://datasets/apple/x/00000000.tar", "i/00000000.tar"), ("r/00000001.tar", None),
        ("r/00000002.tar", "i/00000002.tar")]
    assert pair_image_shards(["r/00000001.tar", "r/00000000.tar"], ["i/00001.tar", "i/00000.tar"]) == [
        ("r/00000001.tar", "i/00001.tar"), ("r/00000000.tar", "i/00000.tar")]
    with pytest.raises(ValueError, match=r"2 reinforcement shard\(s\) with 1 image shard\(s\).*"
                                         r"reinforcement shards: r/a.tar, r/b.tar; unmatched image shards: i/x.tar"):
        pair_image_shards(["r/a.tar", "r/b.tar"], ["i/x.tar"])
    with pytest.raises(ValueError, match="share a file name stem.*i/0.tar, j/0.tar"):
        pair_image_shards(["r/0.tar"], ["j/0.tar", "i/0.tar"])
    with pytest.warns(UserWarning, match="r/1.tar.*i/7.tar"):
        pair_image_shards(["r/0.tar", "r/1.tar"], ["i/0.tar", "i/7.tar"])


def parquet_bytes(output):
    return {p.name: p.read_bytes() for p in sorted((output / "data").glob("*.parquet"))}


@pytest.mark.slow
def test_conversion_joins_images_in_parallel_as_one_worker_would_and_resumes(joined_set, tmp_path):
    import pyarrow.parquet as pq

    reinforcement, images, expected = joined_set
    outputs = {}
    for workers in (1, 2):
        outputs[workers] = tmp_path / f"workers-{workers}"
        entry = convert_main(["--shards", str(reinforcement / "*.tar"), "--images", str(images / "*.tar"),
                              "--output", str(outputs[workers]), "--num-workers", str(workers), "--no-progress"])
        assert entry["complete"] and entry["written"] == 6 and entry["skipped_by_reason"] == {"missing_image": 1}
        assert entry["skipped_samples"] == [{"uid": MISSING_UID, "unit": 0, "row": 2, "reason": "missing_image"}]
    one, two = outputs[1], outputs[2]
    assert parquet_bytes(one) == parquet_bytes(two) and len(parquet_bytes(one)) == 2
    rows = [row for path in sorted((one / "data").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert [row["uid"] for row in rows] == [u for uids in REINFORCEMENT_UIDS.values() for u in uids if u != MISSING_UID]
    for row in rows:
        assert row["image"]["bytes"] == expected[row["uid"]]["image"]
        assert row["caption"] == expected[row["uid"]]["caption"]

    # A lost Parquet file (its state file kept), then a crash before a shard was recorded: each rerun redoes that
    # shard alone, and the result is the same bytes again.
    state = two / ".reinforce_state" / "train"
    for unit, state_lost_too in ((1, False), (0, True)):
        redone = [two / "data" / f"train-{unit:05d}-0000.parquet", state / f"{unit:05d}-0000.json"]
        kept = {p: p.stat().st_mtime_ns for p in [*(two / "data").glob("*.parquet"), *state.glob("*.json")]
                if p not in redone}
        for path in redone[:1 + state_lost_too]:
            path.unlink()
        entry = convert_main(["--shards", str(reinforcement / "*.tar"), "--images", str(images / "*.tar"),
                              "--output", str(two), "--num-workers", "2", "--no-progress"])
        assert entry["written"] == 6 and entry["skipped"] == 1
        assert {p: p.stat().st_mtime_ns for p in kept} == kept
        assert parquet_bytes(two) == parquet_bytes(one)


@pytest.mark.slow
def test_unreadable_shards_are_named(joined_set, tmp_path):
    reinforcement, images, _ = joined_set
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar archive\n" * 40)
    truncated = tmp_path / "truncated.tar"
    whole = (reinforcement / "00000000.tar").read_bytes()
    truncated.write_bytes(whole[:len(whole) // 2])
    for broken in (garbage, truncated, tmp_path / "absent.tar"):
        with pytest.raises(ShardReadError, match=f"Cannot read tar shard '{broken}'"):
            list(iter_tar_samples(str(broken)))
    with pytest.raises(ShardReadError, match=f"'{garbage}'"):
        index_image_shard(str(garbage))
    with pytest.raises(ShardReadError, match=f"'{garbage}'"):
        list(iter_joined_samples(str(reinforcement / "00000000.tar"), str(garbage)))

    bad_json = tmp_path / "bad-json" / "00000.tar"
    bad_json.parent.mkdir()
    with tarfile.open(bad_json, "w") as archive:
        for name, data in (("000000000.jpg", b"\xff\xd8"), ("000000000.json", b"[not json")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match=f"Image shard '{bad_json}', member '000000000.json': expected a JSON"):
        index_image_shard(str(bad_json))

    # The second shard's image tar is corrupt: the worker converting it fails with the shard's name, while the
    # first shard, converted by the other worker, is kept for the rerun.
    broken_images = tmp_path / "broken-images"
    broken_images.mkdir()
    (broken_images / "00000.tar").write_bytes((images / "00000.tar").read_bytes())
    (broken_images / "00001.tar").write_bytes(b"\0corrupt" * 100)
    output = tmp_path / "out"
    with pytest.raises(ShardReadError, match=f"'{broken_images / '00001.tar'}'"):
        convert_main(["--shards", str(reinforcement / "*.tar"), "--images", str(broken_images / "*.tar"),
                      "--output", str(output), "--num-workers", "2", "--no-progress"])
    assert [p.name for p in (output / ".reinforce_state" / "train").glob("*.json")] == ["00000-0000.json"]
