"""Training view: replayed student views, caption draws and matching float16 teacher targets."""

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dataset_scripts.augmentation import (  # noqa: E402
    AugmentationConfig,
    AugmentationParams,
    apply_augmentation,
    sample_augmentation,
)
from dataset_scripts.dr_format import (  # noqa: E402
    ReinforcementMetadata,
    TeacherInfo,
    shard_filename,
    write_dataset_card,
    write_parquet_shard,
)
from dataset_scripts.training_view import ReinforcedTrainingView, load_reinforced_dataset  # noqa: E402

N, K, DIMS = 4, 3, (6, 2)


def build_dataset(root, num_synthetic=K, rows_per_shard=(5, 4), syn_counts=None):
    """Embeddings encode their own position: image_emb[a] = sample + a/10, text_emb[t] = -(sample + t/10).

    `syn_counts[i]`: sample i has only that many synthetic captions (text_emb rows beyond are zero)."""
    metadata = ReinforcementMetadata(
        teachers=[TeacherInfo("open_clip:a:none", DIMS[0]), TeacherInfo("hf:b", DIMS[1])], num_augmentations=N,
        num_synthetic_captions=num_synthetic, augmentation=AugmentationConfig(size=224), seed=0,
    )
    index = 0
    for unit, count in enumerate(rows_per_shard):
        examples = []
        for _ in range(count):
            rng = np.random.default_rng(index)
            image = Image.fromarray(rng.integers(0, 255, (90 + index, 120, 3), dtype=np.uint8))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=95)
            generator = torch.Generator().manual_seed(index)
            params = [sample_augmentation(image.height, image.width, metadata.augmentation, generator)
                      for _ in range(N)]
            count = num_synthetic if syn_counts is None else syn_counts[index]
            text_emb = np.array([[-(index + t / 10)] * sum(DIMS) for t in range(1 + num_synthetic)])
            text_emb[1 + count:] = 0
            examples.append({
                "uid": f"u{index}", "image": buffer.getvalue(), "caption": f"a photo number {index}",
                "syn_captions": [f"synthetic caption {index} {j}" for j in range(count)],
                "aug_params": [p.to_json() for p in params],
                "image_emb": np.array([[index + a / 10] * sum(DIMS) for a in range(N)]),
                "text_emb": text_emb,
            })
            index += 1
        write_parquet_shard(examples, metadata, root / shard_filename("train", unit, 0))
    write_dataset_card(root, metadata, {"train": index})
    return metadata


@pytest.fixture(scope="module")
def reinforced(tmp_path_factory):
    root = tmp_path_factory.mktemp("reinforced")
    build_dataset(root)
    return root


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-16")


def index_of(uid):
    return int(uid[1:])


def check_sample(sample, row, tokenizer):
    index = index_of(sample["uid"])
    aug, syn = sample["aug_index"], sample["syn_index"]
    assert 0 <= aug < N and 0 <= syn < K
    assert sample["image_emb"].dtype == torch.float16 and sample["image_emb"].shape == (sum(DIMS),)
    assert torch.allclose(sample["image_emb"].float(), torch.tensor(index + aug / 10), atol=2e-2)
    assert torch.allclose(sample["text_emb"].float(), torch.tensor(-float(index)), atol=2e-2)
    assert torch.allclose(sample["syn_text_emb"].float(), torch.tensor(-(index + (1 + syn) / 10)), atol=2e-2)
    assert torch.equal(sample["input_ids"], tokenizer([row["caption"]])[0])
    assert torch.equal(sample["syn_input_ids"], tokenizer([row["syn_captions"][syn]])[0])
    assert sample["caption"] == row["caption"] and sample["syn_caption"] == row["syn_captions"][syn]
    expected_view = apply_augmentation(row["image"].convert("RGB"), AugmentationParams.from_json(row["aug_params"][aug]),
                                       256, "bilinear", reference_size=224)
    expected = torch.from_numpy(np.array(expected_view)).permute(2, 0, 1)
    assert sample["views"].dtype == torch.uint8  # normalisation happens once, on the device (training/step.py)
    assert torch.equal(sample["views"], expected)


def test_view_replays_stored_augmentation_and_selects_matching_targets(reinforced, tokenizer):
    dataset, metadata = load_reinforced_dataset(str(reinforced))
    config = type("Config", (), {"image_size": 256, "resample": "bilinear"})()
    view = ReinforcedTrainingView.from_model_config(config, tokenizer, metadata, seed=3)
    assert view.reference_size == 224 and view.synthetic
    rows = dataset.with_format("arrow")
    for i in range(len(dataset)):
        check_sample(view(rows[i], epoch=0), dataset[i], tokenizer)


def test_draws_depend_on_seed_epoch_and_uid_only(reinforced, tokenizer):
    dataset, _ = load_reinforced_dataset(str(reinforced))
    rows = dataset.with_format("arrow")
    view = ReinforcedTrainingView(tokenizer, image_size=32, seed=0)

    def draws(epoch, order):
        samples = (view(rows[i], epoch) for i in order)
        return {s["uid"]: (s["aug_index"], s["syn_index"]) for s in samples}

    epoch0 = draws(0, range(9))
    assert draws(0, reversed(range(9))) == epoch0 and len(epoch0) == 9  # reading order does not matter
    epoch1 = draws(1, range(9))
    assert epoch1 != epoch0 and set(epoch1) == set(epoch0)
    assert draws(0, range(9)) == epoch0
    view = ReinforcedTrainingView(tokenizer, image_size=32, seed=1)
    assert draws(0, range(9)) != epoch0  # another seed, other draws
    view = ReinforcedTrainingView(tokenizer, image_size=32, seed=0)
    # All augmentations and synthetic captions get drawn over epochs.
    seen = {(view(rows[0], epoch)["aug_index"], view(rows[0], epoch)["syn_index"]) for epoch in range(12)}
    assert {a for a, _ in seen} == set(range(N)) and {s for _, s in seen} == set(range(K))


def test_streamed_rows_give_the_map_style_samples(reinforced, tokenizer):
    dataset, _ = load_reinforced_dataset(str(reinforced))
    stream, _ = load_reinforced_dataset(str(reinforced), streaming=True)
    view = ReinforcedTrainingView(tokenizer, image_size=64, seed=5)
    rows = dataset.with_format("arrow")
    map_samples = {s["uid"]: s for s in (view(rows[i], 2) for i in range(len(dataset)))}
    streamed = {s["uid"]: s for s in (view(row, 2) for row in stream.with_format("arrow"))}
    assert set(streamed) == set(map_samples)
    for uid, sample in streamed.items():
        for key in ("views", "image_emb", "text_emb", "syn_text_emb", "input_ids", "syn_input_ids"):
            assert torch.equal(sample[key], map_samples[uid][key]), (uid, key)


def test_random_caption_mode_and_datasets_without_synthetic_captions(tmp_path, tokenizer):
    build_dataset(tmp_path, num_synthetic=0, rows_per_shard=(3,))
    dataset, metadata = load_reinforced_dataset(str(tmp_path))
    view = ReinforcedTrainingView(tokenizer, image_size=32, synthetic=metadata.num_synthetic_captions > 0)
    rows = dataset.with_format("arrow")
    sample = view(rows[1], 0)
    assert "syn_input_ids" not in sample and sample["syn_index"] == -1
    assert torch.allclose(sample["text_emb"].float(), torch.tensor(-1.0), atol=1e-2)
    assert sample["input_ids"].shape == (77,) and sample["text_emb"].shape == (sum(DIMS),)

    build_dataset(tmp_path / "k3", rows_per_shard=(2,))
    dataset, _ = load_reinforced_dataset(str(tmp_path / "k3"))
    view = ReinforcedTrainingView(tokenizer, image_size=32, caption_mode="random")
    choices = set()
    for epoch in range(20):
        sample = view(dataset.with_format("arrow")[0], epoch)
        row = dataset[0]
        choice = sample["syn_index"] + 1
        text = row["caption"] if choice == 0 else row["syn_captions"][choice - 1]
        assert torch.equal(sample["input_ids"], tokenizer([text])[0]) and "syn_input_ids" not in sample
        assert torch.allclose(sample["text_emb"].float(), torch.tensor(-choice / 10), atol=1e-2)
        choices.add(choice)
    assert choices == set(range(1 + K))
    with pytest.raises(ValueError, match="caption_mode"):
        ReinforcedTrainingView(tokenizer, caption_mode="gt")


def test_view_accepts_decoded_rows(reinforced, tokenizer):
    dataset, _ = load_reinforced_dataset(str(reinforced))
    view = ReinforcedTrainingView(tokenizer, image_size=48, seed=1)
    from_table = view(dataset.with_format("arrow")[4], 0)
    from_dict = view(dataset[4], 0)  # python format: PIL image, nested lists
    for key in ("views", "image_emb", "text_emb", "syn_text_emb", "input_ids"):
        assert torch.equal(from_table[key], from_dict[key]), key


def test_rows_with_fewer_synthetic_captions_draw_only_their_own(tmp_path, tokenizer):
    """K = 3, but sample 1 has one synthetic caption and sample 2 none (their text_emb rows beyond are zero)."""
    build_dataset(tmp_path, rows_per_shard=(3,), syn_counts=[3, 1, 0])
    dataset, metadata = load_reinforced_dataset(str(tmp_path))
    rows = dataset.with_format("arrow")
    both = ReinforcedTrainingView.from_model_config(
        type("Config", (), {"image_size": 32})(), tokenizer, metadata)
    random = ReinforcedTrainingView(tokenizer, image_size=32, caption_mode="random")
    drawn = {(mode, i): set() for mode in ("both", "random") for i in range(3)}
    for epoch in range(40):
        samples = [both(rows[i], epoch) for i in range(3)]
        # The sample without synthetic captions still has a B_syn caption, so the batch stacks.
        assert all(s["syn_input_ids"].shape == (77,) and s["syn_text_emb"].shape == (sum(DIMS),) for s in samples)
        for i, sample in enumerate(samples):
            syn = sample["syn_index"]
            # Sample 2 has no synthetic caption: its ground truth stands in (syn_index -1, text_emb row 0).
            text = dataset[i]["syn_captions"][syn] if syn >= 0 else dataset[i]["caption"]
            assert torch.equal(sample["syn_input_ids"], tokenizer([text])[0])
            assert torch.allclose(sample["syn_text_emb"].float(), torch.tensor(-(i + (1 + syn) / 10)), atol=2e-2)
            drawn["both", i].add(syn)
            sample = random(rows[i], epoch)
            choice = sample["syn_index"] + 1
            text = dataset[i]["caption"] if choice == 0 else dataset[i]["syn_captions"][choice - 1]
            assert torch.equal(sample["input_ids"], tokenizer([text])[0])
            assert torch.allclose(sample["text_emb"].float(), torch.tensor(-(i + choice / 10)), atol=2e-2)
            drawn["random", i].add(choice)
    assert drawn["both", 0] == {0, 1, 2} and drawn["both", 1] == {0} and drawn["both", 2] == {-1}
    assert drawn["random", 0] == {0, 1, 2, 3} and drawn["random", 1] == {0, 1} and drawn["random", 2] == {0}
