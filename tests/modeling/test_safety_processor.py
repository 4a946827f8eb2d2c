"""Reliability of the MobileCLIP processor on hostile or unusual inputs: extreme aspect ratios (bounded memory),
16-bit / float images (mapped by their real range) and empty caption lists.

Oracles: open_clip's eval transform and `open_clip.tokenize` (peers), numpy formulas computed from the raw pixel
values, and the process's own peak RSS / tracemalloc counters."""

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transform import image_transform
from PIL import Image

from modeling_mobileclip.configuration_mobileclip import variant_preset
from modeling_mobileclip.processing_mobileclip import MobileCLIPImageProcessor, MobileCLIPProcessor

from conftest import REPO_ROOT



VARIANT = "mobileclip2-s0"  # bilinear at 256, no mean/std: the plainest open_clip transform
OPEN_CLIP_NAME = ("MobileCLIP2-S0", "dfndr2b")


def _open_clip_transform(variant=VARIANT, names=OPEN_CLIP_NAME):
    cfg = open_clip.get_pretrained_cfg(*names)
    return image_transform(
        variant_preset(variant)["vision_config"]["image_size"],
        is_train=False,
        mean=cfg["mean"],
        std=cfg["std"],
        interpolation=cfg["interpolation"],
        resize_mode=cfg["resize_mode"],
    )


def _png_roundtrip(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return Image.open(io.BytesIO(buffer.getvalue()))


# ---------------------------------------------------------------------------------------------- bounded memory

# Runs in a fresh interpreter: ru_maxrss is a process-wide high-water mark, so the increase it shows over a warmed-up
# baseline is the peak of this one call. Before the fix the 20000x1 call peaked at ~13.6 GB (a 5,120,000x256 RGB
# resize plus its copies).
_MEMORY_PROBE = textwrap.dedent(
    """
    import io, json, resource, sys, tracemalloc
    import numpy as np
    from PIL import Image
    from modeling_mobileclip.processing_mobileclip import MobileCLIPImageProcessor

    width, height = int(sys.argv[1]), int(sys.argv[2])
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    image = Image.open(io.BytesIO(buffer.getvalue()))
    processor = MobileCLIPImageProcessor.from_variant("mobileclip2-s0")
    processor(Image.new("RGB", (300, 200)), return_tensors="np")  # warm-up: lazy imports and caches
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    result = {"png_bytes": len(buffer.getvalue())}
    try:
        result["shape"] = list(processor(image, return_tensors="np")["pixel_values"].shape)
    except ValueError as error:
        result["error"] = str(error)
    result["traced_peak"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    result["rss_increase"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # KiB on Linux
    print(json.dumps(result))
    """
)


def _probe_memory(width, height):
    completed = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(width), str(height)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
@pytest.mark.parametrize("width,height", [(20000, 1), (1, 20000)])
@pytest.mark.slow
def test_extreme_aspect_ratio_is_refused_clearly_within_bounded_memory(width, height):
    result = _probe_memory(width, height)
    assert result["png_bytes"] < 100_000  # a tiny file: the memory would all come from the processing
    assert "shape" not in result, "a 20000:1 image must be refused, not resized to 5,120,000 x 256"
    message = result["error"]
    for fragment in (f"{width}x{height} pixels", "aspect ratio of 20000.0:1", "limit of 64:1", "Crop or pad"):
        assert fragment in message, message
    resized = "5120000x256" if width > height else "256x5120000"
    assert resized in message, message
    assert result["rss_increase"] < 2**30, result  # the bound; in practice ~0 (nothing large is allocated)
    assert result["traced_peak"] < 10 * 2**20, result


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
@pytest.mark.slow
def test_ordinary_image_uses_little_memory():
    result = _probe_memory(300, 200)
    assert result["shape"] == [1, 3, 256, 256]
    # 384x256 resized RGB image and its float32 crop: a few MB, not the 0.94 GB process size the issue quoted.
    assert result["traced_peak"] < 20 * 2**20, result
    assert result["rss_increase"] < 100 * 2**20, result


def test_ordinary_and_limit_aspect_ratios_stay_bit_identical_to_open_clip():
    rng = np.random.default_rng(0)
    # 300x200 (the example), exactly 64:1 both ways (the largest accepted), and 1-pixel-wide at 64:1
    shapes = [(300, 200), (640, 10), (10, 640), (64, 1)]
    images = [
        _png_roundtrip(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))
        for width, height in shapes
    ]
    transform = _open_clip_transform()
    ours = MobileCLIPImageProcessor.from_variant(VARIANT)(images, return_tensors="pt")["pixel_values"]
    assert torch.equal(ours, torch.stack([transform(image) for image in images]))


def test_aspect_ratio_just_above_the_limit_is_refused_and_the_limit_can_be_raised():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (10, 641, 3), dtype=np.uint8))
    processor = MobileCLIPImageProcessor.from_variant(VARIANT)
    with pytest.raises(ValueError, match=r"641x10 pixels .* aspect ratio of 64\.1:1, above the limit of 64:1"):
        processor(image)
    processor.max_aspect_ratio = 100  # an explicit opt-in gives open_clip's output again
    assert torch.equal(
        processor(image, return_tensors="pt")["pixel_values"][0], _open_clip_transform()(image)
    )


# ------------------------------------------------------------------------------------------ 16-bit and float


def _expected_pixels(gray_uint8):
    """ToTensor of an 8-bit grayscale image converted to RGB: value / 255 in float32, three equal channels."""
    channel = torch.from_numpy(gray_uint8).float().div(255)
    return torch.stack([channel] * 3)


def test_16bit_png_is_scaled_by_its_full_range():
    rng = np.random.default_rng(2)
    values = rng.integers(0, 65536, (256, 256), dtype=np.uint16)  # 256x256: no resize, no crop at 256
    values[0, :4] = [0, 257 * 100, 65535, 128]  # 257 * k is the 8 -> 16 bit expansion of k: must give k back
    image = _png_roundtrip(Image.fromarray(values))
    assert image.mode == "I;16"
    pixels = MobileCLIPImageProcessor.from_variant(VARIANT)(image, return_tensors="pt")["pixel_values"][0]
    expected = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)  # no exact .5 case exists
    assert expected[0, :4].tolist() == [0, 100, 255, 0]
    assert torch.equal(pixels, _expected_pixels(expected))
    # what PIL's own RGB conversion does (the old behaviour): clip, so nearly every pixel becomes 1.0
    assert (np.asarray(image.convert("RGB"))[..., 0] == 255).mean() > 0.99


def test_16bit_image_that_needs_resizing_matches_open_clip_on_its_8bit_rendering():
    values = np.random.default_rng(3).integers(0, 65536, (200, 300), dtype=np.uint16)
    eight_bit = Image.fromarray(np.rint(values / 257.0).astype(np.uint8))
    ours = MobileCLIPImageProcessor.from_variant(VARIANT)(Image.fromarray(values), return_tensors="pt")
    assert torch.equal(ours["pixel_values"][0], _open_clip_transform()(eight_bit))


def test_mode_I_from_a_16bit_pgm_is_scaled_like_I16_and_out_of_range_is_refused():
    values = np.random.default_rng(4).integers(0, 65536, (256, 256), dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, "PPM")  # PIL decodes 16-bit PGM files to mode "I"
    image = Image.open(io.BytesIO(buffer.getvalue()))
    assert image.mode == "I"
    processor = MobileCLIPImageProcessor.from_variant(VARIANT)
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert torch.equal(processor(image, return_tensors="pt")["pixel_values"][0], _expected_pixels(expected))
    for bad in (70000, -5):
        wide = Image.fromarray(np.array([[0, bad], [1, 2]], dtype=np.int32))
        assert wide.mode == "I"
        with pytest.raises(ValueError, match=r"mode 'I' image .* outside the expected \[0, 65535\]"):
            processor(wide)


def test_float_image_in_unit_range_is_scaled_by_255_and_other_ranges_are_refused():
    values = np.random.default_rng(5).random((256, 256), dtype=np.float32)
    values[0, :3] = [0.0, 1.0, 0.5 / 255]
    image = Image.fromarray(values)
    assert image.mode == "F"
    processor = MobileCLIPImageProcessor.from_variant(VARIANT)
    expected = np.rint(values.astype(np.float64) * 255).astype(np.uint8)
    assert torch.equal(processor(image, return_tensors="pt")["pixel_values"][0], _expected_pixels(expected))
    refused = r"mode 'F' image to 8 bits: its values span \[0, 1000\], outside the expected \[0, 1\]"
    with pytest.raises(ValueError, match=refused):
        processor(Image.fromarray(np.array([[0, 1000]], dtype=np.float32)))
    with pytest.raises(ValueError, match="mode 'F'"):
        processor(Image.fromarray(np.array([[0, np.nan]], dtype=np.float32)))


# ------------------------------------------------------------------------------------------------ empty text


def test_empty_caption_list_gives_open_clips_empty_batch():
    processor = MobileCLIPProcessor.from_variant(VARIANT)
    reference = open_clip.tokenize([])
    ours = processor(text=[], return_tensors="pt")["input_ids"]
    assert ours.shape == reference.shape == (0, 77) and ours.dtype == reference.dtype
    assert processor(text=[], return_tensors="np")["input_ids"].shape == (0, 77)
    assert processor(text=[])["input_ids"] == []  # like a non-empty batch without return_tensors: a list
    assert processor(text=[], padding=False, return_tensors="pt")["input_ids"].shape == (0, 0)
    batch = processor(text=[], images=Image.new("RGB", (300, 200)), return_tensors="pt")
    assert batch["input_ids"].shape == (0, 77) and batch["pixel_values"].shape == (1, 3, 256, 256)
