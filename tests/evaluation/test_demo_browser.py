"""The demo in a real browser (Debian's headless Chromium driven by Playwright) and the Space folder it writes.

The app runs in a subprocess on a free local port, as a user starts it. The page must show the model's own
zero-shot answer, the images the model ranks first for a text query, and a message for a file that is not an image,
after which the next query still works. The screenshot goes to tmp_path (`MOBILECLIP_UPDATE_SCREENSHOT=1` also
copies it to the README's `evaluation/demo/screenshot.png`).
"""

import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml

from conftest import REPO_ROOT, free_port, subprocess_env
from modeling_mobileclip import MobileCLIPModel, MobileCLIPProcessor

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
README_SCREENSHOT = REPO_ROOT / "evaluation" / "demo" / "screenshot.png"


@contextmanager
def served(command: list[str], env: dict, cwd: Path, timeout: float = 240):
    """Starts a demo process and yields its URL once Gradio says it is listening; stops it afterwards."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    lines, deadline = [], time.monotonic() + timeout
    try:
        for line in process.stdout:
            lines.append(line)
            found = re.search(r"Running on local URL:\s+(http://\S+)", line)
            if found:
                yield found.group(1).rstrip("/")
                return
            if time.monotonic() > deadline:
                break
        pytest.fail("the demo did not start:\n" + "".join(lines[-40:]))
    finally:
        process.terminate()
        process.wait(timeout=30)


def oracle(model_dir):
    model = MobileCLIPModel.from_pretrained(model_dir).eval()
    return model, MobileCLIPProcessor.from_pretrained(model_dir)


def test_demo_in_headless_chromium(tiny_model_dir, emoji_subset, tmp_path):
    if CHROMIUM is None:
        pytest.fail("Chromium not found: the browser test needs Debian's `chromium` (apt-get install -y chromium; "
                    ".ci/run installs it).")
    from playwright.sync_api import expect, sync_playwright

    rows = datasets.load_dataset("parquet", data_files=str(emoji_subset), split="train")
    query_image, labels = tmp_path / "query.png", [rows[i]["name"] for i in (0, 4, 8, 12)]
    rows[4]["image"].save(query_image)
    (tmp_path / "notes.png").write_text("this is not an image")
    model, processor = oracle(tiny_model_dir)
    with torch.no_grad():
        batch = processor(text=[f"an emoji of {label}" for label in labels], images=[rows[4]["image"]],
                          return_tensors="pt")
        expected_label = labels[int(model(**batch).logits_per_image.argmax())]
        image_embeds = torch.nn.functional.normalize(model.encode_image(
            processor(images=list(rows["image"]), return_tensors="pt")["pixel_values"]), dim=-1)
        text_embed = torch.nn.functional.normalize(model.encode_text(
            processor(text=["a face"], return_tensors="pt")["input_ids"]), dim=-1)[0]
    scores = (image_embeds @ text_embed).numpy()

    port = free_port()
    command = [sys.executable, "-m", "evaluation.demo", "--model", str(tiny_model_dir), "--images", str(emoji_subset),
               "--template", "an emoji of {}", "--port", str(port), "--cache-dir", str(tmp_path / "cache"),
               "--no-progress"]
    with served(command, subprocess_env(), REPO_ROOT) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url, wait_until="networkidle")
        page.locator("#zs-image input[type=file]").set_input_files(str(query_image))
        page.locator("#zs-labels textarea").fill("\n".join(labels))
        page.locator("#zs-run").click()
        top = page.locator('#zs-result-0 [data-testid="label-output-value"]')
        expect(top).to_have_text(expected_label, timeout=60_000)
        page.screenshot(path=str(tmp_path / "screenshot.png"), full_page=True)

        page.locator("#zs-image input[type=file]").set_input_files(str(tmp_path / "notes.png"))
        page.locator("#zs-run").click()
        expect(page.locator("#zs-message")).to_contain_text("notes.png is not an image", timeout=60_000)
        page.locator("#zs-image input[type=file]").set_input_files(str(query_image))
        page.locator("#zs-run").click()
        expect(page.locator("#zs-message")).to_have_text("", timeout=60_000)
        expect(top).to_have_text(expected_label, timeout=60_000)

        page.get_by_role("tab", name="Search").click()
        page.locator("#search-text textarea").fill("a face")
        page.locator("#search-k input[type=number]").fill("4")
        page.locator("#search-run").click()
        captions = page.locator("#search-result-0 .caption-label")
        expect(captions).to_have_count(4, timeout=60_000)
        shown = [re.fullmatch(r"(.*) \((-?\d\.\d{3})\)", text).groups() for text in captions.all_inner_texts()]
        browser.close()
    best = np.sort(scores)[::-1][:4]
    assert [float(score) for _, score in shown] == pytest.approx(best, abs=1.5e-3)
    assert all(name in list(rows["name"]) for name, _ in shown)
    if os.environ.get("MOBILECLIP_UPDATE_SCREENSHOT") == "1":
        shutil.copy(tmp_path / "screenshot.png", README_SCREENSHOT)


def test_space_folder_serves_a_local_model(tiny_model_dir, tmp_path):
    from gradio_client import Client, handle_file
    from PIL import Image

    from evaluation.demo.cli import main

    space = main(["--model", "apple/MobileCLIP-S0", "--write-space", str(tmp_path / "space")])
    front_matter = yaml.safe_load((space / "README.md").read_text().split("---")[1])
    assert front_matter["sdk"] == "gradio" and front_matter["app_file"] == "app.py"
    assert front_matter["models"] == ["apple/MobileCLIP-S0"]
    requirements = (space / "requirements.txt").read_text().splitlines()
    assert any(r.startswith("gradio>=") for r in requirements) and any(r.startswith("transformers") for r in requirements)
    assert (space / "evaluation" / "demo" / "app.py").is_file() and (space / "modeling_mobileclip").is_dir()

    Image.new("RGB", (80, 60), (250, 200, 0)).save(tmp_path / "yellow.png")
    model, processor = oracle(tiny_model_dir)
    labels = ["a yellow square", "a blue circle"]
    with torch.no_grad():
        batch = processor(text=labels, images=[Image.open(tmp_path / "yellow.png")], return_tensors="pt")
        expected = model(**batch).logits_per_image.softmax(-1)[0].tolist()
    port = free_port()
    # The Space's own copy of the code serves (its folder comes first on sys.path), with a local model folder in
    # place of the Hub id.
    env = subprocess_env(MOBILECLIP_DEMO_MODELS=str(tiny_model_dir), GRADIO_SERVER_NAME="127.0.0.1",
                         GRADIO_SERVER_PORT=str(port), PYTHONPATH="")
    with served([sys.executable, "app.py"], env, space) as url:
        client = Client(url, verbose=False)
        message, result = client.predict(handle_file(str(tmp_path / "yellow.png")), "\n".join(labels), "{}",
                                         api_name="/on_classify")
    assert message == ""
    confidences = {row["label"]: row["confidence"] for row in result["confidences"]}
    assert [confidences[label] for label in labels] == pytest.approx(expected, abs=1e-5)
