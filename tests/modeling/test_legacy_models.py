"""Models saved by older code load with today's classes and compute what they computed then.

`tests/fixtures/legacy_models/` was written by `tests/fixtures/write_legacy_models.py` at the commit named in
`written_by.json` (before the model package's restructuring): a small MobileCLIP (FastViT MCi image tower, MCt
RepMixer + Transformer text tower) in train-time form and reparameterized, with inputs and the outputs that code gave.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modeling_mobileclip import MobileCLIPModel

from conftest import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "legacy_models"


@pytest.mark.parametrize("name", ["tiny", "tiny_reparameterized"])
def test_a_model_saved_by_older_code_gives_the_same_outputs(name):
    folder = FIXTURES / name
    expected = load_file(str(folder / "expected_outputs.safetensors"))
    model = MobileCLIPModel.from_pretrained(folder).eval()
    assert model.config.vision_config.reparameterized == (name == "tiny_reparameterized")
    with torch.no_grad():
        out = model(pixel_values=expected["pixel_values"], input_ids=expected["input_ids"], return_dict=True)
    for key in ("image_embeds", "text_embeds", "logits_per_image"):
        torch.testing.assert_close(getattr(out, key), expected[key], rtol=0, atol=1e-6, msg=key)


def test_the_reparameterized_fixture_is_the_fused_form_of_the_train_time_one():
    plain, fused = (load_file(str(FIXTURES / name / "expected_outputs.safetensors"))
                    for name in ("tiny", "tiny_reparameterized"))
    torch.testing.assert_close(fused["image_embeds"], plain["image_embeds"], rtol=0, atol=1e-5)
    torch.testing.assert_close(fused["text_embeds"], plain["text_embeds"], rtol=0, atol=1e-5)
