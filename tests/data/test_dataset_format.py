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
    pack_text_embeddings,
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
        ("syn_captions", ["a", "b", "c"], r"syn_captions has 3 captions, more than K = 2"),
        ("syn_captions", ["only one"], r"text_emb rows 2..2 must be zero \(the sample has 1 of K = 2"),
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


def test_rows_with_fewer_synthetic_captions_keep_zero_text_rows(tmp_path):
    metadata = make_metadata(k=3)
    examples = make_examples(metadata, 3)
    for example, count in zip(examples, (3, 1, 0)):  # a full row, a short row and a row without any
        example["syn_captions"] = example["syn_captions"][:count]
        example["text_emb"][1 + count:] = 0
    write_parquet_shard(examples, metadata, tmp_path / shard_filename("train", 0, 0))
    write_dataset_card(tmp_path, metadata, {"train": 3})
    rows = {row["uid"]: row for row in datasets.load_dataset(str(tmp_path), split="train")}
    for example in examples:
        row = rows[example["uid"]]
        assert row["syn_captions"] == example["syn_captions"]
        np.testing.assert_array_equal(np.asarray(row["text_emb"], np.float16), example["text_emb"])
    assert "up to 3 synthetic captions" in (tmp_path / "README.md").read_text()

    # Packing consecutive samples' caption rows (what the pipeline does) gives the same layout.
    flat = np.concatenate([e["text_emb"][: 1 + len(e["syn_captions"])] for e in examples])
    packed = pack_text_embeddings(flat, [4, 2, 1], 3)
    np.testing.assert_array_equal(packed, np.stack([e["text_emb"] for e in examples]))
    with pytest.raises(ValueError, match="Cannot pack 7 caption embeddings as rows"):
        pack_text_embeddings(flat, [5, 1, 1], 3)


def scaled_metadata(*scales):
    return ReinforcementMetadata(
        teachers=[TeacherInfo(f"open_clip:t{i}:none", 4, scale) for i, scale in enumerate(scales)],
        num_augmentations=2, num_synthetic_captions=0, augmentation=AugmentationConfig(size=64), seed=7,
    )


def strip_logit_scales(front_matter: str) -> str:
    """The card as written before learned logit scales were recorded (teachers: spec and dim only)."""
    import yaml

    values = yaml.safe_load(front_matter)
    for teacher in values["datacompdr"]["teachers"]:
        del teacher["logit_scale"]
    return yaml.safe_dump(values, sort_keys=False)


def test_learned_logit_scales_are_recorded_in_the_card(tmp_path):
    recorded = scaled_metadata(14.6, 100.0)
    write_dataset_card(tmp_path, recorded, {"train": 0})
    loaded = load_reinforcement_metadata(tmp_path)
    assert loaded == recorded and loaded.teacher_logit_scales == [14.6, 100.0]
    card = (tmp_path / "README.md").read_text()
    assert "| # | teacher | dim | learned logit scale |" in card
    assert "| 0 | `open_clip:t0:none` | 4 | 14.6 |" in card and "| 1 | `open_clip:t1:none` | 4 | 100 |" in card

    partial = tmp_path / "partial"
    write_dataset_card(partial, scaled_metadata(14.6, None), {"train": 0})
    assert load_reinforcement_metadata(partial).teacher_logit_scales is None  # not all teachers have one
    assert "| 1 | `open_clip:t1:none` | 4 | - |" in (partial / "README.md").read_text()

    # A card written before the scales were recorded still loads: every scale unknown.
    old = tmp_path / "old"
    old.mkdir()
    _, front, body = card.split("---\n", 2)
    (old / "README.md").write_text("---\n" + strip_logit_scales(front) + "---\n" + body)
    old_metadata = load_reinforcement_metadata(old)
    assert [t.logit_scale for t in old_metadata.teachers] == [None, None]
    assert old_metadata.teacher_logit_scales is None and old_metadata.teacher_dims == [4, 4]


def test_resuming_compares_logit_scales_only_when_both_runs_recorded_them():
    old_run = {**scaled_metadata(None, None).to_dict()}
    for teacher in old_run["teachers"]:  # metadata.json of an output started before the scales were recorded
        del teacher["logit_scale"]
    requested = scaled_metadata(14.6, 100.0)
    assert requested.resume_mismatches(ReinforcementMetadata.from_dict(old_run)) == []
    assert requested.resume_mismatches(scaled_metadata(14.6, 100.0)) == []
    assert requested.resume_mismatches(scaled_metadata(14.6 * (1 + 1e-7), 100.0)) == []  # exp() on another device
    changed = requested.resume_mismatches(scaled_metadata(14.6, 50.0))
    assert len(changed) == 1 and changed[0].startswith("teachers:") and "50.0" in changed[0]
    other_spec = ReinforcementMetadata(
        teachers=[TeacherInfo("open_clip:t0:none", 4, 14.6), TeacherInfo("open_clip:other:none", 4, 100.0)],
        num_augmentations=2, num_synthetic_captions=0, augmentation=AugmentationConfig(size=64), seed=7,
    )
    assert requested.resume_mismatches(other_spec)[0].startswith("teachers:")
