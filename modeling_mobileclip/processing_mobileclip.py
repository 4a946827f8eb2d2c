"""MobileCLIP preprocessing: an open_clip-exact tokenizer, a torchvision-exact image processor and the processor that
combines them.

* [`MobileCLIPTokenizer`] gives the ids of `open_clip.tokenize` (what Apple's MobileCLIP code uses): open_clip's text
  cleaning, `<start_of_text>` 49406 / `<end_of_text>` 49407, 77 tokens with the end token kept last, padded with id 0.
* [`MobileCLIPImageProcessor`] reproduces `Resize(shortest side, PIL) -> CenterCrop -> ToTensor (-> Normalize)`
  bit for bit, whichever backend transformers would otherwise pick.
* [`MobileCLIPProcessor`] bundles both; `MobileCLIPProcessor.from_variant("mobileclip-s0")` builds the preprocessing of
  a published variant offline from the vocabulary shipped in `tokenizer/`.

This is a remote-code file: it only imports installed packages and `.configuration_mobileclip`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import ftfy
import numpy as np
import PIL.Image
import regex
from tokenizers import Regex, decoders, pre_tokenizers
from transformers import BatchEncoding, BatchFeature, CLIPTokenizer, ProcessorMixin
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling
from transformers.utils import PaddingStrategy

from .configuration_mobileclip import variant_preset


CONTEXT_LENGTH = 77
START_OF_TEXT = "<start_of_text>"
END_OF_TEXT = "<end_of_text>"
PAD_TOKEN = "!"  # id 0: open_clip fills unused positions with zeros
BUNDLED_VOCAB_DIR = Path(__file__).resolve().parent / "tokenizer"

# open_clip's SimpleTokenizer splits cleaned text with this pattern (Python `regex`, IGNORECASE). The tokenizers
# backend runs the same pattern; the two literal specials in it only matter for case-folded look-alikes such as
# "<ſtart_of_text>", which open_clip isolates as one word, because real specials are cut out before pre-tokenization.
_WORD_PATTERN = (
    rf"{START_OF_TEXT}|{END_OF_TEXT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+"
)
_OPEN_CLIP_WORDS = regex.compile(_WORD_PATTERN, regex.IGNORECASE)
_SPECIAL_LITERAL = regex.compile(r"<(?=start_of_text>|end_of_text>)")


def clean_caption(text: str) -> str:
    """open_clip's default (`"lower"`) text cleaning, applied before tokenization.

    Repairs mojibake and normalises Unicode with `ftfy.fix_text`, unescapes HTML entities twice (so `&amp;lt;` becomes
    `<`), collapses every whitespace run to one space, strips, and lower-cases.
    """
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def _split_plain_special_literals(text: str) -> str:
    """Keeps literal `<start_of_text>` / `<end_of_text>` that open_clip reads as plain text from becoming specials.

    open_clip only turns a literal into a special token where its word pattern matches it, which fails when a
    punctuation run swallows the `<` (as in `"!<end_of_text>"`). The tokenizers backend would match such a literal
    anywhere, so a space is inserted after that `<`: the space falls on a word boundary of open_clip's split
    (punctuation `<` then a letter), and the backend drops spaces, so the words are unchanged.
    """
    if START_OF_TEXT not in text and END_OF_TEXT not in text:
        return text
    special_starts = {
        match.start() for match in _OPEN_CLIP_WORDS.finditer(text) if match.group() in (START_OF_TEXT, END_OF_TEXT)
    }
    parts, previous = [], 0
    for match in _SPECIAL_LITERAL.finditer(text):
        if match.start() not in special_starts:
            parts += [text[previous : match.end()], " "]
            previous = match.end()
    return "".join(parts) + text[previous:]


def _prepare_caption(text: str) -> str:
    return _split_plain_special_literals(clean_caption(text))


def _read_vocab(vocab: str | Path | dict[str, int] | None) -> dict[str, int] | None:
    if isinstance(vocab, (str, Path)):
        with open(vocab, encoding="utf-8") as handle:
            return json.load(handle)
    return vocab


def _read_merges(merges: str | Path | list | None) -> list[tuple[str, str]] | None:
    if isinstance(merges, (str, Path)):
        with open(merges, encoding="utf-8") as handle:
            merges = [line for line in handle.read().split("\n") if line and not line.startswith("#version")]
    if merges is None:
        return None
    return [tuple(merge.split()) if isinstance(merge, str) else tuple(merge) for merge in merges]


class MobileCLIPTokenizer(CLIPTokenizer):
    r"""CLIP BPE tokenizer whose ids equal `open_clip.tokenize` (the tokenizer of Apple's MobileCLIP code).

    Differences from transformers' `CLIPTokenizer`, all needed for identical ids:

    * open_clip's cleaning runs first ([`clean_caption`]: `ftfy.fix_text`, HTML unescaped twice, whitespace collapsed,
      lower-cased) and the backend applies no other normalisation.
    * The special tokens are open_clip's `<start_of_text>` (49406) and `<end_of_text>` (49407). Typed in a caption,
      they become special tokens where open_clip's word pattern isolates them; HF's `<|startoftext|>` is plain text.
    * Output is always `CONTEXT_LENGTH` (77) ids: truncated with `<end_of_text>` kept last, padded with id 0 (`"!"`).
      `padding=True` / `"longest"` is mapped to `"max_length"`, because MobileCLIP's bidirectional text towers attend
      to every position without a padding mask: pads change the text embedding, so only open_clip's 77 zero-padded
      ids reproduce its features (transformers' zero-shot pipeline, for one, tokenizes with `padding=True`). Pass
      `padding=False` explicitly to get unpadded ids.
    * Only `input_ids` are returned by default: the towers ignore attention masks (`return_attention_mask=True` still
      gives one). Offsets, if requested, refer to the cleaned text.

    Id 0 (`"!"`) doubles as the pad token; `decode(..., skip_special_tokens=True)` drops what follows
    `<end_of_text>` (padding only) rather than every id 0.

    Known difference: characters first assigned in Unicode 17.0 (2025) are letters or digits to open_clip when its
    `regex` package knows Unicode 17, but unassigned to the tokenizers backend (Oniguruma tables, Unicode 16.0), so
    words containing them are split differently. Every character assigned up to Unicode 16.0 gives identical ids.

    Args:
        vocab: Token -> id mapping, or a path to `vocab.json`.
        merges: BPE merges (`("a", "b")` pairs or `"a b"` strings), or a path to `merges.txt`.
        unk_token / bos_token / eos_token: Special tokens (open_clip's names).
        pad_token: Padding token; must already be in the vocabulary (default `"!"`, id 0).
        model_max_length: Context length of the text towers.

    Example:

    ```python
    >>> from modeling_mobileclip import MobileCLIPTokenizer
    >>> tokenizer = MobileCLIPTokenizer.from_bundled_vocab()
    >>> tokenizer(["a photo of a cat"], return_tensors="pt")["input_ids"].shape
    torch.Size([1, 77])
    ```
    """

    model_input_names = ["input_ids"]

    def __init__(
        self,
        vocab: str | Path | dict[str, int] | None = None,
        merges: str | Path | list | None = None,
        unk_token: str = END_OF_TEXT,
        bos_token: str = START_OF_TEXT,
        eos_token: str = END_OF_TEXT,
        pad_token: str = PAD_TOKEN,
        model_max_length: int = CONTEXT_LENGTH,
        **kwargs,
    ):
        # The pad token is set only after construction: registering "!" as a special (added) token would make the
        # backend cut every "!" out of captions instead of running BPE over it.
        super().__init__(
            vocab=_read_vocab(vocab),
            merges=_read_merges(merges),
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=eos_token,
            model_max_length=model_max_length,
            **kwargs,
        )
        self._tokenizer.normalizer = None
        self._tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(f"(?i){_WORD_PATTERN}"), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        # CLIPTokenizer turns "</w>" into spaces by wrapping `decode` in Python, which pickling loses; a backend
        # decoder also survives pickling (DataLoader workers, datasets.map) and saving.
        self._tokenizer.decoder = decoders.Sequence(
            [decoders.ByteLevel(), decoders.Replace("</w>", " "), decoders.Strip(" ", 0, 1)]
        )
        if self._tokenizer.token_to_id(str(pad_token)) is None:
            raise ValueError(f"pad_token {pad_token!r} is not in the vocabulary; MobileCLIP pads with {PAD_TOKEN!r}.")
        self.pad_token = pad_token

    @classmethod
    def from_bundled_vocab(cls, vocab_dir: str | Path | None = None, **kwargs) -> "MobileCLIPTokenizer":
        """Builds the tokenizer offline from `vocab.json` + `merges.txt` (default: the copy shipped in `tokenizer/`)."""
        vocab_dir = Path(vocab_dir) if vocab_dir is not None else BUNDLED_VOCAB_DIR
        vocab_path, merges_path = vocab_dir / "vocab.json", vocab_dir / "merges.txt"
        missing = [str(path) for path in (vocab_path, merges_path) if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"MobileCLIP vocabulary files not found: {', '.join(missing)}. They ship in the modeling_mobileclip "
                "package (generate them with `python -m modeling_mobileclip.convert_vocab`); a saved processor "
                "folder loads with `AutoProcessor.from_pretrained(folder, trust_remote_code=True)` instead."
            )
        return cls(vocab=vocab_path, merges=merges_path, **kwargs)

    def __call__(self, text=None, *args, padding="max_length", truncation=None, **kwargs):
        """Tokenizes like `open_clip.tokenize` by default: (batch, 77) ids, see the class docstring for `padding`."""
        if isinstance(text, (list, tuple)) and len(text) == 0 and not args:
            return self._empty_batch(padding, kwargs)
        return super().__call__(text, *args, padding=padding, truncation=truncation, **kwargs)

    def _empty_batch(self, padding, kwargs) -> BatchEncoding:
        """An empty batch, shaped like `open_clip.tokenize([])`: (0, 77) int64 ids (0 wide with `padding=False`).

        transformers' fast tokenizer indexes the first encoding of a batch and raises IndexError on `[]`; a caller
        filtering captions can legitimately end up with none, and open_clip returns an empty tensor for that.
        """
        unpadded = padding is False or (
            isinstance(padding, str) and PaddingStrategy(padding) == PaddingStrategy.DO_NOT_PAD
        )
        width = 0 if unpadded else (kwargs.get("max_length") or self.model_max_length)
        data = {"input_ids": np.zeros((0, width), dtype=np.int64)}
        if kwargs.get("return_attention_mask"):
            data["attention_mask"] = np.zeros((0, width), dtype=np.int64)
        if kwargs.get("return_tensors") is None:
            data = {key: [] for key in data}  # like a non-empty batch without return_tensors: lists of id lists
        return BatchEncoding(data, tensor_type=kwargs.get("return_tensors"))

    def _get_padding_truncation_strategies(self, padding=False, truncation=None, max_length=None, **kwargs):
        if padding is True or (isinstance(padding, str) and PaddingStrategy(padding) == PaddingStrategy.LONGEST):
            padding = PaddingStrategy.MAX_LENGTH
        if truncation is None:
            truncation = True
        return super()._get_padding_truncation_strategies(
            padding=padding, truncation=truncation, max_length=max_length, **kwargs
        )

    def _decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        if skip_special_tokens and isinstance(token_ids, (list, tuple)) and self.eos_token_id in token_ids:
            token_ids = list(token_ids)[: list(token_ids).index(self.eos_token_id) + 1]
        return super()._decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)

    def _encode_plus(self, text, text_pair=None, is_split_into_words=False, **kwargs):
        if text_pair is not None:
            raise ValueError("MobileCLIPTokenizer encodes single captions; text pairs (text_pair) are not supported.")
        if is_split_into_words:
            raise ValueError(
                "MobileCLIPTokenizer cleans and splits raw captions itself, like open_clip; pre-tokenized input "
                "(is_split_into_words=True) is not supported."
            )
        if isinstance(text, str):
            text = _prepare_caption(text)
        elif isinstance(text, (list, tuple)):
            text = [_prepare_caption(caption) if isinstance(caption, str) else caption for caption in text]
        return super()._encode_plus(text, **kwargs)


# PIL modes whose values PIL's RGB conversion clips to 0..255, with the value range mapped to 0..255 instead.
# 16-bit files decode to "I;16*" (PNG, TIFF) or "I" (PGM/PPM); "F" is float32 and taken to be in [0, 1], the range
# `ToTensor` and transformers use for float images.
_HIGH_DEPTH_RANGES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def _high_depth_to_8bit(image: PIL.Image.Image) -> PIL.Image.Image:
    """An 8-bit grayscale ("L") copy of a 16-bit / float image, scaled by its mode's full range and rounded."""
    values = np.asarray(image, dtype=np.float64)
    top = _HIGH_DEPTH_RANGES[image.mode]
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not (0 <= low and high <= top):  # also catches NaN
        raise ValueError(
            f"Cannot map a mode {image.mode!r} image to 8 bits: its values span [{low:g}, {high:g}], outside the "
            f"expected [0, {top:g}] for this mode. Rescale it yourself, e.g. "
            "`Image.fromarray(np.uint8(np.clip(values / values.max(), 0, 1) * 255))`, or pass an 8-bit image."
        )
    # rint on v * 255 / top: a 16-bit value v = 257 * k (the usual 8 -> 16 bit expansion) gives back exactly k.
    return PIL.Image.fromarray(np.rint(values * (255.0 / top)).astype(np.uint8))  # 2-D uint8: mode "L"


class MobileCLIPImageProcessor(PilBackend):
    r"""Image processor bit-exact with the official MobileCLIP transform.

    The transform is `Resize(size, interpolation)` on the shortest side (PIL, antialiased), `CenterCrop(size)`,
    `ToTensor()` and, for MobileCLIP2-S3/S4/L-14 and v1 S3/S4/L-14, `Normalize(OpenAI mean, std)`. transformers'
    `CLIPImageProcessor` differs from it twice: its torchvision backend resizes differently (up to 1/255), and both
    backends floor the center-crop offset where torchvision rounds it (one row or column off when the margin is odd,
    e.g. a 340x388 image at 224). This class resizes with PIL and crops with torchvision's offsets; scaling (float64
    product cast to float32) and normalisation (float32) already equal `ToTensor` / `Normalize` bit for bit.

    Saved configs name this class (with an `auto_map`), so reloading never silently switches to another backend.

    Known difference from open_clip for non-RGB inputs: images are converted to RGB first (transparency composited on
    white, transformers' convention), whereas open_clip resizes in the original mode and drops alpha afterwards, so
    palette ("P") and semi-transparent images differ; RGB and grayscale ("L") images match exactly.

    High bit depth: PIL's own RGB conversion clips 16-bit and float images to 0..255 (a 16-bit photo turns almost
    white, a float one almost black, which open_clip also does). Here they are first mapped to 8 bits by their real
    range, then processed like an 8-bit grayscale image: `I;16` (16-bit PNG/TIFF) and `I` (16-bit PGM; values must
    lie in 0..65535) as `round(v * 255 / 65535)`, `F` (values must lie in [0, 1]) as `round(v * 255)`. Other ranges
    raise a ValueError: rescale such an image yourself.

    Bounded memory: resizing the shortest side of a very elongated image makes the long side explode (a 20000x1
    image becomes 5,120,000x256 pixels, about 4 GB, before the center crop), so images whose aspect ratio exceeds
    `max_aspect_ratio` (64:1, at most ~13 MB for the resized image at 256) are refused with a ValueError; crop or
    pad them first. Every other image is processed exactly as before.

    Args:
        size: `{"shortest_edge": S}`, the resize target of the shortest side.
        crop_size: `{"height": S, "width": S}`.
        resample: `PILImageResampling.BILINEAR` or `BICUBIC`.
        do_normalize / image_mean / image_std: Normalisation after scaling to [0, 1] (off for variants without one).
        Other arguments are those of transformers' image processors.
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    size = {"shortest_edge": 256}
    default_to_square = False
    crop_size = {"height": 256, "width": 256}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = False
    image_mean = [0.0, 0.0, 0.0]
    image_std = [1.0, 1.0, 1.0]
    do_convert_rgb = True
    # Upper bound of long side / short side for shortest-edge resizing: keeps the resized image (and its copies)
    # at most `max_aspect_ratio * shortest_edge**2 * 3` bytes. A class attribute, not a saved setting: raise it on
    # the instance if genuinely needed.
    max_aspect_ratio = 64

    @classmethod
    def from_variant(cls, name: str, **kwargs) -> "MobileCLIPImageProcessor":
        """The preprocessing of a published variant (see `modeling_mobileclip.VARIANTS`); `kwargs` override it."""
        preset = variant_preset(name)
        image_size = preset["vision_config"]["image_size"]
        mean, std = list(preset["image_mean"]), list(preset["image_std"])
        settings = dict(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            resample=PILImageResampling[preset["resample"].upper()],
            do_normalize=(mean, std) != ([0.0] * 3, [1.0] * 3),
            image_mean=mean,
            image_std=std,
        )
        return cls(**{**settings, **kwargs})

    def process_image(self, image, *args, **kwargs) -> np.ndarray:
        """Maps 16-bit and float PIL images to 8 bits by their range (see the class docstring), then as usual."""
        if isinstance(image, PIL.Image.Image) and image.mode in _HIGH_DEPTH_RANGES:
            image = _high_depth_to_8bit(image)
        return super().process_image(image, *args, **kwargs)

    def resize(self, image: np.ndarray, size, *args, **kwargs) -> np.ndarray:
        """Shortest-edge resize (transformers' PIL path, unchanged), refusing aspect ratios above `max_aspect_ratio`."""
        if size.shortest_edge and not size.longest_edge:
            height, width = image.shape[-2:]
            short, long = min(height, width), max(height, width)
            if long > self.max_aspect_ratio * short:
                new_long = int(size.shortest_edge * long / short)  # transformers' formula for the long side
                resized = (new_long, size.shortest_edge) if width >= height else (size.shortest_edge, new_long)
                raise ValueError(
                    f"Image of {width}x{height} pixels (width x height) has an aspect ratio of {long / short:.1f}:1, "
                    f"above the limit of {self.max_aspect_ratio}:1: resizing its shortest side to "
                    f"{size.shortest_edge} would make a {resized[0]}x{resized[1]} image "
                    f"({3 * resized[0] * resized[1] / 1e6:.0f} MB per copy) before the center crop. Crop or pad the "
                    "image to a less extreme aspect ratio first (e.g. `PIL.ImageOps.pad(image, (side, side))`), or "
                    "raise `image_processor.max_aspect_ratio` if that memory is acceptable."
                )
        return super().resize(image, size, *args, **kwargs)

    def center_crop(self, image: np.ndarray, size, **kwargs) -> np.ndarray:
        """torchvision's `center_crop` on a CHW array: zero-pads if too small, rounds the offsets (`round(d / 2)`)."""
        if size.height is None or size.width is None:
            raise ValueError(f"crop_size must have 'height' and 'width', got {dict(size)}.")
        height, width = image.shape[-2:]
        pad_top, pad_left = max(size.height - height, 0) // 2, max(size.width - width, 0) // 2
        pad_bottom, pad_right = (max(size.height - height, 0) + 1) // 2, (max(size.width - width, 0) + 1) // 2
        if pad_top or pad_left or pad_bottom or pad_right:
            image = np.pad(image, ((0, 0), (pad_top, pad_bottom), (pad_left, pad_right)))
            height, width = image.shape[-2:]
        top, left = int(round((height - size.height) / 2.0)), int(round((width - size.width) / 2.0))
        return image[..., top : top + size.height, left : left + size.width]


class MobileCLIPProcessor(ProcessorMixin):
    r"""Bundles a [`MobileCLIPImageProcessor`] and a [`MobileCLIPTokenizer`].

    `processor(text=[...], images=[...], return_tensors="pt")` returns `input_ids` (batch, 77; open_clip ids padded
    with 0) and/or `pixel_values` (batch, 3, S, S). Tokenizer options (`padding`, `truncation`, ...) and image options
    (`do_center_crop`, ...) may be passed as keywords or as `text_kwargs` / `images_kwargs` dicts.

    Example:

    ```python
    >>> from modeling_mobileclip import MobileCLIPProcessor
    >>> processor = MobileCLIPProcessor.from_variant("mobileclip-s0")
    >>> from PIL import Image
    >>> batch = processor(text=["a dog", "a cat"], images=[Image.new("RGB", (640, 480))], return_tensors="pt")
    >>> batch["input_ids"].shape, batch["pixel_values"].shape
    (torch.Size([2, 77]), torch.Size([1, 3, 256, 256]))
    ```
    """

    # transformers finds the sub-processors from these parameter names.
    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_variant(cls, name: str, vocab_dir: str | Path | None = None,
                     model_max_length: int = CONTEXT_LENGTH) -> "MobileCLIPProcessor":
        """Builds the preprocessing of a published variant offline, e.g. `"mobileclip-s0"` or `"mobileclip2-l-14"`.

        `vocab_dir` holds `vocab.json` + `merges.txt` (default: the copy shipped with this package);
        `model_max_length` is the text towers' context length (77 for every published variant).
        """
        return cls(
            image_processor=MobileCLIPImageProcessor.from_variant(name),
            tokenizer=MobileCLIPTokenizer.from_bundled_vocab(vocab_dir, model_max_length=model_max_length),
        )

    @classmethod
    def from_model_config(cls, config, default_variant: str | None = None) -> "MobileCLIPProcessor":
        """The preprocessing of a model built from a variant: the variant's (`config.variant`, else `default_variant`)
        with a tokenizer at the model's own text context length (a `config_overrides` run may shorten it)."""
        return cls.from_variant(config.variant or default_variant,
                                model_max_length=config.text_config.max_position_embeddings)

    def push_to_hub(self, repo_id: str, model=None, **kwargs):
        """With `model`: the complete folder (weights, remote code, these processor files, model card) through
        `MobileCLIPModel.push_to_hub(repo_id, processor=self)`. Without: transformers' push of the processor files
        and their remote code only (a repo's model card and weights are left as they are)."""
        if model is not None:
            return model.push_to_hub(repo_id, processor=self, **kwargs)
        return super().push_to_hub(repo_id, **kwargs)

    def __call__(self, text=None, images=None, return_tensors=None, **kwargs) -> BatchFeature:
        """Tokenizes `text` (a caption or a list) and/or preprocesses `images` (one image or a list)."""
        if text is None and images is None:
            raise ValueError("MobileCLIPProcessor needs `text`, `images` or both; got neither.")
        merged = self._merge_kwargs(tokenizer_init_kwargs={}, return_tensors=return_tensors, **kwargs)
        data = {}
        if text is not None:
            data.update(self.tokenizer(text, **merged["text_kwargs"]))
        if images is not None:
            data.update(self.image_processor(images, **merged["images_kwargs"]))
        return BatchFeature(data=data, tensor_type=return_tensors)


MobileCLIPTokenizer.register_for_auto_class("AutoTokenizer")
MobileCLIPImageProcessor.register_for_auto_class("AutoImageProcessor")
MobileCLIPProcessor.register_for_auto_class("AutoProcessor")


__all__ = [
    "MobileCLIPTokenizer",
    "MobileCLIPImageProcessor",
    "MobileCLIPProcessor",
    "clean_caption",
    "CONTEXT_LENGTH",
]
