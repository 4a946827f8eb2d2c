"""Synthetic-caption generators for reinforcement, selected by spec strings.

Specs:
    open_clip:ARCH:TAG   an open_clip CoCa model, e.g. `open_clip:coca_ViT-L-14:mscoco_finetuned_laion2b_s13b_b90k`
                         (`none` as TAG = random weights, for tests)
    hf:PATH_OR_ID        a transformers image-to-text model (BLIP, GIT, VisionEncoderDecoder, ...)
    column:NAME          no model: the source's own extra captions in column NAME (strings or lists of strings)
    none                 no captioner (K = 0)

Captioning follows the paper and Apple's generator: nucleus sampling (top-p 0.9), keep the first sentence. The
sampling RNG is seeded per batch, so captions are reproducible for a given seed and batch composition.

`column:NAME` serves data with several ground-truth captions per image (COCO, the bundled emoji set): the
synthetic-caption slots get the non-empty entries of NAME, after the first one when NAME is also the caption
column (that one is the ground-truth caption), at most K of them; rows with fewer store fewer (see
`dr_format`). K must be given (`--num-synthetic-captions`): it fixes the stored `text_emb` shape, and no default
fits every dataset.
"""

from __future__ import annotations

from typing import Any, Callable

import datasets

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, TopPLogitsWarper

from .teachers import autocast_context, create_open_clip_model, parse_model_spec, seeded_by_spec


DEFAULT_TOP_P = 0.9
DEFAULT_MAX_TOKENS = 30
DEFAULT_MIN_TOKENS = 5


def first_sentence(text: str) -> str:
    """The text up to the first period (Apple's generator keeps only that), stripped; the whole text if empty."""
    sentence = text.split(".")[0].strip()
    return sentence or text.strip()


class Captioner:
    """Interface: `prepare_image` runs in data-loading workers (picklable); `generate` on the device."""

    spec: str
    prepare_image: Callable[[Image.Image], torch.Tensor]

    def generate(self, pixel_values: torch.Tensor, num_captions: int, seed: int) -> list[list[str]]:
        """`num_captions` captions for each image of the batch."""
        raise NotImplementedError


class OpenCLIPCoCaCaptioner(Captioner):
    """open_clip CoCa with our own nucleus-sampling loop (open_clip's `generate` breaks on transformers 5)."""

    def __init__(self, spec, device: torch.device, dtype: torch.dtype, top_p: float = DEFAULT_TOP_P,
                 max_tokens: int = DEFAULT_MAX_TOKENS, min_tokens: int = DEFAULT_MIN_TOKENS):
        import open_clip  # optional dependency (the `reinforce` extra): only open_clip captioners need it

        self.spec, self.device, self.dtype = spec.raw, device, dtype
        model, preprocess = create_open_clip_model(spec, device, role="captioner")
        if not hasattr(model, "text_decoder"):
            raise ValueError(f"Captioner {spec.raw!r} is not a CoCa model (it has no text decoder).")
        self.model, self.prepare_image = model, preprocess
        self.top_p, self.max_tokens, self.min_tokens = top_p, max_tokens, min_tokens
        self._decode = open_clip.decode

    @torch.inference_mode()
    def generate(self, pixel_values, num_captions, seed):
        start_id, end_id, pad_id = 49406, 49407, 0  # open_clip's <start_of_text>, <end_of_text>, padding
        images = pixel_values.to(self.device).repeat_interleave(num_captions, dim=0)
        generator = torch.Generator(self.device).manual_seed(seed)
        warper = TopPLogitsWarper(self.top_p)
        with autocast_context(self.device, self.dtype):
            encoded = self.model(images)
            tokens = torch.full((images.shape[0], 1), start_id, dtype=torch.long, device=self.device)
            finished = torch.zeros(images.shape[0], dtype=torch.bool, device=self.device)
            for step in range(self.max_tokens - 1):
                logits = self.model(images, tokens, image_latent=encoded["image_features"],
                                    image_embs=encoded["image_embs"], output_labels=False)["logits"][:, -1].float()
                if step < self.min_tokens:
                    logits[:, end_id] = -float("inf")
                # A non-finite row (reduced-precision overflow) must not abort the run: end that caption.
                broken = logits.isnan().any(dim=-1) | logits.isposinf().any(dim=-1) | logits.isneginf().all(dim=-1)
                logits[broken] = -float("inf")
                logits[broken, end_id] = 0.0
                probs = warper(tokens, logits).softmax(dim=-1)
                next_token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                next_token = torch.where(finished, torch.full_like(next_token, pad_id), next_token)
                tokens = torch.cat([tokens, next_token[:, None]], dim=1)
                finished |= next_token == end_id
                if finished.all():
                    break
        texts = [
            first_sentence(self._decode(row).split("<end_of_text>")[0].replace("<start_of_text>", ""))
            for row in tokens.cpu()
        ]
        return [texts[i: i + num_captions] for i in range(0, len(texts), num_captions)]


class _HFImagePreparer:
    """Picklable wrapper running a transformers image processor on one PIL image."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


class HFCaptioner(Captioner):
    """A transformers image-to-text model (`AutoModelForImageTextToText`) sampled with `generate(do_sample=True)`."""

    def __init__(self, spec, device: torch.device, dtype: torch.dtype, top_p: float = DEFAULT_TOP_P,
                 max_tokens: int = DEFAULT_MAX_TOKENS):
        self.spec, self.device, self.dtype = spec.raw, device, dtype
        try:
            self.model = AutoModelForImageTextToText.from_pretrained(spec.name, trust_remote_code=True)
            self.processor = AutoProcessor.from_pretrained(spec.name, trust_remote_code=True)
        except Exception as error:
            raise ValueError(f"Cannot load captioner {spec.raw!r} with transformers: {error}") from error
        self.model = self.model.to(device).eval()
        self.prepare_image = _HFImagePreparer(self.processor.image_processor)
        self.top_p, self.max_tokens = top_p, max_tokens

    @torch.inference_mode()
    def generate(self, pixel_values, num_captions, seed):
        # transformers' sampling draws from torch's global RNG: seed it for reproducible captions.
        torch.manual_seed(seed)
        with autocast_context(self.device, self.dtype):
            output = self.model.generate(
                pixel_values=pixel_values.to(self.device), do_sample=True, top_p=self.top_p, top_k=0,
                max_new_tokens=self.max_tokens, num_return_sequences=num_captions,
            )
        texts = [first_sentence(t) for t in self.processor.batch_decode(output, skip_special_tokens=True)]
        return [texts[i: i + num_captions] for i in range(0, len(texts), num_captions)]


def load_captioner(spec: str, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> Captioner | None:
    """Build the captioner for a spec; `none` gives None (no synthetic captions)."""
    if spec.strip().lower() == "none":
        return None
    if column_captioner_name(spec) is not None:
        raise ValueError(f"Captioner {spec!r} is not a model: the reinforcement stream reads that column "
                         "(see `column_captions`).")
    parsed = parse_model_spec(spec, role="captioner")
    cls = OpenCLIPCoCaCaptioner if parsed.kind == "open_clip" else HFCaptioner
    with seeded_by_spec(spec):
        return cls(parsed, device, dtype)


def column_captioner_name(spec: str) -> str | None:
    """NAME of a `column:NAME` captioner spec; None for any other spec."""
    kind, sep, name = spec.strip().partition(":")
    if kind != "column" or not sep:
        return None
    if not name.strip():
        raise ValueError(f"Captioner spec {spec!r} names no column; use 'column:NAME' (e.g. column:captions).")
    return name.strip()


def check_captioner_spec(spec: str) -> None:
    """Validate a captioner spec without loading anything."""
    if spec.strip().lower() != "none" and column_captioner_name(spec) is None:
        parse_model_spec(spec, role="captioner")


def resolve_num_synthetic_captions(spec: str, requested: int | None) -> int:
    """K for a captioner spec and the requested `--num-synthetic-captions` (None: not given)."""
    if column_captioner_name(spec) is not None:
        if requested is None or requested < 1:
            raise ValueError(f"--captioner {spec} needs --num-synthetic-captions K >= 1 (got {requested}): K fixes "
                             "the stored text_emb shape (1 + K rows); use the most extra captions a row has.")
        return requested
    if spec.strip().lower() == "none":
        if requested:
            raise ValueError(f"--num-synthetic-captions {requested} needs a captioner; got --captioner none.")
        return 0
    if requested is not None and requested < 0:
        raise ValueError(f"--num-synthetic-captions must be >= 0, got {requested}.")
    return 5 if requested is None else requested


def check_text_column(features, column: str, flag: str) -> None:
    """Fail unless `column` exists and holds strings or lists of strings; the message lists the columns."""
    available = sorted(features) if features is not None else []
    if column not in available:
        raise ValueError(f"Source has no column {column!r} ({flag}); available columns: {available}.")
    feature = features[column]
    item = getattr(feature, "feature", feature)  # List(Value("string")) → Value("string")
    if not (isinstance(item, datasets.Value) and item.dtype in ("string", "large_string")):
        raise ValueError(f"Column {column!r} ({flag}) is {feature!r}, expected strings or lists of strings; "
                         f"available columns: {available}.")


def check_column_captioner(features, name: str, caption_column: str) -> None:
    """Start-up checks of `column:NAME`: a text column, and one that can hold more than the caption itself."""
    check_text_column(features, name, f"--captioner column:{name}")
    if name == caption_column and not hasattr(features[name], "feature"):
        raise ValueError(f"--captioner column:{name} reuses the caption column, but {name!r} holds one string per "
                         "row: there are no further captions. Point it at a list-of-strings column.")


def column_captions(value: Any, num_captions: int, same_as_caption: bool) -> list[str]:
    """The synthetic captions a `column:NAME` captioner takes from one cell: its non-empty (stripped) entries, less
    the first when NAME is the caption column (that one is the ground truth), the first `num_captions` of them."""
    values = value if isinstance(value, (list, tuple)) else [value]
    texts = [v.strip() for v in values if isinstance(v, str) and v.strip()]
    return texts[1 if same_as_caption else 0:][:num_captions]


__all__ = ["Captioner", "HFCaptioner", "OpenCLIPCoCaCaptioner", "check_captioner_spec", "check_column_captioner",
           "check_text_column", "column_captioner_name", "column_captions", "first_sentence", "load_captioner",
           "resolve_num_synthetic_captions"]
