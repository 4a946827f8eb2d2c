"""Our classes load our folders through transformers' Auto classes, with no trust flag and no prompt.

Importing `modeling_mobileclip` registers the configs, models, towers, tokenizer, image processor and processor with
the Auto classes, so a folder saved by `MobileCLIPModel.save_pretrained` + `MobileCLIPProcessor.save_pretrained`
loads with the installed package's classes instead of asking to run the folder's remote code. Every load runs in a
fresh interpreter with standard input closed, as a script or CI job has it: transformers' "Do you wish to run the
custom code? [y/N]" would raise there. Oracles: open_clip's tokenizer for the ids, and the model that saved the folder
for the embeddings."""

import json
import subprocess
import sys
import textwrap

import open_clip
import pytest
import torch

from conftest import subprocess_env
from modeling_mobileclip import MobileCLIPModel, MobileCLIPProcessor

PROMPT = "Do you wish to run the custom code"

LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import modeling_mobileclip  # the installed package: its import registers the Auto classes
    import torch
    from PIL import Image
    from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForZeroShotImageClassification,
                              AutoProcessor, AutoTokenizer, pipeline)

    folder, tower_folder = sys.argv[1], sys.argv[2]
    loaded = {
        "AutoConfig": AutoConfig.from_pretrained(folder),
        "AutoModel": AutoModel.from_pretrained(folder).eval(),
        "AutoModelForZeroShotImageClassification": AutoModelForZeroShotImageClassification.from_pretrained(folder),
        "AutoProcessor": AutoProcessor.from_pretrained(folder),
        "MobileCLIPProcessor.from_pretrained": modeling_mobileclip.MobileCLIPProcessor.from_pretrained(folder),
        "AutoTokenizer": AutoTokenizer.from_pretrained(folder),
        "AutoImageProcessor": AutoImageProcessor.from_pretrained(folder),
        "AutoModel(vision tower folder)": AutoModel.from_pretrained(tower_folder),
    }
    classes = {name: f"{type(obj).__module__}.{type(obj).__name__}" for name, obj in loaded.items()}
    processor, model = loaded["AutoProcessor"], loaded["AutoModel"]
    classes["AutoProcessor.tokenizer"] = type(processor.tokenizer).__module__ + "." + type(processor.tokenizer).__name__
    image = Image.new("RGB", (96, 80), (200, 30, 30))
    batch = processor(text=["a red square", "a blue circle"], images=[image], return_tensors="pt")
    with torch.no_grad():
        image_embeds = model.encode_image(batch["pixel_values"]).tolist()
        text_embeds = model.encode_text(batch["input_ids"]).tolist()
    scores = pipeline("zero-shot-image-classification", model=folder)(image, candidate_labels=["red", "blue"])
    json.dump({"classes": classes, "input_ids": batch["input_ids"].tolist(), "image_embeds": image_embeds,
               "text_embeds": text_embeds, "pipeline_labels": sorted(s["label"] for s in scores)}, sys.stdout)
    """
)


def run_closed_stdin(args: list[str], tmp_path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=tmp_path, env=subprocess_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


def test_saved_folder_loads_with_package_classes_without_trust_flag_or_prompt(tiny_model_dir, tmp_path):
    model = MobileCLIPModel.from_pretrained(tiny_model_dir).eval()
    tower_folder = tmp_path / "vision_tower"
    model.vision_model.save_pretrained(tower_folder)
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)

    result = run_closed_stdin([sys.executable, str(script), str(tiny_model_dir), str(tower_folder)], tmp_path)

    assert PROMPT not in result.stdout + result.stderr
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    expected_classes = {
        "AutoConfig": "configuration_mobileclip.MobileCLIPConfig",
        "AutoModel": "modeling_mobileclip.MobileCLIPModel",
        "AutoModelForZeroShotImageClassification": "modeling_mobileclip.MobileCLIPModel",
        "AutoProcessor": "processing_mobileclip.MobileCLIPProcessor",
        "MobileCLIPProcessor.from_pretrained": "processing_mobileclip.MobileCLIPProcessor",
        "AutoTokenizer": "processing_mobileclip.MobileCLIPTokenizer",
        "AutoImageProcessor": "processing_mobileclip.MobileCLIPImageProcessor",
        "AutoModel(vision tower folder)": "modeling_mobileclip.MobileCLIPVisionModel",
        "AutoProcessor.tokenizer": "processing_mobileclip.MobileCLIPTokenizer",
    }
    # The installed package's modules, not a `transformers_modules` copy of the folder's remote code.
    assert report["classes"] == {name: f"modeling_mobileclip.{path}" for name, path in expected_classes.items()}
    assert report["pipeline_labels"] == ["blue", "red"]

    # Oracles: open_clip's tokenizer, and the model that saved the folder.
    assert torch.equal(torch.tensor(report["input_ids"]),
                       open_clip.get_tokenizer("ViT-B-16")(["a red square", "a blue circle"]))
    processor = MobileCLIPProcessor.from_variant("mobileclip-tiny")
    from PIL import Image

    batch = processor(text=["a red square", "a blue circle"], images=[Image.new("RGB", (96, 80), (200, 30, 30))],
                      return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(report["image_embeds"]), model.encode_image(batch["pixel_values"]))
        torch.testing.assert_close(torch.tensor(report["text_embeds"]), model.encode_text(batch["input_ids"]))


@pytest.mark.slow
def test_export_cli_loads_a_saved_folder_with_stdin_closed(tiny_model_dir, tmp_path):
    output = tmp_path / "onnx"
    result = run_closed_stdin([sys.executable, "-m", "modeling_mobileclip.export", "--model", str(tiny_model_dir),
                               "--format", "onnx", "--output", str(output), "--fidelity-samples", "0"], tmp_path)

    assert PROMPT not in result.stdout + result.stderr
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(path.name for path in output.glob("*.onnx")) == ["image_encoder.onnx", "text_encoder.onnx"]
