"""CLIP teachers for reinforcement, selected by spec strings.

Specs:
    open_clip:ARCH:PRETRAINED   an open_clip model and pretrained tag (`none` = random weights, for tests), e.g.
                                `open_clip:ViT-L-14:openai`, `open_clip:ViT-L-14:datacomp_xl_s13b_b90k`
    open_clip:hf-hub:ORG/REPO   an open_clip model hosted on the Hub (weights come with it)
    hf:PATH_OR_ID               any CLIP-like transformers model (CLIPModel, our MobileCLIP folders, ...) exposing
                                `get_image_features` / `get_text_features`; never runs code shipped with the model
                                (MobileCLIP folders load with this package's classes)
    hf+remote:PATH_OR_ID        the same, but a model whose config names custom code may run it
                                (`trust_remote_code=True`): only for models whose author you trust

Every teacher returns L2-normalised float32 embeddings; image inputs are uint8 views (B, 3, S, S) that the teacher
resizes (bicubic, as Apple's generator does) when its own input size differs, then normalises with its own mean/std.
`Teacher.logit_scale` is the model's learned inverse temperature exp(logit_scale) (None when the model has none);
the reinforced dataset card records it so that distillation can default to each teacher's own scale.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as torch_F

from modeling_mobileclip.loading import fuse_for_inference, pretrained_classes

from .augmentation import sample_seed
from .pixels import normalize_pixels


_OPEN_CLIP_SCHEMES = ("hf-hub:", "local-dir:")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: `kind` is "open_clip" or "hf"; `pretrained` is None for random or bundled weights."""

    kind: str
    name: str
    pretrained: str | None
    raw: str
    trust_remote_code: bool = False  # `hf+remote:` teachers only


def parse_model_spec(spec: str, role: str = "teacher") -> ModelSpec:
    """Parse `open_clip:ARCH:PRETRAINED`, `open_clip:hf-hub:REPO`, `hf:PATH_OR_ID` or (teachers only)
    `hf+remote:PATH_OR_ID`; raise a clear ValueError."""
    remote = " or 'hf+remote:PATH_OR_ID' (allows the model's custom code)" if role == "teacher" else ""
    usage = (f"Expected a {role} spec 'open_clip:ARCH:PRETRAINED' (PRETRAINED 'none' = random weights), "
             f"'open_clip:hf-hub:ORG/REPO' or 'hf:PATH_OR_ID'{remote}, got {spec!r}.")
    kind, sep, rest = spec.strip().partition(":")
    if not sep or not rest:
        raise ValueError(usage)
    if kind == "hf":
        return ModelSpec("hf", rest, None, spec)
    if kind == "hf+remote" and role == "teacher":  # the captioners do not take remote code
        return ModelSpec("hf", rest, None, spec, trust_remote_code=True)
    if kind != "open_clip":
        raise ValueError(usage)
    if rest.startswith(_OPEN_CLIP_SCHEMES):
        return ModelSpec("open_clip", rest, None, spec)
    arch, sep, pretrained = rest.rpartition(":")
    if not sep or not arch or not pretrained:
        raise ValueError(usage)
    return ModelSpec("open_clip", arch, None if pretrained.lower() == "none" else pretrained, spec)


def create_open_clip_model(spec: ModelSpec, device: torch.device, role: str = "teacher"):
    """`(model, preprocess)` from open_clip, fully initialised even without weights.

    open_clip 3.3 leaves CoCa's `text_decoder.text_projection` as `torch.empty` (its `init_parameters` is never
    called and fails if called); random-weight models (`none`, used in tests) would read uninitialised memory
    and caption differently in every run, so it is initialised here as open_clip intends.
    """
    import open_clip  # optional dependency (the `reinforce` extra): only open_clip teachers and captioners need it

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(spec.name, pretrained=spec.pretrained,
                                                                     device=device)
    except Exception as error:  # open_clip raises RuntimeError/ValueError/HF errors for unknown names or tags
        raise ValueError(f"Cannot load {role} {spec.raw!r} with open_clip: {error}") from error
    if spec.pretrained is None and not spec.name.startswith(_OPEN_CLIP_SCHEMES):
        for module in model.modules():
            projection = getattr(module, "text_projection", None)
            if type(module).__name__ == "MultimodalTransformer" and isinstance(projection, torch.nn.Parameter):
                torch.nn.init.normal_(projection, std=module.width ** -0.5)
    return model.eval(), preprocess


def autocast_context(device: torch.device, dtype: torch.dtype):
    """bf16/fp16 autocast on `device` (a no-op for float32)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def learned_logit_scale(model) -> float | None:
    """exp(model.logit_scale) as a Python float, or None when the model has no scalar `logit_scale`.

    open_clip models, transformers' CLIPModel and our MobileCLIPModel all keep the log of the inverse temperature
    (CLIP's parameterisation), so the scale the model was trained with is its exponential.
    """
    value = getattr(model, "logit_scale", None)
    if not torch.is_tensor(value) or value.numel() != 1:
        return None
    return float(value.detach().float().cpu().exp())  # on the CPU: the same digits whatever the device


class Teacher:
    """Common teacher interface: `encode_images(uint8 views)` and `encode_texts(strings)` → normalised float32."""

    spec: str
    dim: int
    image_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    logit_scale: float | None = None
    """The model's learned exp(logit_scale), read once at load time; None when the model has none."""

    def __init__(self, spec: str, device: torch.device, dtype: torch.dtype):
        self.spec, self.device, self.dtype = spec, device, dtype

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def preprocess_views(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) → normalised float32 at the teacher's input size."""
        pixels = views.to(self.device, non_blocking=True).float().div_(255.0)
        if pixels.shape[-1] != self.image_size or pixels.shape[-2] != self.image_size:
            pixels = torch_F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bicubic",
                                         align_corners=False, antialias=True).clamp_(0.0, 1.0)
        return normalize_pixels(pixels, self.image_mean, self.image_std)

    @torch.inference_mode()
    def encode_images(self, views: torch.Tensor) -> torch.Tensor:
        with autocast_context(self.device, self.dtype):
            features = self._image_features(self.preprocess_views(views))
        return torch_F.normalize(features.float(), dim=-1)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        with autocast_context(self.device, self.dtype):
            features = self._text_features(list(texts))
        return torch_F.normalize(features.float(), dim=-1)

    def _probe_dim(self) -> int:
        # One dummy forward gives both dims, whatever the model family; they must agree for a CLIP teacher.
        image_dim = self.encode_images(torch.zeros(1, 3, self.image_size, self.image_size, dtype=torch.uint8)).shape[-1]
        text_dim = self.encode_texts(["a photo"]).shape[-1]
        if image_dim != text_dim:
            raise ValueError(f"Teacher {self.spec!r}: image embeddings have {image_dim} dims but text embeddings "
                             f"{text_dim}; a CLIP teacher needs both in one space.")
        return image_dim


class OpenCLIPTeacher(Teacher):
    """An open_clip model (`open_clip.create_model_and_transforms`), with its own tokenizer and preprocessing."""

    def __init__(self, spec: ModelSpec, device: torch.device, dtype: torch.dtype, fuse: bool = True):
        super().__init__(spec.raw, device, dtype)
        import open_clip  # optional dependency (the `reinforce` extra)

        model, _ = create_open_clip_model(spec, device)
        self.model = model = fuse_for_inference(model) if fuse else model
        self.logit_scale = learned_logit_scale(model)
        self.tokenizer = open_clip.get_tokenizer(spec.name)
        preprocess = open_clip.get_model_preprocess_cfg(model)
        size = preprocess.get("size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.image_mean = tuple(preprocess.get("mean", OPENAI_MEAN))
        self.image_std = tuple(preprocess.get("std", OPENAI_STD))
        self.dim = self._probe_dim()

    def _image_features(self, pixel_values):
        return self.model.encode_image(pixel_values)

    def _text_features(self, texts):
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


class HFTeacher(Teacher):
    """A CLIP-like transformers model: MobileCLIP folders load with this package's classes, others with
    `AutoModel.from_pretrained`, with `trust_remote_code` only for `hf+remote:` specs (see the module docstring).

    Works for `CLIPModel`-style models (`get_*_features` return `BaseModelOutputWithPooling` in transformers 5,
    tensors before) and for our MobileCLIP folders. Preprocessing comes from the saved processor, else from the
    config (`image_size`, `image_mean`, `image_std`, as MobileCLIPConfig has).
    """

    def __init__(self, spec: ModelSpec, device: torch.device, dtype: torch.dtype, fuse: bool = True):
        super().__init__(spec.raw, device, dtype)
        try:
            model_class, processor_class, tokenizer_class, kwargs = pretrained_classes(
                spec.name, spec.trust_remote_code,
                how_to_trust=f"use the teacher spec 'hf+remote:{spec.name}' instead of {spec.raw!r}")
            model = model_class.from_pretrained(spec.name, **kwargs).to(device)
            self.model = fuse_for_inference(model) if fuse else model.eval()
        except Exception as error:
            raise ValueError(f"Cannot load teacher {spec.raw!r}: {error}") from error
        self.logit_scale = learned_logit_scale(self.model)
        try:
            processor = processor_class.from_pretrained(spec.name, **kwargs)
        except Exception:
            processor = None
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None:
            try:
                tokenizer = tokenizer_class.from_pretrained(spec.name, **kwargs)
            except Exception as error:
                raise ValueError(f"Teacher {spec.raw!r} has no loadable tokenizer: {error}") from error
        self.tokenizer = tokenizer
        self._read_preprocessing(getattr(processor, "image_processor", None), self.model.config)
        self.context_length = _text_context_length(self.model.config)
        self._text_takes_mask = "attention_mask" in inspect.signature(self.model.get_text_features).parameters
        self.dim = self._probe_dim()

    def _read_preprocessing(self, image_processor, config) -> None:
        size = None
        if image_processor is not None:
            for attribute in ("crop_size", "size"):
                value = getattr(image_processor, attribute, None)
                value = dict(value) if value is not None and not isinstance(value, int) else value
                if isinstance(value, dict):
                    value = value.get("height") or value.get("shortest_edge")
                if value:
                    size = int(value)
                    break
        vision_config = getattr(config, "vision_config", None)
        size = size or getattr(config, "image_size", None) or getattr(vision_config, "image_size", None)
        if not size:
            raise ValueError(f"Teacher {self.spec!r}: cannot determine its input image size.")
        self.image_size = int(size)
        source = image_processor if getattr(image_processor, "image_mean", None) is not None else config
        self.image_mean = tuple(getattr(source, "image_mean", None) or OPENAI_MEAN)
        self.image_std = tuple(getattr(source, "image_std", None) or OPENAI_STD)

    @staticmethod
    def _embedding(output) -> torch.Tensor:
        return output if torch.is_tensor(output) else output.pooler_output

    def _image_features(self, pixel_values):
        return self._embedding(self.model.get_image_features(pixel_values=pixel_values))

    def _tokenize(self, texts):
        try:
            encoded = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                                     return_tensors="pt")
        except TypeError:  # open_clip-style tokenizers take only the texts and always pad to the context
            encoded = self.tokenizer(texts)
        if torch.is_tensor(encoded):
            return {"input_ids": encoded}
        return {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask")}

    def _text_features(self, texts):
        inputs = {k: v.to(self.device) for k, v in self._tokenize(texts).items()}
        if not self._text_takes_mask:
            inputs.pop("attention_mask", None)
        return self._embedding(self.model.get_text_features(**inputs))


def _text_context_length(config) -> int:
    text_config = getattr(config, "text_config", config)
    return int(getattr(text_config, "max_position_embeddings", None) or 77)


@contextlib.contextmanager
def seeded_by_spec(spec: str):
    """Seed torch's RNG from the spec (restoring it afterwards): randomly initialised (`none`) models then get
    the same weights in every run, which resuming relies on."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sample_seed(0, spec))
        yield


def load_teacher(spec: str, device: torch.device, dtype: torch.dtype = torch.bfloat16, fuse: bool = True) -> Teacher:
    """Build one teacher from its spec string. A teacher only infers, so it runs fused (`fuse_for_inference`: the
    same embeddings within float32 rounding, faster); `fuse=False` keeps the train-time form (for comparisons)."""
    parsed = parse_model_spec(spec)
    cls = OpenCLIPTeacher if parsed.kind == "open_clip" else HFTeacher
    with seeded_by_spec(spec):
        return cls(parsed, device, dtype, fuse)


def load_teachers(specs: Sequence[str], device: torch.device, dtype: torch.dtype = torch.bfloat16,
                  fuse: bool = True) -> list[Teacher]:
    """Build the ensemble, failing before any model is loaded if a spec is malformed."""
    for spec in specs:
        parse_model_spec(spec)
    return [load_teacher(spec, device, dtype, fuse) for spec in specs]


__all__ = [
    "HFTeacher",
    "ModelSpec",
    "OpenCLIPTeacher",
    "Teacher",
    "autocast_context",
    "create_open_clip_model",
    "learned_logit_scale",
    "load_teacher",
    "load_teachers",
    "parse_model_spec",
    "seeded_by_spec",
]
