"""Recordable, replayable image augmentation (RandomResizedCrop + RandAugment) in DataCompDR's compressed form.

Reinforcement samples augmentation parameters once per view, applies them, and stores them; training replays
the stored parameters on the decoded image, possibly at another output size (teachers see 224 px views, students
256 px). Sampling follows torchvision's `RandomResizedCrop` and `RandAugment` draw for draw, so with the same
torch RNG state it produces the same view as torchvision (the tests use torchvision as the oracle).

Compressed form of one augmentation (the `param_aug` entries of the official `paug.json`):

    [[top, left, height, width], [[op_index, magnitude], [op_index, magnitude]]]

`top, left, height, width` is the crop box in source-image pixels, `op_index` indexes :data:`RAND_AUGMENT_OPS`
and `magnitude` is the signed magnitude actually applied (TranslateX/Y in pixels of the `size` x `size` view).
Without RandAugment the second element is absent.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F


# Order fixed by torchvision's RandAugment augmentation space; official `op_index` values index this tuple.
RAND_AUGMENT_OPS: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
_SIGNED_OPS = frozenset(RAND_AUGMENT_OPS[1:10])
_TRANSLATE_OPS = frozenset(("TranslateX", "TranslateY"))
_INTERPOLATIONS = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
                   "bicubic": InterpolationMode.BICUBIC}


@dataclass(frozen=True)
class AugmentationConfig:
    """How views are sampled (DataCompDR: RandomResizedCrop 224 bicubic, then RandAugment with p=1).

    Args:
        size: Side of the square view the teachers see; TranslateX/Y magnitudes are in pixels of this size.
        scale: RandomResizedCrop area range, as a fraction of the source image.
        ratio: RandomResizedCrop aspect-ratio range.
        interpolation: Resize filter of the crop ("bicubic", "bilinear" or "nearest").
        rand_augment: Apply RandAugment after the crop.
        rand_augment_p: Probability of applying RandAugment to a view (1.0 in DataCompDR).
        num_ops: RandAugment operations per view.
        magnitude: RandAugment magnitude bin.
        num_magnitude_bins: Number of RandAugment magnitude bins.
    """

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    interpolation: str = "bicubic"
    rand_augment: bool = True
    rand_augment_p: float = 1.0
    num_ops: int = 2
    magnitude: int = 9
    num_magnitude_bins: int = 31

    def __post_init__(self):
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}.")
        if not 0 <= self.magnitude < self.num_magnitude_bins:
            raise ValueError(f"magnitude must be in [0, {self.num_magnitude_bins}), got {self.magnitude}.")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "AugmentationConfig":
        values = dict(values)
        for key in ("scale", "ratio"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class AugmentationParams:
    """One recorded augmentation: the crop box and the RandAugment operations applied after it.

    Args:
        crop: `(top, left, height, width)` in source-image pixels.
        ops: `(op_name, signed_magnitude)` pairs, applied in order.
        compressed_ops: Whether the compressed form has a RandAugment element (kept so that an official entry
            without one round-trips).
    """

    crop: tuple[int, int, int, int]
    ops: tuple[tuple[str, float], ...] = ()
    compressed_ops: bool = field(default=True, compare=False)

    def compress(self) -> list:
        """The DataCompDR list form: `[[top, left, h, w], [[op_index, magnitude], ...]]`."""
        compressed: list = [list(self.crop)]
        if self.compressed_ops:
            compressed.append([[RAND_AUGMENT_OPS.index(name), magnitude] for name, magnitude in self.ops])
        return compressed

    def to_json(self) -> str:
        return json.dumps(self.compress())

    @classmethod
    def decompress(cls, compressed: Sequence) -> "AugmentationParams":
        """Parse one official/compressed entry; raise `ValueError` describing what was expected."""
        if not isinstance(compressed, (list, tuple)) or not 1 <= len(compressed) <= 2:
            raise ValueError(
                f"Expected [[top, left, height, width], [[op_index, magnitude], ...]], got {compressed!r} "
                "(mixup/cutmix parameters are not supported)."
            )
        crop = compressed[0]
        if (not isinstance(crop, (list, tuple)) or len(crop) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in crop)):
            raise ValueError(f"Expected a crop box [top, left, height, width] of numbers, got {crop!r}.")
        ops = []
        if len(compressed) == 2:
            for op in compressed[1]:
                if not isinstance(op, (list, tuple)) or len(op) != 2 or not 0 <= int(op[0]) < len(RAND_AUGMENT_OPS):
                    raise ValueError(
                        f"Expected [op_index in 0..{len(RAND_AUGMENT_OPS) - 1}, magnitude], got {op!r}."
                    )
                ops.append((RAND_AUGMENT_OPS[int(op[0])], op[1]))
        return cls(crop=tuple(int(v) for v in crop), ops=tuple(ops), compressed_ops=len(compressed) == 2)

    @classmethod
    def from_json(cls, text: str) -> "AugmentationParams":
        return cls.decompress(json.loads(text))


def decode_rgb(data: bytes) -> Image.Image:
    """Decode encoded image bytes fully (so corrupt data fails here) and convert to RGB."""
    image = Image.open(io.BytesIO(data))
    image.load()
    # convert() copies even when the mode already matches, and a JPEG usually decodes straight to RGB.
    return image if image.mode == "RGB" else image.convert("RGB")


def sample_seed(seed: int, key: str) -> int:
    """A 63-bit seed derived from a run seed and a sample key, stable across processes and Python versions."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _magnitude_table(num_bins: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    # RandAugment's magnitude ranges (Cubuk et al. 2020, as parameterised by torchvision); values are computed
    # in float32 like torchvision so that the recorded magnitudes are the ones torchvision would apply.
    height, width = size
    linspace = lambda end: torch.linspace(0.0, end, num_bins)  # noqa: E731
    return {
        "ShearX": linspace(0.3),
        "ShearY": linspace(0.3),
        "TranslateX": linspace(150.0 / 331.0 * width),
        "TranslateY": linspace(150.0 / 331.0 * height),
        "Rotate": linspace(30.0),
        "Brightness": linspace(0.9),
        "Color": linspace(0.9),
        "Contrast": linspace(0.9),
        "Sharpness": linspace(0.9),
        "Posterize": 8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round().int(),
        "Solarize": torch.linspace(255.0, 0.0, num_bins),
    }


def sample_crop(
    height: int, width: int, config: AugmentationConfig, generator: torch.Generator | None = None
) -> tuple[int, int, int, int]:
    """RandomResizedCrop box `(top, left, h, w)`: up to 10 draws of area and log-aspect, else a central crop."""
    area = height * width
    log_ratio = torch.log(torch.tensor(config.ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(config.scale[0], config.scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(0, height - crop_h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - crop_w + 1, size=(1,), generator=generator).item())
            return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < min(config.ratio):
        crop_w, crop_h = width, int(round(width / min(config.ratio)))
    elif in_ratio > max(config.ratio):
        crop_w, crop_h = int(round(height * max(config.ratio))), height
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def sample_rand_augment(
    config: AugmentationConfig, generator: torch.Generator | None = None
) -> tuple[tuple[str, float], ...]:
    """RandAugment operations for a `config.size` view: uniform op, fixed magnitude bin, random sign."""
    if not config.rand_augment:
        return ()
    if config.rand_augment_p < 1.0 and torch.rand(1, generator=generator).item() >= config.rand_augment_p:
        return ()
    table = _magnitude_table(config.num_magnitude_bins, (config.size, config.size))
    ops = []
    for _ in range(config.num_ops):
        name = RAND_AUGMENT_OPS[int(torch.randint(len(RAND_AUGMENT_OPS), (1,), generator=generator).item())]
        magnitude = float(table[name][config.magnitude].item()) if name in table else 0.0
        if name in _SIGNED_OPS and torch.randint(2, (1,), generator=generator).item():
            magnitude = -magnitude
        ops.append((name, int(magnitude) if name == "Posterize" else magnitude))
    return tuple(ops)


def sample_augmentation(
    height: int, width: int, config: AugmentationConfig, generator: torch.Generator | None = None
) -> AugmentationParams:
    """Draw one augmentation for a `height` x `width` source image (`generator=None` uses torch's global RNG)."""
    crop = sample_crop(height, width, config, generator)
    return AugmentationParams(crop=crop, ops=sample_rand_augment(config, generator), compressed_ops=config.rand_augment)


def apply_rand_augment_op(
    image: Image.Image, name: str, magnitude: float, interpolation: InterpolationMode = InterpolationMode.NEAREST
) -> Image.Image:
    """Apply one RandAugment operation with an explicit magnitude (semantics of torchvision's RandAugment)."""
    if name == "Identity":
        return image
    if name in ("ShearX", "ShearY"):
        # RandAugment magnitudes are shear factors; torchvision's affine takes the angle in degrees.
        angle = math.degrees(math.atan(magnitude))
        shear = [angle, 0.0] if name == "ShearX" else [0.0, angle]
        return F.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                        interpolation=interpolation, center=[0, 0])
    if name in _TRANSLATE_OPS:
        translate = [int(magnitude), 0] if name == "TranslateX" else [0, int(magnitude)]
        return F.affine(image, angle=0.0, translate=translate, scale=1.0, shear=[0.0, 0.0],
                        interpolation=interpolation)
    if name == "Rotate":
        return F.rotate(image, magnitude, interpolation=interpolation)
    if name == "Brightness":
        return F.adjust_brightness(image, 1.0 + magnitude)
    if name == "Color":
        return F.adjust_saturation(image, 1.0 + magnitude)
    if name == "Contrast":
        return F.adjust_contrast(image, 1.0 + magnitude)
    if name == "Sharpness":
        return F.adjust_sharpness(image, 1.0 + magnitude)
    if name == "Posterize":
        return F.posterize(image, int(magnitude))
    if name == "Solarize":
        return F.solarize(image, magnitude)
    if name == "AutoContrast":
        return F.autocontrast(image)
    if name == "Equalize":
        return F.equalize(image)
    raise ValueError(f"Unknown RandAugment operation {name!r}; expected one of {RAND_AUGMENT_OPS}.")


def apply_augmentation(
    image: Image.Image,
    params: AugmentationParams,
    size: int,
    interpolation: str = "bicubic",
    reference_size: int | None = None,
) -> Image.Image:
    """Replay recorded parameters: crop the stored box, resize to `size` x `size`, apply the stored operations.

    Deterministic: the same inputs always give the same pixels. Replaying at the recorded size reproduces the
    recorded view exactly. TranslateX/Y magnitudes are pixels of the recorded `reference_size` view; when given
    and different from `size`, they are rescaled so the student's view shows the same content as the teachers'
    (Apple's code applies them unscaled, a shift of at most 4 px at 256).
    """
    if params.crop[2] <= 0 or params.crop[3] <= 0:
        raise ValueError(f"Crop box {params.crop} has a non-positive height or width.")
    top, left, crop_h, crop_w = params.crop
    view = F.resized_crop(image, top, left, crop_h, crop_w, [size, size],
                          interpolation=_INTERPOLATIONS[interpolation], antialias=True)
    return apply_stored_ops(view, params, reference_size)


def apply_stored_ops(view: Image.Image, params: AugmentationParams, reference_size: int | None = None) -> Image.Image:
    """The RandAugment part of `apply_augmentation`, on an already cropped and resized square `view`."""
    size = view.width
    translate_scale = size / reference_size if reference_size and reference_size != size else 1.0
    for name, magnitude in params.ops:
        if name in _TRANSLATE_OPS:
            magnitude = magnitude * translate_scale
        view = apply_rand_augment_op(view, name, magnitude)
    return view


# RandAugment ops whose torchvision tensor implementation gives PIL's bytes on the same uint8 input, and those
# within 1/255 of them (measured by tests/data/test_device_augment.py). Rotate's nearest-neighbour sampling
# differs at rounding boundaries by far more, so it is never deferred.
TENSOR_EXACT_OPS = frozenset(("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Brightness",
                              "Posterize", "Solarize", "Equalize"))
TENSOR_WITHIN_ONE_OPS = frozenset(("Color", "Contrast", "Sharpness", "AutoContrast"))
DEFERRED_OP_SLOTS = 2  # RandAugment's num_ops in DataCompDR; views with more ops are augmented on the CPU


def can_defer_ops(ops: Sequence[tuple[str, float]]) -> bool:
    """Whether `apply_ops_to_batch` on uint8 tensors reproduces the PIL replay of `ops` within 1/255.

    A 1/255 difference left by one op can be amplified by the next (a Solarize threshold flips the pixel), so only
    the last op may be one that is merely within 1; every op before it must be exact.
    """
    names = [name for name, _ in ops]
    return len(names) <= DEFERRED_OP_SLOTS and all(name in TENSOR_EXACT_OPS for name in names[:-1]) and (
        not names or names[-1] in TENSOR_EXACT_OPS | TENSOR_WITHIN_ONE_OPS)


def encode_deferred_ops(params: AugmentationParams, size: int, reference_size: int | None) -> torch.Tensor:
    """(DEFERRED_OP_SLOTS, 2) float64 rows `[op_index, magnitude]`, padded with Identity, magnitudes as
    `apply_stored_ops` applies them at `size` (TranslateX/Y rescaled from `reference_size`)."""
    translate_scale = size / reference_size if reference_size and reference_size != size else 1.0
    rows = [[float(RAND_AUGMENT_OPS.index(name)), magnitude * translate_scale if name in _TRANSLATE_OPS
             else float(magnitude)] for name, magnitude in params.ops]
    rows += [[0.0, 0.0]] * (DEFERRED_OP_SLOTS - len(rows))
    return torch.tensor(rows, dtype=torch.float64)


def apply_ops_to_batch(views: torch.Tensor, deferred_ops: torch.Tensor) -> torch.Tensor:
    """Apply each view's deferred ops (`encode_deferred_ops`, stacked (B, slots, 2)) to uint8 (B, 3, S, S) views,
    on their device: one torchvision call per distinct (op, magnitude) and slot, on the views that share it."""
    views = views.clone()
    rows = deferred_ops.tolist()
    for slot in range(deferred_ops.shape[1]):
        groups: dict[tuple[int, float], list[int]] = {}
        for sample, sample_ops in enumerate(rows):
            op_index, magnitude = sample_ops[slot]
            if op_index:  # 0 is Identity
                groups.setdefault((int(op_index), magnitude), []).append(sample)
        for (op_index, magnitude), samples in groups.items():
            index = torch.tensor(samples, device=views.device)
            name = RAND_AUGMENT_OPS[op_index]
            views[index] = apply_rand_augment_op(views[index], name, int(magnitude) if name == "Posterize"
                                                 else magnitude)
    return views


__all__ = [
    "RAND_AUGMENT_OPS",
    "AugmentationConfig",
    "AugmentationParams",
    "DEFERRED_OP_SLOTS",
    "TENSOR_EXACT_OPS",
    "TENSOR_WITHIN_ONE_OPS",
    "apply_augmentation",
    "apply_ops_to_batch",
    "apply_rand_augment_op",
    "apply_stored_ops",
    "can_defer_ops",
    "encode_deferred_ops",
    "decode_rgb",
    "sample_augmentation",
    "sample_crop",
    "sample_rand_augment",
    "sample_seed",
]
