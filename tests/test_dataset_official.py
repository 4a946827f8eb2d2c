"""Official DataCompDR shards: built here byte by byte in Apple's layout, then read and converted."""

import gzip
import hashlib
import io
import json
import os
import tarfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dataset_scripts.augmentation import decode_param_aug  # noqa: E402
from dataset_scripts.convert_official import main as convert_main  # noqa: E402
from dataset_scripts.dr_format import load_reinforcement_metadata  # noqa: E402
from dataset_scripts.official import OFFICIAL_TEACHERS, iter_official_samples, write_official_shard  # noqa: E402

N, K, D = 2, 2, 6
PARAM_AUG = [[[23, 47, 35, 27], [[9, -0.27], [3, -30.45]]], [[0, 1, 20, 30], [[10, 7], [11, 178.5]]]]


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
    samples = list(iter_official_samples(str(root / "*.tar")))
    assert [s["uid"] for s in samples] == ["0a1b", "0a1c", "0a1d", "0b00", "0b01"]
    for sample in samples:
        want = expected[sample["uid"]]
        assert sample["caption"] == want["caption"] and sample["syn_captions"] == want["syn_captions"]
        assert sample["image"] == want["image"] and sample["url"].endswith(f"{sample['uid']}.jpg")
        assert sample["aug_params"] == [json.dumps(entry) for entry in PARAM_AUG]  # verbatim official values
        assert decode_param_aug({"param_aug": [json.loads(p) for p in sample["aug_params"]]})[0].crop == (
            23, 47, 35, 27)
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
    samples = [s for s in iter_official_samples(str(root / "*.tar")) if s["image"] is not None]
    path = tmp_path / f"export-{embedding_format}.tar"
    write_official_shard(str(path), samples, embedding_format)
    names = tarfile.open(path).getnames()
    assert f"0a1b.{embedding_format}" in names and "0a1b.paug.json" in names and "0a1b.url.txt" in names
    for original, restored in zip(samples, iter_official_samples(str(path))):
        for key in ("uid", "caption", "syn_captions", "aug_params", "image", "url"):
            assert restored[key] == original[key], key
        tolerance = 0 if embedding_format == "npz" else 1e-2  # bf16 keeps 8 mantissa bits
        np.testing.assert_allclose(restored["image_emb"], original["image_emb"], atol=tolerance, rtol=tolerance)


def test_malformed_members_are_reported(tmp_path):
    members, _ = official_sample("bad0", 0, "npz")
    members["paug.json"] = b'{"param_aug": [[[1, 2, 3]]]}'
    write_tar(tmp_path / "bad.tar", [("bad0", members)])
    with pytest.raises(ValueError, match="crop box"):
        list(iter_official_samples(str(tmp_path / "bad.tar")))
    del members["npz"]
    members["paug.json"] = json.dumps({"param_aug": PARAM_AUG}).encode()
    write_tar(tmp_path / "bad.tar", [("bad0", members)])
    with pytest.raises(ValueError, match="'bad0' has no embeddings"):
        list(iter_official_samples(str(tmp_path / "bad.tar")))
