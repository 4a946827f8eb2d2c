"""Pushes against a local stand-in for the Hub API (`hub_helpers.LocalHub`): `MobileCLIPModel.push_to_hub`,
`MobileCLIPProcessor.push_to_hub(model=)` and `convert --push-to-hub` upload weights, remote code, processor files
and a model card (and the fused copy in `reparameterized/` when asked), after which `AutoModel`, `AutoProcessor` and
`pipeline` load the pushed folder and give the original model's embeddings. Also the model cards themselves: parsed
by huggingface_hub, model-index against the published numbers (tests/fixtures/reference), and the usage snippet run."""

import re

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image
from transformers import AutoModel, AutoProcessor, pipeline

from conftest import REFERENCE
from hub_helpers import LocalHub
from model_helpers import golden_state_dict
from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel
from modeling_mobileclip.convert import OFFICIAL_CHECKPOINTS, main as convert_main
from modeling_mobileclip.model_card import build_model_card
from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    return LocalHub(tmp_path / "hub").install(monkeypatch)


def tiny_model():
    torch.manual_seed(0)
    model = MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny")).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the fused copy has something to fold
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def test_model_push_round_trip_through_auto_classes_and_pipeline(local_hub, tmp_path, monkeypatch):
    model = tiny_model()
    commit = model.push_to_hub("me/tiny", reparameterized_subfolder=True, commit_message="first")
    assert commit.commit_url.startswith("https://huggingface.co/me/tiny/commit/")
    folder = local_hub.folder("me/tiny")
    files = set(local_hub.uploads[-1]["files"])
    assert {"config.json", "model.safetensors", "configuration_mobileclip.py", "modeling_mobileclip.py",
            "text_mobileclip.py", "vision_mobileclip.py", "outputs_mobileclip.py", "model_card.py",
            "processing_mobileclip.py", "processor_config.json", "tokenizer.json", "README.md",
            "reparameterized/model.safetensors", "reparameterized/README.md",
            "reparameterized/processor_config.json"} <= files, files
    assert local_hub.uploads[-1]["commit_message"] == "first"

    image = Image.new("RGB", (90, 70), (220, 40, 30))
    labels = ["a red square", "a blue circle"]
    loaded = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    reference_processor = MobileCLIPProcessor.from_variant("mobileclip-tiny")
    batch = processor(text=labels, images=[image], return_tensors="pt")
    expected_batch = reference_processor(text=labels, images=[image], return_tensors="pt")
    assert torch.equal(batch["input_ids"], expected_batch["input_ids"])
    assert torch.equal(batch["pixel_values"], expected_batch["pixel_values"])
    with torch.no_grad():
        pixels = batch["pixel_values"]
        torch.testing.assert_close(loaded.encode_image(pixels), model.encode_image(pixels), atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(loaded.encode_text(batch["input_ids"]), model.encode_text(batch["input_ids"]),
                                   atol=1e-7, rtol=1e-5)
        fused = AutoModel.from_pretrained(folder / "reparameterized", trust_remote_code=True).eval()
        assert fused.config.vision_config.reparameterized
        torch.testing.assert_close(fused.encode_image(batch["pixel_values"]), model.encode_image(batch["pixel_values"]),
                                   atol=1e-5, rtol=1e-4)
        prompts = [f"This is a photo of {label}." for label in labels]
        expected = model(**reference_processor(text=prompts, images=[image], return_tensors="pt"))
        expected = expected.logits_per_image.softmax(dim=-1)[0].tolist()
    classifier = pipeline("zero-shot-image-classification", model=str(folder), trust_remote_code=True)
    scores = {r["label"]: r["score"] for r in classifier(image, candidate_labels=labels)}
    for label, probability in zip(labels, expected):
        assert scores[label] == pytest.approx(probability, abs=1e-5)

    # The card: parsed by huggingface_hub, and its usage snippet runs as written against the pushed folder.
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "zero-shot-image-classification"
    snippet = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    assert '"me/tiny"' in snippet
    monkeypatch.chdir(tmp_path)
    image.save(tmp_path / "photo.jpg")
    exec(compile(snippet.replace('"me/tiny"', repr(str(folder))), "README.md", "exec"), {})
    assert "reparameterized" in ModelCard.load(folder / "reparameterized" / "README.md").text.lower()


def test_processor_push_with_model_carries_the_whole_folder(local_hub):
    model = tiny_model()
    processor = MobileCLIPProcessor.from_variant("mobileclip-tiny")
    processor.push_to_hub("me/tiny2", model=model)
    files = set(local_hub.uploads[-1]["files"])
    assert {"config.json", "model.safetensors", "modeling_mobileclip.py", "processor_config.json",
            "processing_mobileclip.py", "README.md"} <= files
    assert [c["repo_id"] for c in local_hub.created] == ["me/tiny2"]


def test_push_without_a_variant_needs_the_processor(local_hub):
    model = tiny_model()
    model.config.variant = None
    with pytest.raises(ValueError, match="pass processor="):
        model.push_to_hub("me/none")
    assert local_hub.uploads == []


@pytest.mark.slow
def test_convert_push_to_hub_uploads_the_converted_folder_with_its_fused_copy(golden_dir, local_hub, tmp_path):
    checkpoint = tmp_path / "mobileclip_s0.pt"
    torch.save(golden_state_dict(golden_dir, "s0"), checkpoint)
    out = tmp_path / "s0"
    convert_main(["--checkpoint", str(checkpoint), "--output", str(out), "--push-to-hub", "me/s0",
                  "--push-reparameterized"])
    pushed = local_hub.folder("me/s0")
    files = set(local_hub.uploads[-1]["files"])
    assert {"config.json", "model.safetensors", "processor_config.json", "modeling_mobileclip.py", "README.md",
            "reparameterized/model.safetensors", "reparameterized/README.md"} <= files
    card = ModelCard.load(pushed / "README.md")
    assert 'AutoModel.from_pretrained("me/s0"' in card.text  # the snippet names the pushed repo
    from safetensors.torch import load_file

    io = load_file(str(golden_dir / "apple_mobileclip_s0.io.safetensors"))
    pixels = io["pixel_values_uint8"].float() / 255
    for sub, key in (("", "image_embeds"), ("reparameterized", "image_embeds_reparam")):
        model = AutoModel.from_pretrained(pushed / sub, trust_remote_code=True).eval()
        with torch.no_grad():
            torch.testing.assert_close(model.encode_image(pixels), io[key], atol=1e-5, rtol=1e-5)


# --- model cards ----------------------------------------------------------------------------------------------------


def reference_results() -> dict[str, dict[str, float]]:
    """Row -> (IN top-1, Avg38, Flickr T->I R@1, COCO T->I R@1) parsed from the reference sheet's results table
    (section 10.1, copied verbatim to tests/fixtures/reference), an oracle independent of model_card.py."""
    table = {}
    for line in (REFERENCE / "mobileclip_published_results.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 11 and cells[0].startswith("MobileCLIP") and re.fullmatch(r"[\d.]+", cells[3]):
            table[cells[0]] = dict(imagenet=float(cells[3]), avg38=float(cells[6]),
                                   flickr_t2i=float(cells[7].split("/")[0]), coco_t2i=float(cells[9].split("/")[0]))
    assert len(table) == 14, table
    return table


def test_cards_of_every_official_checkpoint_parse_with_the_published_results():
    published = reference_results()
    metric_of = {"imagenet-1k": "imagenet", "mlfoundations/datacomp": "avg38",
                 "nlphuji/flickr_1k_test_image_text_retrieval": "flickr_t2i", "mscoco": "coco_t2i"}
    for official in OFFICIAL_CHECKPOINTS:
        card = build_model_card(official.variant, repo_id=f"me/{official.repo_id.split('/')[1]}-hf",
                                source=official.source, source_repo=official.repo_id, published_row=official.row)
        parsed = ModelCard(str(card))  # metadata parses back
        data = parsed.data
        assert data.license == "other"
        assert data.license_name == ("apple-amlr" if official.variant.startswith("mobileclip2") else "apple-ascl")
        assert data.base_model == official.repo_id
        name, results = model_index_to_eval_results(data.to_dict()["model-index"])
        assert name == f"{official.repo_id.split('/')[1]}-hf"
        values = {metric_of[r.dataset_type]: r.metric_value for r in results}
        assert values == published[official.row], official
        assert all(official.row in r.source_name for r in results)
        expected_papers = ["2311.17049"] + (["2508.20691"] if official.variant.startswith("mobileclip2") else [])
        assert all(paper in parsed.text for paper in expected_papers)
        assert "## Parity with the source implementation" in parsed.text


def test_training_card_model_index_holds_final_and_periodic_evaluation():
    from training.hub import model_card

    resolved = dict(variant="mobileclip-tiny", mode="reinforced", train_data="me/data", max_steps=24,
                    global_batch_size_resolved=16, kd_weight_resolved=1.0, eval_data="emoji", eval_split="test",
                    teachers_resolved=["hf:t0"], teacher_logit_scales_resolved=[70.0],
                    push_to_hub=True, hub_model_id="me/tiny-emoji")
    metrics = {"train/loss": 0.5, "eval/acc1": 0.25, "eval/acc5": float("nan"), "eval/mean_per_class_recall": 0.2}
    card = ModelCard(str(model_card(resolved, metrics, eval_history=[(12, {"eval/acc1": 0.125})])))
    name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    found = sorted((r.metric_type, r.metric_value, r.metric_config) for r in results)
    assert found == [("acc1", 0.125, "step-12"), ("acc1", 0.25, None), ("mean_per_class_recall", 0.2, None)]
    assert all(r.dataset_name == "emoji (test)" for r in results)
    assert card.data.license is None and card.data.datasets == ["me/data"]
    assert "teacher_logit_scales_resolved:" in card.text and 'from_pretrained("me/tiny-emoji"' in card.text
