"""MobileCLIP processor against its oracles: `open_clip.tokenize`, open_clip's image transforms and the golden files
produced by Apple's code (`tests/fixtures/golden`)."""

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import textwrap
import unicodedata

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
from open_clip.transform import image_transform
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms

from conftest import EMOJI, GOLDEN
from modeling_mobileclip.configuration_mobileclip import VARIANTS, MobileCLIPConfig, variant_preset
from modeling_mobileclip.modeling_mobileclip import MobileCLIPModel
from modeling_mobileclip.convert_vocab import find_bpe_file, write_vocab_files
from modeling_mobileclip.processing_mobileclip import (
    BUNDLED_VOCAB_DIR,
    MobileCLIPImageProcessor,
    MobileCLIPProcessor,
    MobileCLIPTokenizer,
)


GOLDEN_IMAGES = [GOLDEN / "images" / f"{name}.png" for name in ("desk", "fruit")]  # the order of the golden tensors
EMOJI_PARQUET = EMOJI / "twitter.parquet"

# Our variant -> open_clip (model name, pretrained tag) whose preprocessing config is the oracle.
OPEN_CLIP_PREPROCESSING = {
    "mobileclip-s1": ("MobileCLIP-S1", "datacompdr"),
    "mobileclip-s2": ("MobileCLIP-S2", "datacompdr"),
    "mobileclip-b": ("MobileCLIP-B", "datacompdr"),
    "mobileclip2-s0": ("MobileCLIP2-S0", "dfndr2b"),
    "mobileclip2-s2": ("MobileCLIP2-S2", "dfndr2b"),
    "mobileclip2-b": ("MobileCLIP2-B", "dfndr2b"),
    "mobileclip2-s3": ("MobileCLIP2-S3", "dfndr2b"),
    "mobileclip2-s4": ("MobileCLIP2-S4", "dfndr2b"),
    "mobileclip2-l-14": ("MobileCLIP2-L-14", "dfndr2b"),
}

EDGE_CASE_CAPTIONS = [
    # plain, case, punctuation, numbers, contractions
    "a photo of a cat",
    "A PHOTO OF A CAT",
    "Hello World!!! wow!? ...",
    "don't you'll I'M we've they'd she's it'S",
    "3.14159 1,000,000 2024-01-31 #1 50% $9.99 1/2",
    "x_1 + y_2 = z^3; {a: [1, 2]} @user #hashtag",
    "!!!!????....,,,,;;;;::::",
    "''''\"\"\"\"````",
    "a-b-c a--b a---b",
    "http://example.com/path?q=1&r=2#frag",
    # unicode letters and scripts
    "Café crème brûlée naïve résumé",
    "Ελληνικά κείμενο ΟΔΟΣ",
    "кириллица Москва",
    "東京タワー 日本語のテキスト",
    "中文字符测试，标点符号。",
    "한국어 텍스트",
    "العربية نص",
    "עברית טקסט",
    "ภาษาไทย",
    "हिन्दी पाठ",
    "İstanbul straße ǅemal ŉ",
    "e\u0301 cafe\u0301 (combining accents)",
    "Ａ\u0301",
    "zero\u200bwidth\u200cjoiner\u200dtest",
    "soft\u00adhyphen and bidi\u202emark",
    # ftfy: mojibake, ligatures, fullwidth, curly quotes, control characters
    "cafÃ© Ã©tÃ©",
    "donâ€™t â€œquotedâ€\x9d",
    "ﬁne ﬂow ﬀ ﬃ ﬄ ﬅ ﬆ",
    "ＡＢＣ１２３ ｆｕｌｌｗｉｄｔｈ",
    "“curly quotes” and ‘single’ „low“ «guillemets» ‹single›",
    "em—dash en–dash … ellipsis • bullet",
    "tab\there\x00nul\x07bell\x1bescape",
    "\ufeffbyte order mark",
    "line\u2028separator\u2029paragraph",
    # HTML entities (open_clip unescapes twice)
    "&amp; &lt;html&gt; &quot;q&quot; &#39;s",
    "&amp;lt;double&amp;gt; &amp;amp;",
    "&nbsp;non&nbsp;breaking &copy; &euro; &#x1F600; &#128512;",
    "&notanentity; & ampersand &",
    "&#769;e e&#769;",
    "<b>bold</b> &amp;lt;tag&amp;gt; &amp;amp;",  # ftfy leaves entities alone next to markup; open_clip does not
    # emoji
    "😀🎉 party 🐈‍⬛ black cat",
    "👨‍👩‍👧‍👦 family 👍🏽 skin tone 🇯🇵 flag",
    "❤️ ✌︎ #️⃣ 🏳️‍🌈",
    # whitespace
    "",
    " ",
    "   \t\n  ",
    "  leading and trailing  ",
    "many     spaces\t\ttabs\n\nnewlines\r\nwindows",
    "nbsp\u00a0and\u3000ideographic\u2009thin",
    "\x1c\x1d\x1e\x1f separators \x85 nel",
    # special tokens: open_clip's literals are specials where its word pattern isolates them, HF's are plain text
    "<start_of_text> hi <end_of_text>",
    "<START_OF_TEXT>upper<End_Of_Text>",
    "a<start_of_text>b<end_of_text>c",
    "x!<end_of_text>",
    "<<start_of_text>",
    "!!!!<end_of_text>!!",
    "<end_of_text><end_of_text>",
    "<end_of_text>> >><start_of_text>",
    "'s<start_of_text>",
    "9<end_of_text>",
    "<ſtart_of_text> long s",
    "'ſ case-folded contraction",
    "<|startoftext|> hi <|endoftext|>",
    "<|endoftext|>",
    "&lt;start_of_text&gt; escaped",
    "<start_of_text",
    "start_of_text>",
    # lengths around the 77-token context
    "word " * 75,
    "word " * 76,
    "word " * 200,
    "🎉" * 40,
    " ".join(f"token{i}" for i in range(60)),
    "supercalifragilisticexpialidocious " * 10,
]


def _open_clip_ids(texts):
    return open_clip.tokenize(texts)


def _assert_same_ids(ours, reference, texts):
    mismatches = [i for i in range(len(texts)) if not torch.equal(ours[i], reference[i])]
    details = "\n".join(
        f"  {texts[i]!r}\n    ours {ours[i].tolist()}\n    open_clip {reference[i].tolist()}" for i in mismatches[:5]
    )
    assert not mismatches, f"{len(mismatches)}/{len(texts)} captions differ from open_clip.tokenize:\n{details}"


def _random_unicode_captions(count, seed=0):
    """Strings of code points assigned in this Python's Unicode database, drawn from many blocks."""
    blocks = [
        (0x20, 0x7F), (0x00, 0x20), (0xA0, 0x250), (0x370, 0x530), (0x600, 0x700), (0x900, 0xE00), (0x1100, 0x1200),
        (0x1E00, 0x2C00), (0x3000, 0x3100), (0x4E00, 0x4F00), (0xAC00, 0xAD00), (0xFB00, 0xFFFE), (0x1F300, 0x1FA00),
        (0x1D400, 0x1D800), (0x2000, 0x2070),
    ]  # fmt: skip
    rng = random.Random(seed)
    captions = []
    for _ in range(count):
        chars = (chr(rng.randrange(*rng.choice(blocks))) for _ in range(rng.randint(1, 40)))
        captions.append("".join(c for c in chars if unicodedata.category(c) not in ("Cn", "Cs")))
    return captions


@pytest.fixture(scope="module")
def tokenizer():
    return MobileCLIPTokenizer.from_bundled_vocab()


@pytest.fixture(scope="module")
def golden_images():
    return [Image.open(path) for path in GOLDEN_IMAGES]


def test_edge_case_captions_match_open_clip(tokenizer):
    ours = tokenizer(EDGE_CASE_CAPTIONS, return_tensors="pt")["input_ids"]
    _assert_same_ids(ours, _open_clip_ids(EDGE_CASE_CAPTIONS), EDGE_CASE_CAPTIONS)


def test_random_unicode_and_real_captions_match_open_clip(tokenizer):
    table = pq.read_table(EMOJI_PARQUET, columns=["emoji", "name", "captions"]).to_pydict()
    captions = table["emoji"] + table["name"] + [caps[-1] for caps in table["captions"]]
    captions += _random_unicode_captions(1500)
    assert len(captions) > 5000
    _assert_same_ids(tokenizer(captions, return_tensors="pt")["input_ids"], _open_clip_ids(captions), captions)


@pytest.mark.parametrize("variant", ["s0", "b"])
def test_golden_captions_match_apple_input_ids(tokenizer, variant):
    captions = json.loads((GOLDEN / f"apple_mobileclip_{variant}.io.json").read_text())["captions"]
    expected = load_file(GOLDEN / f"apple_mobileclip_{variant}.io.safetensors")["input_ids"]
    assert torch.equal(tokenizer(captions, return_tensors="pt")["input_ids"], expected)


@pytest.mark.parametrize("padding", [True, "longest", "max_length"])
def test_padding_requests_still_give_open_clip_77_zero_padded_ids(tokenizer, padding):
    captions = ["a dog", "a photo of a very small cat sitting on a mat"]
    reference = _open_clip_ids(captions)
    # padding=True is what transformers' zero-shot-image-classification pipeline sends
    assert torch.equal(tokenizer(captions, padding=padding, return_tensors="pt")["input_ids"], reference)
    unpadded = [tokenizer(caption, padding=False) for caption in captions]
    assert torch.equal(tokenizer.pad(unpadded, padding=padding, return_tensors="pt")["input_ids"], reference)
    processor = MobileCLIPProcessor(image_processor=MobileCLIPImageProcessor(), tokenizer=tokenizer)
    assert torch.equal(processor(text=captions, padding=padding, return_tensors="pt")["input_ids"], reference)


def test_explicit_no_padding_gives_the_unpadded_open_clip_prefix(tokenizer):
    reference = _open_clip_ids(["a red apple"])[0]
    ids = tokenizer("a red apple", padding=False)["input_ids"]
    assert ids == reference[: len(ids)].tolist() and reference[len(ids) :].eq(0).all()


def test_decode_matches_open_clip_decode_also_after_pickling(tokenizer):
    text = "A photo of a CAT!! ﬁne &amp; 東京"
    ids = tokenizer(text)["input_ids"]
    eot = ids.index(tokenizer.eos_token_id)
    expected = open_clip.get_tokenizer("ViT-B-16").decode(ids[1:eot]).strip()
    unpickled = pickle.loads(pickle.dumps(tokenizer))  # as DataLoader workers and datasets.map receive it
    for candidate in (tokenizer, unpickled):
        assert candidate.decode(ids, skip_special_tokens=True) == expected
    assert unpickled(text)["input_ids"] == ids


def test_text_pairs_and_pre_tokenized_input_are_rejected(tokenizer):
    with pytest.raises(ValueError, match="text pairs"):
        tokenizer("a cat", "a dog")
    with pytest.raises(ValueError, match="is_split_into_words"):
        tokenizer(["a", "cat"], is_split_into_words=True)


def test_shipped_vocab_files_regenerate_from_open_clip_bpe(tmp_path):
    for path in write_vocab_files(find_bpe_file(), tmp_path):
        assert path.read_bytes() == (BUNDLED_VOCAB_DIR / path.name).read_bytes(), path.name
    assert (BUNDLED_VOCAB_DIR / "LICENSE").read_text().count("MIT") >= 1


def test_missing_vocab_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        MobileCLIPTokenizer.from_bundled_vocab(tmp_path)


@pytest.mark.parametrize(("variant", "golden"), [("mobileclip-s0", "s0"), ("mobileclip-b", "b")])
def test_pixels_match_apple_golden_preprocessing(golden_images, variant, golden):
    expected = load_file(GOLDEN / f"apple_mobileclip_{golden}.io.safetensors")["pixel_values_uint8"]
    pixel_values = MobileCLIPProcessor.from_variant(variant)(images=golden_images, return_tensors="pt")["pixel_values"]
    assert pixel_values.dtype == torch.float32
    assert torch.equal(pixel_values, expected.float() / 255)  # the model input of the golden files, bit for bit


@pytest.mark.parametrize("variant", sorted(OPEN_CLIP_PREPROCESSING))
def test_variant_settings_follow_open_clip_pretrained_config(variant):
    name, tag = OPEN_CLIP_PREPROCESSING[variant]
    reference = open_clip.get_pretrained_cfg(name, tag)
    processor = MobileCLIPImageProcessor.from_variant(variant)
    image_size = open_clip.get_model_config(name)["vision_cfg"]["image_size"]
    assert processor.size == {"shortest_edge": image_size}
    assert processor.crop_size == {"height": image_size, "width": image_size}
    assert reference["resize_mode"] == "shortest"
    assert processor.resample.name.lower() == reference["interpolation"]
    assert np.allclose(processor.image_mean, reference["mean"]) and np.allclose(processor.image_std, reference["std"])
    assert processor.do_normalize == (tuple(reference["mean"]) != (0.0, 0.0, 0.0))


@pytest.mark.parametrize("variant", ["mobileclip2-s3", "mobileclip2-l-14"])  # OpenAI mean/std; bilinear, bicubic
def test_pixels_match_open_clip_transform(golden_images, variant):
    cfg = open_clip.get_pretrained_cfg(*OPEN_CLIP_PREPROCESSING[variant])
    image_size = variant_preset(variant)["vision_config"]["image_size"]
    transform = image_transform(
        image_size,
        is_train=False,
        mean=cfg["mean"],
        std=cfg["std"],
        interpolation=cfg["interpolation"],
        resize_mode=cfg["resize_mode"],
    )
    rng = np.random.default_rng(0)
    # odd and even crop margins, upscaling, landscape/portrait, grayscale
    shapes = [(301, 517, "RGB"), (517, 300, "RGB"), (100, 80, "RGB"), (255, 255, "L"), (image_size, 999, "RGB")]
    images = golden_images + [
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
        for width, height, mode in shapes
    ]
    processor = MobileCLIPImageProcessor.from_variant(variant)
    ours = processor(images, return_tensors="pt")["pixel_values"]
    assert torch.equal(ours, torch.stack([transform(image) for image in images]))


def test_from_variant_covers_every_variant_and_rejects_unknown_names():
    for variant in [*VARIANTS, "mobileclip-tiny"]:
        image_size = variant_preset(variant)["vision_config"]["image_size"]
        image = Image.new("RGB", (image_size + 7, image_size * 2))
        pixel_values = MobileCLIPProcessor.from_variant(variant)(images=image, return_tensors="pt")["pixel_values"]
        assert pixel_values.shape == (1, 3, image_size, image_size)
    with pytest.raises(ValueError, match="mobileclip-s0"):
        MobileCLIPProcessor.from_variant("mobileclip-s9")


def test_center_crop_pads_and_rounds_like_torchvision():
    rng = np.random.default_rng(1)
    processor = MobileCLIPImageProcessor(do_resize=False, crop_size={"height": 64, "width": 64})
    reference = transforms.Compose([transforms.CenterCrop(64), transforms.ToTensor()])
    for width, height in [(50, 71), (71, 50), (97, 64), (64, 99), (33, 33)]:  # padding needed, odd margins
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        assert torch.equal(processor(image, return_tensors="pt")["pixel_values"][0], reference(image)), (width, height)


def test_processor_requires_an_input():
    with pytest.raises(ValueError, match="text"):
        MobileCLIPProcessor.from_variant("mobileclip-s0")()


RELOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    for name in ("modeling_mobileclip", "dataset_scripts", "training", "evaluation"):
        sys.modules[name] = None  # our packages must not be needed: everything comes from the saved folders
    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor, AutoTokenizer, pipeline

    captions, labels, paths = json.loads(sys.argv[1])
    images = [Image.open(path) for path in paths]
    processor = AutoProcessor.from_pretrained("saved", trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained("saved", trust_remote_code=True)
    for component in (processor, processor.tokenizer, processor.image_processor, tokenizer):
        assert type(component).__module__.startswith("transformers_modules."), type(component).__module__
    batch = processor(text=captions, images=images, padding=True, return_tensors="np")
    # the pipeline tokenizes its prompts with padding=True
    classifier = pipeline("zero-shot-image-classification", model="saved_tiny", trust_remote_code=True)
    scores = {result["label"]: result["score"] for result in classifier(images[1], candidate_labels=labels)}
    np.savez(
        "reloaded.npz",
        input_ids=batch["input_ids"],
        pixel_values=batch["pixel_values"],
        tokenizer_ids=tokenizer(captions, padding="longest", return_tensors="np")["input_ids"],
        pipeline_scores=np.array([scores[label] for label in labels]),
    )
    """
)


@pytest.mark.slow
def test_save_and_auto_processor_reload_without_our_package(tmp_path, golden_images):
    processor = MobileCLIPProcessor.from_variant("mobileclip2-l-14")  # bicubic, normalised, odd crop margin
    processor.save_pretrained(tmp_path / "saved")
    torch.manual_seed(0)
    tiny_model = MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny")).eval()  # bidirectional text tower
    tiny_processor = MobileCLIPProcessor.from_variant("mobileclip-tiny")
    tiny_model.save_pretrained(tmp_path / "saved_tiny")
    tiny_processor.save_pretrained(tmp_path / "saved_tiny")
    captions = ["a bowl of fruit", "<start_of_text> x !<end_of_text>", "Café &amp; ﬁne 😀", "word " * 90]
    labels = ["fruit", "a desk with a keyboard, a pen and a phone on a dark wooden table"]
    paths = [str(shutil.copy(path, tmp_path)) for path in GOLDEN_IMAGES]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HOME=str(tmp_path / "hf_home"))
    command = [sys.executable, "-c", RELOAD_SCRIPT, json.dumps([captions, labels, paths])]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    reloaded = np.load(tmp_path / "reloaded.npz")

    expected = processor(text=captions, images=golden_images, return_tensors="np")
    local = MobileCLIPProcessor.from_pretrained(tmp_path / "saved")  # our classes, no remote code involved
    assert type(local.image_processor) is MobileCLIPImageProcessor and type(local.tokenizer) is MobileCLIPTokenizer
    local_batch = local(text=captions, images=golden_images, return_tensors="np")
    reference_ids = _open_clip_ids(captions).numpy()
    for ids in (expected["input_ids"], reloaded["input_ids"], reloaded["tokenizer_ids"], local_batch["input_ids"]):
        np.testing.assert_array_equal(ids, reference_ids)
    assert np.array_equal(reloaded["pixel_values"], expected["pixel_values"])
    assert np.array_equal(local_batch["pixel_values"], expected["pixel_values"])

    # The pipeline's scores are those of open_clip's 77-long zero-padded prompts (dynamic padding changes them).
    prompt_ids = _open_clip_ids([f"This is a photo of {label}." for label in labels])
    pixel_values = tiny_processor(images=golden_images[1], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probabilities = tiny_model(input_ids=prompt_ids, pixel_values=pixel_values).logits_per_image.softmax(-1)[0]
    np.testing.assert_allclose(reloaded["pipeline_scores"], probabilities.numpy(), rtol=1e-5, atol=1e-6)


def test_a_folder_written_without_a_processor_tokenizes_at_the_models_text_context(tmp_path):
    """`write_model_folder` derives the processor from the model's config: a model whose text context was shortened
    (`config_overrides`) gets open_clip's ids at that length, not the published 77."""
    from modeling_mobileclip.model_folder import write_model_folder

    config = MobileCLIPConfig.from_variant("mobileclip-tiny", text_config={"max_position_embeddings": 32})
    folder = write_model_folder(MobileCLIPModel(config), tmp_path / "short")
    texts = ["an emoji of a grinning face", " ".join(["smiling cat face with heart-shaped eyes"] * 6)]
    ids = MobileCLIPProcessor.from_pretrained(folder)(text=texts, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, open_clip.tokenize(texts, context_length=32))
