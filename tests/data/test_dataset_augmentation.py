"""Augmentation record/replay: torchvision is the oracle for sampling and for every RandAugment operation."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F
from torchvision.transforms.autoaugment import _apply_op

from dataset_scripts.augmentation import (
    RAND_AUGMENT_OPS,
    AugmentationConfig,
    AugmentationParams,
    apply_augmentation,
    apply_rand_augment_op,
    sample_augmentation,
)
from dataset_scripts.official import parse_official_sample


# Entries in the official DataCompDR `paug.json` form (the first is the example from Apple's data card).
OFFICIAL_PAUG = (
    '{"param_aug": [[[23, 47, 235, 274], [[9, -0.27], [3, -30.45]]], '
    '[[0, 0, 120, 90], [[10, 7], [11, 178.5]]], [[5, 9, 64, 64], [[5, 9.0], [4, 30.45]]]]}'
)


def random_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    # Smooth gradients plus noise, so resampling filters and geometric ops all change pixels.
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (height + width)], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def pixels(image):
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("shape", [(180, 240), (300, 40)])  # 300x40 forces RandomResizedCrop's fallback crop
def test_sampling_matches_torchvision_and_replay_is_exact(shape):
    image = random_image(*shape)
    oracle = T.Compose([T.RandomResizedCrop(224, interpolation=T.InterpolationMode.BICUBIC), T.RandAugment()])
    config = AugmentationConfig()
    for seed in range(40):
        torch.manual_seed(seed)
        expected = oracle(image)
        torch.manual_seed(seed)
        params = sample_augmentation(image.height, image.width, config)
        replayed = apply_augmentation(image, AugmentationParams.from_json(params.to_json()), 224)
        assert np.array_equal(pixels(replayed), pixels(expected)), (seed, params)
        assert len(params.ops) == 2 and params.crop[2] <= shape[0] and params.crop[3] <= shape[1]


def test_sampling_is_deterministic_per_generator_and_varies_across_seeds():
    config = AugmentationConfig()
    draw = lambda seed: sample_augmentation(100, 120, config, torch.Generator().manual_seed(seed))  # noqa: E731
    assert draw(3) == draw(3)
    assert len({draw(seed).to_json() for seed in range(20)}) == 20


@pytest.mark.parametrize("name", RAND_AUGMENT_OPS)
def test_each_operation_matches_torchvision(name):
    image = random_image(64, 64, seed=1)
    magnitude = {"Posterize": 5, "Solarize": 140.0, "TranslateX": -13.6, "TranslateY": 9.2}.get(name, -0.21)
    if name == "Rotate":
        magnitude = 17.0
    expected = _apply_op(image, name, magnitude, interpolation=T.InterpolationMode.NEAREST, fill=None)
    assert np.array_equal(pixels(apply_rand_augment_op(image, name, magnitude)), pixels(expected))


def test_replay_at_student_size_rescales_translations():
    image = random_image(200, 260, seed=2)
    params = AugmentationParams(crop=(10, 20, 150, 180), ops=(("TranslateX", -30.45), ("Brightness", 0.27)))
    view = apply_augmentation(image, params, 256, "bilinear", reference_size=224)
    expected = F.resized_crop(image, 10, 20, 150, 180, [256, 256], interpolation=T.InterpolationMode.BILINEAR)
    expected = _apply_op(expected, "TranslateX", -30.45 * 256 / 224, T.InterpolationMode.NEAREST, None)
    expected = _apply_op(expected, "Brightness", 0.27, T.InterpolationMode.NEAREST, None)
    assert view.size == (256, 256)
    assert np.array_equal(pixels(view), pixels(expected))
    again = apply_augmentation(image, params, 256, "bilinear", reference_size=224)
    assert np.array_equal(pixels(again), pixels(view))
    unscaled = apply_augmentation(image, params, 256, "bilinear", reference_size=None)
    assert not np.array_equal(pixels(unscaled), pixels(view))  # Apple's behaviour: shift kept in 224-px units


def official_params(paug_json: str) -> list[AugmentationParams]:
    """The augmentations of an official sample's paug.json, as the official-shard reader parses them."""
    embeddings = io.BytesIO()
    np.savez(embeddings, image_emb=np.zeros((1, 2), np.float32), text_emb=np.zeros((1, 2), np.float32))
    sample = parse_official_sample("k", {"paug.json": paug_json.encode(), "npz": embeddings.getvalue()})
    return [AugmentationParams.from_json(p) for p in sample["aug_params"]]


def test_official_param_aug_round_trip_and_replay():
    params = official_params(OFFICIAL_PAUG)
    assert params[0].crop == (23, 47, 235, 274)
    assert params[0].ops == (("Sharpness", -0.27), ("TranslateX", -30.45))
    assert params[1].ops == (("Posterize", 7), ("Solarize", 178.5))
    assert json.loads(json.dumps([p.compress() for p in params])) == json.loads(OFFICIAL_PAUG)["param_aug"]
    for entry, p in zip(json.loads(OFFICIAL_PAUG)["param_aug"], params):
        assert p.to_json() == json.dumps(entry)
    # Replay equals cropping the box and applying torchvision's own operations with the stored magnitudes.
    image = random_image(320, 400, seed=3)
    expected = F.resized_crop(image, 23, 47, 235, 274, [224, 224], interpolation=T.InterpolationMode.BICUBIC)
    for name, magnitude in params[0].ops:
        expected = _apply_op(expected, name, magnitude, T.InterpolationMode.NEAREST, None)
    assert np.array_equal(pixels(apply_augmentation(image, params[0], 224)), pixels(expected))
    # The Hub Parquet view stores `param_aug` as a JSON string.
    as_string = json.dumps({"param_aug": json.dumps(json.loads(OFFICIAL_PAUG)["param_aug"])})
    assert official_params(as_string) == params


def test_crop_only_round_trip_and_config_round_trip():
    params = AugmentationParams.decompress([[1, 2, 3, 4]])
    assert params.ops == () and params.compress() == [[1, 2, 3, 4]]
    config = AugmentationConfig(size=64, rand_augment=False)
    assert AugmentationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert sample_augmentation(50, 50, config, torch.Generator().manual_seed(0)).compress()[1:] == []


@pytest.mark.parametrize(
    "bad, message",
    [
        ([["mixup"], [1, 2, 3, 4], []], "mixup"),
        ([["a", 2, 3, 4]], "crop box"),
        ([[1, 2, 3]], "crop box"),
        ([[1, 2, 3, 4], [[14, 0.5]]], "op_index"),
        ([1, 2, 3, 4, 5], "mixup"),
    ],
)
def test_malformed_entries_raise_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        AugmentationParams.decompress(bad)


def test_missing_param_aug_key_is_reported():
    with pytest.raises(ValueError, match="malformed json/syn.json/paug.json"):
        official_params('{"params": []}')
