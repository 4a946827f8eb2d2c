"""The web demo's answers (`evaluation.demo`), checked against the model itself: zero-shot probabilities equal the
model's own softmax, search equals a brute-force ranking, the embedding cache is reused only for the same model and
images, the ONNX backend matches PyTorch without importing torch, and bad input gets one clear message."""

import json
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT, subprocess_env
from evaluation.demo.app import DemoInputError, DemoModel, classify, parse_labels, search
from evaluation.demo.cli import parse_settings
from evaluation.demo.image_index import ImageIndex, open_image_set
from evaluation.demo.torch_encoder import TorchEncoder
from modeling_mobileclip import MobileCLIPModel, MobileCLIPProcessor


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return TorchEncoder(str(tiny_model_dir))


@pytest.fixture(scope="module")
def emoji_images(emoji_subset):
    return datasets.load_dataset("parquet", data_files=str(emoji_subset), split="train")


def model_probabilities(model_dir, image, texts):
    """The oracle: the saved model's own forward (train-time form) on the processor's batch."""
    model = MobileCLIPModel.from_pretrained(model_dir).eval()
    processor = MobileCLIPProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        logits = model(**processor(text=texts, images=[image], return_tensors="pt")).logits_per_image
    return logits.softmax(-1)[0].numpy()


def test_zero_shot_equals_the_models_own_softmax(tiny_model_dir, encoder, emoji_images):
    image = emoji_images[0]["image"]
    labels = [emoji_images[i]["name"] for i in (0, 5, 9)]
    [result] = classify([DemoModel(encoder)], image, "\n".join(labels), "an emoji of {}")
    expected = model_probabilities(tiny_model_dir, image, [f"an emoji of {label}" for label in labels])
    np.testing.assert_allclose([result[label] for label in labels], expected, atol=1e-5)
    # comma-separated labels on one line are the same labels
    [same] = classify([DemoModel(encoder)], image, ", ".join(labels), "an emoji of {}")
    assert same == pytest.approx(result, abs=1e-6)


def test_search_ranks_like_brute_force_and_caches_by_model_and_images(encoder, emoji_subset, tmp_path, monkeypatch):
    images = open_image_set(str(emoji_subset), "train")
    assert len(images) == 37 and images.captions[0] == images.dataset[0]["name"]
    index = ImageIndex(encoder, images, tmp_path, batch_size=16, progress=False)
    assert not index.from_cache and index.embeddings.shape[0] == 37
    np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1, atol=1e-5)
    query = encoder.encode_texts(["an emoji of a red apple"])[0]
    all_scores = index.embeddings @ query
    indices, scores = index.search(query, 5)
    np.testing.assert_allclose(scores, np.sort(all_scores)[::-1][:5], rtol=0, atol=1e-7)
    np.testing.assert_allclose(all_scores[indices], scores, atol=1e-7)

    monkeypatch.setattr(type(encoder), "encode_images", lambda *args: pytest.fail("recomputed a cached index"))
    again = ImageIndex(encoder, images, tmp_path, progress=False)
    assert again.from_cache and np.array_equal(again.embeddings, index.embeddings)
    monkeypatch.undo()
    other_images = open_image_set(str(emoji_subset), "train[:10]")
    assert not ImageIndex(encoder, other_images, tmp_path, progress=False).from_cache
    encoder_copy = TorchEncoder.__new__(TorchEncoder)
    encoder_copy.__dict__.update(encoder.__dict__, fingerprint="other-weights")
    assert not ImageIndex(encoder_copy, images, tmp_path, progress=False).from_cache


def test_text_and_image_search_through_the_page_functions(encoder, emoji_subset, tmp_path):
    images = open_image_set(str(emoji_subset), "train")
    model = DemoModel(encoder, ImageIndex(encoder, images, tmp_path, progress=False))
    [gallery] = search([model], "an emoji of a dog", None, 3)
    query = encoder.encode_texts(["an emoji of a dog"])[0]
    best = np.sort(model.index.embeddings @ query)[::-1][:3]
    assert [float(caption.rsplit("(", 1)[1].rstrip(")")) for _, caption in gallery] == pytest.approx(best, abs=1e-3)
    # an image query finds that very image first (cosine 1 with itself)
    [gallery] = search([model], "", images.image(7), 1)
    assert gallery[0][1] == f"{images.captions[7]} (1.000)"


def test_bad_input_is_a_message_not_a_crash(encoder, tmp_path):
    models = [DemoModel(encoder)]
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    with pytest.raises(DemoInputError, match="at least one label"):
        classify(models, image, " \n ", "{}")
    with pytest.raises(DemoInputError, match="must contain"):
        classify(models, image, "cat", "a photo")
    not_an_image = tmp_path / "photo.png"
    not_an_image.write_text("hello")
    with pytest.raises(DemoInputError, match="photo.png is not an image"):
        classify(models, str(not_an_image), "cat", "{}")
    with pytest.raises(DemoInputError, match="aspect ratio"):  # the processor's limit, 64:1
        classify(models, Image.new("RGB", (6500, 100)), "cat", "{}")
    with pytest.raises(DemoInputError, match="Upload or paste"):
        classify(models, None, "cat", "{}")
    with pytest.raises(DemoInputError, match="--images"):
        search(models, "a cat", None, 3)
    assert parse_labels("a\nb, c\n") == ["a", "b, c"]


def test_command_line_needs_a_model(capsys):
    """The bad-input case of the command line (a missing --images folder) is tests/test_cli_errors.py's."""
    with pytest.raises(SystemExit) as exit_info:
        parse_settings([])
    assert exit_info.value.code == 2 and "give at least one --model or --onnx" in capsys.readouterr().err


@pytest.mark.slow
def test_onnx_backend_matches_pytorch_without_importing_torch(tiny_model_dir, encoder, emoji_images, tmp_path):
    from modeling_mobileclip.export import main as export_main

    export_main(["--model", str(tiny_model_dir), "--format", "onnx", "--output", str(tmp_path / "onnx")])
    image = emoji_images[3]["image"]
    image.save(tmp_path / "query.png")
    script = f"""
import json, sys
from PIL import Image
from evaluation.demo.encoders import open_encoder
onnx = open_encoder({str(tmp_path / "onnx")!r})
images = onnx.encode_images([Image.open({str(tmp_path / "query.png")!r})])
texts = onnx.encode_texts(["an emoji of a cat", "a dog"])
print(json.dumps({{"images": images.tolist(), "texts": texts.tolist(), "scale": onnx.logit_scale,
                  "torch": "torch" in sys.modules}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=subprocess_env(),
                            cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["torch"] is False, "the ONNX serving path imported torch"
    np.testing.assert_allclose(served["images"], encoder.encode_images([Image.open(tmp_path / "query.png")]),
                               atol=1e-4)
    np.testing.assert_allclose(served["texts"], encoder.encode_texts(["an emoji of a cat", "a dog"]), atol=1e-4)
    assert served["scale"] == pytest.approx(encoder.logit_scale, rel=1e-6)


def test_a_reparameterized_subfolder_serves_the_same_embeddings(tmp_path, emoji_images):
    from evaluation.demo.encoders import open_encoder
    from modeling_mobileclip import MobileCLIPConfig
    from modeling_mobileclip.model_folder import REPARAMETERIZED_SUBFOLDER, write_model_folder

    torch.manual_seed(1)
    model = MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny")).eval()
    folder = write_model_folder(model, tmp_path / "tiny", reparameterized_subfolder=True)
    served = {name: open_encoder(str(path), reparameterize=False) for name, path in
              {"train-time": folder, "fused": folder / REPARAMETERIZED_SUBFOLDER}.items()}
    assert served["fused"].name == f"tiny/{REPARAMETERIZED_SUBFOLDER}"
    images, texts = [emoji_images[i]["image"] for i in (1, 2)], ["an emoji of a cat", "a dog"]
    for encode, inputs in (("encode_images", images), ("encode_texts", texts)):
        fused, train_time = (getattr(served[name], encode)(inputs) for name in ("fused", "train-time"))
        np.testing.assert_allclose(fused, train_time, atol=1e-5)
