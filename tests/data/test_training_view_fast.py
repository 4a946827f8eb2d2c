"""The training view after issue 22 against the PIL replay before it: bit-equal views by default.

The oracle is the replay before issue 22: PIL decodes the bytes and converts a copy to RGB, `apply_augmentation`
crops, resizes and applies the stored RandAugment ops with torchvision's PIL functional API, `pil_to_tensor`
converts. Datasets reinforced before the change must train on the same views, so the default path must give the
same bytes. The opt-in `fast_resize` and `reduce_on_decode` are measured against the same oracle: the test records
by how much they differ (per op for `fast_resize`, whose resized crop alone is within 1/255).
"""

import io
import os
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.io import decode_jpeg  # noqa: E402
from torchvision.transforms.functional import pil_to_tensor  # noqa: E402

from dataset_scripts.augmentation import (  # noqa: E402
    RAND_AUGMENT_OPS,
    AugmentationConfig,
    AugmentationParams,
    _magnitude_table,
    apply_augmentation,
    sample_augmentation,
)
from dataset_scripts.training_view import ReinforcedTrainingView  # noqa: E402
from modeling_mobileclip import MobileCLIPProcessor  # noqa: E402
from training.data import Collator  # noqa: E402

EMOJI = Path(__file__).resolve().parents[2] / "dataset_scripts" / "data" / "emoji"
JPEG_SIZES = [(360, 640), (480, 480), (640, 360), (1024, 768), (150, 200)]  # (height, width); the last upsamples
SIZE, REFERENCE_SIZE = 256, 224


def textured_jpeg(height: int, width: int, seed: int, quality: int = 90) -> bytes:
    """Smooth colour fields, sharp edges and strong noise: the worst case for rounding differences."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (height // 24 + 1, width // 24 + 1, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    pixels[:, width // 3: width // 3 + 4] = 255  # a hard edge
    pixels = pixels + rng.integers(-40, 40, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def reference_view(data: bytes, params: AugmentationParams, interpolation: str = "bilinear") -> torch.Tensor:
    image = Image.open(io.BytesIO(data))
    image.load()
    return pil_to_tensor(apply_augmentation(image.convert("RGB"), params, SIZE, interpolation, REFERENCE_SIZE))


def one_augmentation_row(data: bytes, params: AugmentationParams) -> dict:
    """A reinforced row with a single stored augmentation, so the view replays exactly `params`."""
    return {"uid": "u", "image": {"bytes": data, "path": None}, "caption": "a caption", "syn_captions": ["syn"],
            "aug_params": [params.to_json()], "image_emb": np.zeros((1, 4), np.float16),
            "text_emb": np.zeros((2, 4), np.float16)}


def replayed(view: ReinforcedTrainingView, data: bytes, params: AugmentationParams) -> torch.Tensor:
    return view(one_augmentation_row(data, params), 0)["views"]


def max_difference(a: torch.Tensor, b: torch.Tensor) -> int:
    assert a.shape == b.shape == (3, SIZE, SIZE) and a.dtype == b.dtype == torch.uint8
    return int((a.int() - b.int()).abs().max())


def no_tokens(texts):
    return torch.zeros(len(texts), 4, dtype=torch.long)


@pytest.fixture(scope="module")
def view():
    return ReinforcedTrainingView(no_tokens, image_size=SIZE, reference_size=REFERENCE_SIZE)


@pytest.fixture(scope="module")
def fast_resize_view():
    return ReinforcedTrainingView(no_tokens, image_size=SIZE, reference_size=REFERENCE_SIZE, fast_resize=True)


# Ops that move or keep pixels without changing values: a resized crop within 1 stays within 1 through them.
VALUE_PRESERVING_OPS = {"Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}


def explicit_ops() -> list[tuple[str, float]]:
    """Every RandAugment op at DataCompDR's magnitude (bin 9 of 31), both signs, and at the extreme bin."""
    ops = [("Identity", 0.0), ("AutoContrast", 0.0), ("Equalize", 0.0)]
    for bin_index in (9, 30):
        table = _magnitude_table(31, (REFERENCE_SIZE, REFERENCE_SIZE))
        for name, values in table.items():
            magnitude = float(values[bin_index])
            if name == "Posterize":
                ops.append((name, int(magnitude)))
            elif name == "Solarize":
                ops.append((name, magnitude))
            else:
                ops += [(name, magnitude), (name, -magnitude)]
    return ops


def test_every_op_with_explicit_params(view, fast_resize_view, capsys):
    per_op = defaultdict(int)
    for seed, (height, width) in enumerate(JPEG_SIZES):
        data = textured_jpeg(height, width, seed)
        crops = [(0, 0, height, width), (height // 5, width // 7, height // 2, width // 3),
                 (height - 90, width - 110, 90, 110)]  # whole image, a downscaled crop, an upsampled corner
        for crop in crops:
            for op in explicit_ops():
                params = AugmentationParams(crop=crop, ops=(op,))
                reference = reference_view(data, params)
                assert torch.equal(replayed(view, data, params), reference), (height, width, crop, op)
                per_op[op[0]] = max(per_op[op[0]], max_difference(replayed(fast_resize_view, data, params),
                                                                 reference))
    with capsys.disabled():
        print("\nfast_resize (opt-in): max |view - PIL replay| per op (uint8):", dict(per_op))
    assert set(per_op) == set(RAND_AUGMENT_OPS)
    assert max(per_op[name] for name in VALUE_PRESERVING_OPS) <= 1, dict(per_op)


@pytest.mark.parametrize("height,width", JPEG_SIZES)
def test_sampled_augmentations_bit_equal(view, height, width):
    data = textured_jpeg(height, width, height * width)
    generator = torch.Generator().manual_seed(height + width)
    seen_ops = set()
    for _ in range(60):
        params = sample_augmentation(height, width, AugmentationConfig(), generator)
        seen_ops.update(name for name, _ in params.ops)
        assert torch.equal(replayed(view, data, params), reference_view(data, params)), params
    assert len(seen_ops) >= 10  # the draws exercise most ops; the explicit test covers all of them


@pytest.mark.parametrize("height,width", JPEG_SIZES)
def test_torchvision_decode_equals_pils(height, width):
    """`fast_resize` decodes with torchvision's libjpeg-turbo; it must give PIL's pixels."""
    data = textured_jpeg(height, width, 3)
    pil = pil_to_tensor(Image.open(io.BytesIO(data)).convert("RGB"))
    assert torch.equal(decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)), pil)


def test_fast_resize_crop_within_one_and_really_approximate(fast_resize_view):
    """Without ops the opt-in split resize is within 1 of PIL's, and differs somewhere (it is really taken)."""
    data = textured_jpeg(480, 480, 7)
    differences = []
    for top in range(0, 200, 20):
        params = AugmentationParams(crop=(top, 10, 400 - top, 390), ops=())
        differences.append(max_difference(replayed(fast_resize_view, data, params), reference_view(data, params)))
    assert max(differences) == 1


def test_reduce_on_decode_shows_the_same_content(capsys):
    """The opt-in DCT-scaled decode is not equal (reported), but shows the same crop: small mean difference."""
    reduced = ReinforcedTrainingView(no_tokens, image_size=SIZE, reference_size=REFERENCE_SIZE,
                                     reduce_on_decode=True)
    data = textured_jpeg(1024, 768, 5)
    worst, mean = 0, []
    for crop in [(0, 0, 1024, 768), (100, 50, 600, 600), (300, 200, 520, 530)]:
        params = AugmentationParams(crop=crop, ops=())
        view, reference = replayed(reduced, data, params), reference_view(data, params)
        worst = max(worst, max_difference(view, reference))
        mean.append(float((view.float() - reference.float()).abs().mean()))
    small = AugmentationParams(crop=(10, 10, 300, 300), ops=())  # no 1/2 scale keeps 256 px: not reduced
    assert torch.equal(replayed(reduced, data, small), reference_view(data, small))
    with capsys.disabled():
        print(f"\nreduce_on_decode (opt-in): max |view - PIL replay| {worst}, mean {max(mean):.2f} (uint8)")
    assert max(mean) < 8


def test_emoji_png_and_jpeg_bit_equal(view):
    """The bundled emoji (PNG, RGBA) keep PIL's decode; the same pictures as JPEGs take torchvision's."""
    emoji = datasets.load_dataset(str(EMOJI), "twitter", split="train")
    emoji = emoji.cast_column("image", datasets.Image(decode=False)).select(range(0, 1900, 50))
    generator = torch.Generator().manual_seed(0)
    for record in emoji:
        png = record["image"]["bytes"]
        image = Image.open(io.BytesIO(png))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=90)
        for _ in range(4):
            params = sample_augmentation(image.height, image.width, AugmentationConfig(), generator)
            assert torch.equal(replayed(view, png, params), reference_view(png, params))
            jpeg = buffer.getvalue()
            assert torch.equal(replayed(view, jpeg, params), reference_view(jpeg, params))


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs_keep_pils_conversion(view, mode):
    rgb = Image.open(io.BytesIO(textured_jpeg(300, 400, 3)))
    buffer = io.BytesIO()
    rgb.convert(mode).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    generator = torch.Generator().manual_seed(1)
    for _ in range(10):
        params = sample_augmentation(300, 400, AugmentationConfig(), generator)
        assert torch.equal(replayed(view, data, params), reference_view(data, params))


def test_bicubic_students_keep_the_exact_path_even_with_fast_resize():
    bicubic = ReinforcedTrainingView(no_tokens, image_size=SIZE, interpolation="bicubic",
                                     reference_size=REFERENCE_SIZE, fast_resize=True)
    data = textured_jpeg(360, 640, 11)
    generator = torch.Generator().manual_seed(2)
    for _ in range(10):
        params = sample_augmentation(360, 640, AugmentationConfig(), generator)
        assert torch.equal(replayed(bicubic, data, params), reference_view(data, params, "bicubic"))


@pytest.mark.parametrize("caption_mode", ["both", "random"])
def test_collator_tokens_equal_per_sample_tokens(caption_mode):
    """Training leaves tokenization to the collator (one call per batch): the ids must be the per-sample ones."""
    tokenizer = MobileCLIPProcessor.from_variant("mobileclip-s0").tokenizer
    data = textured_jpeg(200, 240, 1)
    rows = []
    for index in range(12):
        row = one_augmentation_row(data, AugmentationParams(crop=(0, 0, 200, 240)))
        row.update(uid=f"u{index}", caption=f"photo {index} of a red {'long ' * index}bus",
                   syn_captions=[f"synthetic {index} {j}" for j in range(3)], text_emb=np.zeros((4, 4), np.float16))
        rows.append(row)
    settings = dict(image_size=64, reference_size=REFERENCE_SIZE, caption_mode=caption_mode)
    per_sample = [ReinforcedTrainingView(tokenizer, **settings)(row, 3) for row in rows]
    batch = Collator(tokenizer)([ReinforcedTrainingView(tokenizer, tokenize_captions=False, **settings)(row, 3)
                                 for row in rows])
    keys = ["input_ids", "syn_input_ids"] if caption_mode == "both" else ["input_ids"]
    for key in keys:
        assert torch.equal(batch[key], torch.stack([sample[key] for sample in per_sample]))
    assert "syn_input_ids" not in batch or caption_mode == "both"
