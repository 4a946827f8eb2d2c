"""The Parquet + card format: written by DataCompDRBuilder, read back by plain `datasets.load_dataset`."""

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from dataset_scripts.augmentation import AugmentationConfig, AugmentationParams  # noqa: E402
from dataset_scripts.dr_format import (  # noqa: E402
    ReinforcementMetadata,
    TeacherInfo,
    load_reinforcement_metadata,
    shard_filename,
    validate_example,
    write_dataset_card,
    write_parquet_shard,
)


def make_metadata(n=3, k=2, dims=(8, 4)):
    return ReinforcementMetadata(
        teachers=[TeacherInfo(f"open_clip:t{i}:none", d) for i, d in enumerate(dims)], num_augmentations=n,
        num_synthetic_captions=k, augmentation=AugmentationConfig(size=64), captioner="none", seed=7,
        source="unit test", shard_size=4,
    )


def jpeg_bytes(seed):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def make_examples(metadata, count, start=0):
    rng = np.random.default_rng(start)
    n, k, d = metadata.num_augmentations, metadata.num_synthetic_captions, metadata.embedding_dim
    return [
        {
            "uid": f"s{start + i}",
            "image": jpeg_bytes(start + i),
            "caption": f"caption {start + i}",
            "syn_captions": [f"synthetic {start + i}.{j}" for j in range(k)],
            "aug_params": [AugmentationParams((0, 0, 10 + a, 12), (("Rotate", -9.0),)).to_json() for a in range(n)],
            "image_emb": rng.standard_normal((n, d)).astype(np.float16),
            "text_emb": rng.standard_normal((1 + k, d)).astype(np.float16),
        }
        for i in range(count)
    ]


def test_written_dataset_loads_with_declared_shapes(tmp_path):
    metadata = make_metadata()
    first, second = make_examples(metadata, 3), make_examples(metadata, 2, start=3)
    write_parquet_shard(first, metadata, tmp_path / shard_filename("train", 0, 0))
    write_parquet_shard(second, metadata, tmp_path / shard_filename("train", 1, 0))
    write_parquet_shard(make_examples(metadata, 1, start=9), metadata, tmp_path / shard_filename("validation", 0, 0))
    write_dataset_card(tmp_path, metadata, {"train": 5, "validation": 1})
    assert not list(tmp_path.rglob(".tmp-*")), "temporary files must not survive a write"

    dataset = datasets.load_dataset(str(tmp_path), split="train")
    assert len(dataset) == 5 and set(datasets.load_dataset(str(tmp_path))) == {"train", "validation"}
    assert dataset.features["image_emb"] == datasets.Array2D(shape=(3, 12), dtype="float16")
    assert dataset.features["text_emb"] == datasets.Array2D(shape=(3, 12), dtype="float16")
    expected = {e["uid"]: e for e in first + second}
    for row in dataset:
        source = expected[row["uid"]]
        assert row["caption"] == source["caption"] and row["syn_captions"] == source["syn_captions"]
        assert row["aug_params"] == source["aug_params"]
        np.testing.assert_array_equal(np.asarray(row["image_emb"], dtype=np.float16), source["image_emb"])
        np.testing.assert_array_equal(np.asarray(row["text_emb"], dtype=np.float16), source["text_emb"])
        assert row["image"].format == "JPEG"  # original bytes kept, not re-encoded
    # float16 on disk (Arrow halffloat), not upcast.
    schema = pq.read_schema(next((tmp_path / "data").glob("train-*.parquet")))
    assert "halffloat" in str(schema.field("image_emb").type.storage_type)

    streamed = list(datasets.load_dataset(str(tmp_path), split="train", streaming=True))
    assert sorted(r["uid"] for r in streamed) == sorted(expected)
    assert load_reinforcement_metadata(tmp_path) == metadata
    assert load_reinforcement_metadata(tmp_path).teacher_dims == [8, 4]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("image_emb", np.zeros((2, 12)), r"image_emb has shape \(2, 12\), expected \(3, 12\)"),
        ("text_emb", np.zeros((3, 11)), r"text_emb has shape \(3, 11\), expected \(3, 12\)"),
        ("aug_params", ["[[0, 0, 1, 1]]"], r"aug_params has shape \(1,\), expected \(3,\)"),
        ("syn_captions", [], r"syn_captions has shape \(0,\), expected \(2,\)"),
    ],
)
def test_shape_mismatches_name_the_sample(key, value, message):
    metadata = make_metadata()
    example = {**make_examples(metadata, 1)[0], key: value}
    with pytest.raises(ValueError, match=f"Sample 's0': {message}"):
        validate_example(example, metadata)


def test_missing_keys_and_bad_metadata_are_rejected():
    metadata = make_metadata()
    example = make_examples(metadata, 1)[0]
    del example["caption"]
    with pytest.raises(ValueError, match=r"lacks keys \['caption'\]"):
        validate_example(example, metadata)
    with pytest.raises(ValueError, match="num_augmentations"):
        make_metadata(n=0)
    with pytest.raises(ValueError, match="teacher"):
        ReinforcementMetadata(teachers=[], num_augmentations=1, num_synthetic_captions=0)
    changed = make_metadata(dims=(8, 8))
    assert metadata.resume_mismatches(changed) and not metadata.resume_mismatches(make_metadata())
