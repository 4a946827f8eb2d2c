"""The towers as models of their own, on transformers' CLIP contract: `MobileCLIPVisionModel` / `MobileCLIPTextModel`
load alone through `AutoModel` from a tower-only folder and, with their weights, from a full MobileCLIP checkpoint (as
`CLIPVisionModel` loads from a CLIP one); their output keys mean what transformers' keys mean (checked against timm's
`forward_intermediates`, a layer-by-layer replay and hand formulas); the zero-shot pipeline still works."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForZeroShotImageClassification, pipeline

from conftest import REPO_ROOT, subprocess_env
from model_helpers import perturb_
from modeling_mobileclip import (
    MobileCLIPConfig,
    MobileCLIPModel,
    MobileCLIPTextModel,
    MobileCLIPTextModelWithProjection,
    MobileCLIPVisionConfig,
    MobileCLIPVisionModel,
)
from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor

SOT, EOT = 49406, 49407
LEGACY = REPO_ROOT / "tests" / "fixtures" / "legacy_models"


def make_inputs(config: MobileCLIPConfig, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    size = config.vision_config.image_size
    pixel_values = torch.rand(batch, 3, size, size, generator=generator)
    input_ids = torch.zeros(batch, 77, dtype=torch.long)
    for row in range(batch):
        length = 4 + 5 * row
        input_ids[row, 0] = SOT
        input_ids[row, 1:length] = torch.randint(1, 49000, (length - 1,), generator=generator)
        input_ids[row, length] = EOT
    return pixel_values, input_ids


@pytest.fixture(scope="module")
def tiny_config() -> MobileCLIPConfig:
    return MobileCLIPConfig.from_variant("mobileclip-tiny")


@pytest.fixture(scope="module")
def full_folder(tmp_path_factory) -> Path:
    """A full MobileCLIP folder (weights, remote code, processor) of a tiny model with perturbed statistics."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("full_tiny")
    perturb_(MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny"))).save_pretrained(folder)
    MobileCLIPProcessor.from_variant("mobileclip-tiny").save_pretrained(folder)
    return folder


@pytest.mark.slow  # a fresh interpreter loads the remote code
@pytest.mark.parametrize("tower", ["vision", "text"])
def test_automodel_loads_a_tower_only_folder_as_that_tower(tower, tiny_config, tmp_path):
    tower_class, config = {
        "vision": (MobileCLIPVisionModel, tiny_config.vision_config),
        "text": (MobileCLIPTextModel, tiny_config.text_config),
    }[tower]
    torch.manual_seed(0)
    model = perturb_(tower_class(config)).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == config.model_type
    assert saved["auto_map"] == {
        "AutoConfig": f"configuration_mobileclip.{type(config).__name__}",
        "AutoModel": f"modeling_mobileclip.{tower_class.__name__}",
    }

    # With the package imported, its registration with the Auto classes decides (transformers prefers explicitly
    # registered classes even over trust_remote_code=True); where it is not importable, the folder's copied code.
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is tower_class
    pixel_values, input_ids = make_inputs(tiny_config)
    inputs = pixel_values if tower == "vision" else input_ids
    key = "image_embeds" if tower == "vision" else "pooler_output"
    expected = model(inputs)[key].detach()
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs)[key], expected, rtol=1e-6, atol=1e-7)

    torch.save({"inputs": inputs}, tmp_path / "inputs.pt")
    result = subprocess.run([sys.executable, "-c", REMOTE_TOWER_SCRIPT, str(tmp_path), key],
                            env={**subprocess_env(), "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")},
                            cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    module, name = result.stdout.split()[-2:]
    assert module.startswith("transformers_modules.") and name == tower_class.__name__  # the folder's copied code
    torch.testing.assert_close(torch.load(tmp_path / "remote_output.pt"), expected, rtol=1e-6, atol=1e-7)


# A fresh interpreter in which our packages cannot be imported: only the folder's remote code can load the tower.
REMOTE_TOWER_SCRIPT = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"modeling_mobileclip", "dataset_scripts", "training", "evaluation"}:
            raise ImportError(name + " must not be importable here")
sys.meta_path.insert(0, Block())
import torch
from transformers import AutoModel
folder, key = sys.argv[1], sys.argv[2]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    torch.save(model(torch.load(folder + "/inputs.pt")["inputs"])[key], folder + "/remote_output.pt")
print(type(model).__module__, type(model).__name__)
"""


def test_towers_load_from_a_full_checkpoint_with_its_weights(full_folder, tiny_config):
    full = MobileCLIPModel.from_pretrained(full_folder).eval()
    vision = MobileCLIPVisionModel.from_pretrained(full_folder).eval()
    text = MobileCLIPTextModel.from_pretrained(full_folder).eval()
    text_projected = MobileCLIPTextModelWithProjection.from_pretrained(full_folder).eval()

    # The weights that land in each tower are the checkpoint's, read straight from the file.
    saved = load_file(str(full_folder / "model.safetensors"))
    for tower, prefix in ((vision, "vision_model."), (text, "text_model.")):
        weights = tower.state_dict()
        expected = {k.removeprefix(prefix): v for k, v in saved.items() if k.startswith(prefix)}
        assert weights.keys() == expected.keys()
        assert all(torch.equal(weights[k], expected[k]) for k in expected)
    assert torch.equal(text_projected.text_projection.weight, saved["text_projection.weight"])
    assert vision.config.to_diff_dict() == full.config.vision_config.to_diff_dict()

    pixel_values, input_ids = make_inputs(tiny_config)
    with torch.no_grad():
        image_features = full.get_image_features(pixel_values)
        text_features = full.get_text_features(input_ids)
        assert torch.equal(vision(pixel_values).image_embeds, image_features.pooler_output)
        assert torch.equal(text_projected(input_ids).text_embeds, text_features.pooler_output)
        assert torch.equal(text(input_ids).last_hidden_state, text_features.last_hidden_state)
        assert torch.equal(text(input_ids).pooler_output, text_projected(input_ids).pooler_output)


@pytest.mark.parametrize("name", ["tiny", "tiny_reparameterized"])
def test_towers_load_from_folders_saved_by_older_code(name):
    """The towers reproduce the embeddings the pre-tower code stored with its saved folders (train-time and fused)."""
    folder = LEGACY / name
    expected = load_file(str(folder / "expected_outputs.safetensors"))
    vision = MobileCLIPVisionModel.from_pretrained(folder).eval()
    text = MobileCLIPTextModelWithProjection.from_pretrained(folder).eval()
    assert vision.config.reparameterized == text.config.reparameterized == (name == "tiny_reparameterized")
    with torch.no_grad():
        image = F.normalize(vision(expected["pixel_values"]).image_embeds, dim=-1)
        caption = F.normalize(text(expected["input_ids"]).text_embeds, dim=-1)
    torch.testing.assert_close(image, expected["image_embeds"], rtol=0, atol=1e-6)
    torch.testing.assert_close(caption, expected["text_embeds"], rtol=0, atol=1e-6)


def test_fastvit_tower_outputs(tiny_config):
    torch.manual_seed(0)
    vision = perturb_(MobileCLIPVisionModel(tiny_config.vision_config)).eval()
    backbone = vision.backbone
    pixel_values, _ = make_inputs(tiny_config)
    with torch.no_grad():
        plain = vision(pixel_values, output_attentions=True)
        recorded = vision(pixel_values, output_hidden_states=True)
        stem = backbone.stem(pixel_values)
        stages = backbone.forward_intermediates(pixel_values, intermediates_only=True)
    assert plain.hidden_states is None and plain.attentions is None  # timm's attention returns no weights
    # pooler_output: the global average of the final feature map; image_embeds: it through the projection (head.fc).
    torch.testing.assert_close(plain.pooler_output, plain.last_hidden_state.mean(dim=(2, 3)))
    fc = backbone.head.fc
    torch.testing.assert_close(plain.image_embeds, plain.pooler_output @ fc.weight.t() + fc.bias)
    # hidden_states: the stem's output, then every stage's output, as timm's forward_intermediates gives them.
    assert len(recorded.hidden_states) == len(backbone.stages) + 1 == 5
    torch.testing.assert_close(recorded.hidden_states[0], stem, rtol=0, atol=0)
    for ours, timm_stage in zip(recorded.hidden_states[1:], stages, strict=True):
        torch.testing.assert_close(ours, timm_stage, rtol=0, atol=0)


def test_vit_tower_outputs():
    config = MobileCLIPVisionConfig(
        backbone="vit_large_patch14_clip_224", image_size=28, projection_dim=32,
        backbone_kwargs=dict(depth=2, embed_dim=32, num_heads=2),
    )
    torch.manual_seed(0)
    vision = MobileCLIPVisionModel(config).eval()
    pixel_values = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = vision(pixel_values, output_hidden_states=True)
        blocks = vision.backbone.forward_intermediates(
            pixel_values, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True
        )
    assert out.last_hidden_state.shape == (2, 1 + 2 * 2, 32)  # the class token and a 2 x 2 grid of 14-pixel patches
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 0])  # CLIP pooling: the class token
    assert len(out.hidden_states) == 2 + 1
    for ours, (patches, prefix) in zip(out.hidden_states[1:], blocks, strict=True):
        torch.testing.assert_close(ours, torch.cat([prefix, patches], dim=1), rtol=0, atol=0)


@pytest.mark.parametrize("causal", [False, True], ids=["mct_bidirectional", "causal"])
def test_text_tower_outputs(tiny_config, causal):
    overrides = dict(causal=True, num_repmixer_blocks=0) if causal else {}
    text_config = MobileCLIPConfig.from_variant("mobileclip-tiny", text_config=overrides).text_config
    torch.manual_seed(0)
    text = perturb_(MobileCLIPTextModel._from_config(text_config, attn_implementation="eager")).eval()
    _, input_ids = make_inputs(tiny_config)
    with torch.no_grad():
        plain = text(input_ids)
        out = text(input_ids, output_hidden_states=True, output_attentions=True)
        # Replay the tower layer by layer: hidden_states[i] is the input of layer i, then the last layer's output.
        replay = [text.token_embedding(input_ids) + text.position_embedding]
        for layer in text.layers:
            replay.append(layer(replay[-1]))
    assert plain.hidden_states is None and plain.attentions is None
    assert len(out.hidden_states) == len(text.layers) + 1 == text_config.num_layers + 1
    for ours, expected in zip(out.hidden_states, replay, strict=True):
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    torch.testing.assert_close(out.last_hidden_state, text.final_layer_norm(out.hidden_states[-1]))
    first_eot = (input_ids == EOT).int().argmax(dim=-1)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[torch.arange(2), first_eot])
    # One attention map per attention layer (MCt's RepMixer blocks have none), each row a distribution.
    heads = text_config.num_attention_heads
    assert len(out.attentions) == text_config.num_hidden_layers
    for weights in out.attentions:
        assert weights.shape == (2, heads, 77, 77)
        torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, heads, 77))
        assert bool((weights.triu(1) == 0).all()) == causal


def test_full_model_forwards_output_flags_to_both_towers(full_folder, tiny_config):
    model = MobileCLIPModel.from_pretrained(full_folder).eval()
    pixel_values, input_ids = make_inputs(tiny_config)
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values, output_hidden_states=True)
        plain = model(input_ids=input_ids, pixel_values=pixel_values)
    assert len(out.vision_model_output.hidden_states) == len(model.vision_model.backbone.stages) + 1
    assert len(out.text_model_output.hidden_states) == len(model.text_model.layers) + 1
    assert plain.vision_model_output.hidden_states is None and plain.text_model_output.hidden_states is None
    torch.testing.assert_close(out.logits_per_image, plain.logits_per_image, rtol=0, atol=0)


def test_zero_shot_pipeline_and_auto_class_load_the_dual_encoder(full_folder):
    config = json.loads((full_folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForZeroShotImageClassification"] == "modeling_mobileclip.MobileCLIPModel"
    zero_shot = AutoModelForZeroShotImageClassification.from_pretrained(full_folder, trust_remote_code=True)
    assert type(zero_shot).__name__ == "MobileCLIPModel"

    image = Image.new("RGB", (90, 70), color=(200, 30, 60))
    labels = ["a red square", "a blue circle", "a dog"]
    classifier = pipeline("zero-shot-image-classification", model=str(full_folder), trust_remote_code=True)
    scores = {result["label"]: result["score"] for result in classifier(image, candidate_labels=labels)}
    # The pipeline's scores: the model's softmax over its default prompts "This is a photo of {label}.".
    model = MobileCLIPModel.from_pretrained(full_folder).eval()
    processor = MobileCLIPProcessor.from_variant("mobileclip-tiny")
    batch = processor(text=[f"This is a photo of {label}." for label in labels], images=image, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits_per_image.softmax(dim=-1)[0]
    for label, probability in zip(labels, expected.tolist()):
        assert scores[label] == pytest.approx(probability, abs=1e-5)
