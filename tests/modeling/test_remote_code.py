"""End to end through the Hub interface: convert Apple's S0 checkpoint with the CLI, then load the folder with
`AutoModel` / `AutoProcessor` / `pipeline` and `trust_remote_code=True` in a clean process where our package is not
importable, and compare with Apple's outputs (golden files) on the raw PNGs and caption strings."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from model_helpers import golden_state_dict
from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel
from modeling_mobileclip.convert import main as convert_main
from modeling_mobileclip.model_folder import write_model_folder


# Runs in a fresh interpreter: blocks our top-level packages so that only the folder's copied code can be used.
CLEAN_PROCESS_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys
    BLOCKED = {"modeling_mobileclip", "dataset_scripts", "training", "evaluation"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} must not be importable in this process")
            return None

    sys.meta_path.insert(0, Block())
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor, pipeline

    folder, images, captions, labels, out = sys.argv[1], sys.argv[2].split(","), json.loads(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert not any(name.split(".")[0] in BLOCKED for name in sys.modules)
    pil_images = [Image.open(path).convert("RGB") for path in images]
    batch = processor(text=captions, images=pil_images, return_tensors="pt")
    with torch.no_grad():
        tensors = {
            "pixel_values": batch["pixel_values"],
            "input_ids": batch["input_ids"],
            "image_embeds": model.encode_image(batch["pixel_values"]),
            "text_embeds": model.encode_text(batch["input_ids"]),
        }
    zero_shot = AutoModelForZeroShotImageClassification.from_pretrained(folder, trust_remote_code=True)
    assert type(zero_shot).__name__ == "MobileCLIPModel"
    classifier = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
    results = classifier(pil_images[0], candidate_labels=labels)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out + ".safetensors")
    json.dump({"pipeline": results, "reparameterized": model.config.vision_config.reparameterized}, open(out + ".json", "w"))
    """
)


def run_clean_process(folder, image_paths, captions, labels, out, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules_cache"))
    script = tmp_path / "load_clean.py"
    script.write_text(CLEAN_PROCESS_SCRIPT)
    args = [str(folder), ",".join(map(str, image_paths)), json.dumps(captions), json.dumps(labels), str(out)]
    result = subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return load_file(f"{out}.safetensors"), json.loads(open(f"{out}.json").read())


@pytest.mark.parametrize("reparameterize", [False, True], ids=["train_form", "fused"])
@pytest.mark.slow
def test_converted_folder_loads_in_clean_process_with_apple_outputs(golden_dir, tmp_path, reparameterize):
    checkpoint = tmp_path / "mobileclip_s0.pt"
    torch.save(golden_state_dict(golden_dir, "s0"), checkpoint)
    folder = tmp_path / "mobileclip-s0-hf"
    argv = ["--source", "apple", "--variant", "mobileclip-s0", "--checkpoint", str(checkpoint), "--output", str(folder)]
    convert_main(argv + (["--reparameterize"] if reparameterize else []))
    for name in ("config.json", "model.safetensors", "modeling_mobileclip.py", "configuration_mobileclip.py",
                 "text_mobileclip.py", "outputs_mobileclip.py", "processing_mobileclip.py"):
        assert (folder / name).is_file(), name

    meta = json.loads((golden_dir / "apple_mobileclip_s0.io.json").read_text())
    io = load_file(str(golden_dir / "apple_mobileclip_s0.io.safetensors"))
    image_paths = [golden_dir / image["file"] for image in meta["images"]]
    labels = ["a keyboard on a desk", "a bowl of oranges", "a dog"]
    outputs, info = run_clean_process(folder, image_paths, meta["captions"], labels, tmp_path / "out", tmp_path)

    assert info["reparameterized"] is reparameterize
    # Processor: exact pixels and token ids of Apple's / open_clip's preprocessing.
    torch.testing.assert_close(outputs["pixel_values"], io["pixel_values_uint8"].float() / 255, atol=0, rtol=0)
    assert torch.equal(outputs["input_ids"], io["input_ids"])
    # Model: Apple's embeddings from the raw files, through remote code only.
    expected_image = io["image_embeds_reparam" if reparameterize else "image_embeds"]
    expected_text = io["text_embeds_reparam" if reparameterize else "text_embeds"]
    torch.testing.assert_close(outputs["image_embeds"], expected_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs["text_embeds"], expected_text, atol=1e-5, rtol=1e-5)

    # Pipeline scores: a distribution over the labels equal to the model's own softmax over
    # "This is a photo of {label}." prompts (the pipeline's default template), padded like open_clip.
    scores = {r["label"]: r["score"] for r in info["pipeline"]}
    assert set(scores) == set(labels) and abs(sum(scores.values()) - 1) < 1e-5
    ranked = [r["score"] for r in info["pipeline"]]
    assert ranked == sorted(ranked, reverse=True)
    model = MobileCLIPModel.from_pretrained(folder).eval()
    from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor

    processor = MobileCLIPProcessor.from_variant("mobileclip-s0")
    prompts = [f"This is a photo of {label}." for label in labels]
    batch = processor(text=prompts, images=Image.open(image_paths[0]).convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits_per_image.softmax(dim=-1)[0]
    for label, probability in zip(labels, expected.tolist()):
        assert scores[label] == pytest.approx(probability, abs=1e-5)


@pytest.mark.slow
def test_tiny_model_save_pretrained_round_trip_through_auto_classes(tmp_path):
    """A from-scratch model (as training saves it) reloads identically through AutoModel in a clean process."""
    torch.manual_seed(0)
    config = MobileCLIPConfig.from_variant("mobileclip-tiny")
    model = MobileCLIPModel(config).eval()
    folder = write_model_folder(model, tmp_path / "tiny")
    image = Image.new("RGB", (80, 70), color=(200, 30, 60))
    image_path = tmp_path / "red.png"
    image.save(image_path)
    captions = ["a red square", "a blue circle"]
    outputs, _ = run_clean_process(folder, [image_path], captions, ["red", "blue"], tmp_path / "out", tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(outputs["image_embeds"], model.encode_image(outputs["pixel_values"]))
        torch.testing.assert_close(outputs["text_embeds"], model.encode_text(outputs["input_ids"]))
