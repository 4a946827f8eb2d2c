"""Inference-only paths run the fused form: evaluation's loader, reinforcement teachers (a MobileCLIP folder and
open_clip's MobileCLIP2, a timm FastViT), the demo and the quickstart's curves go through `fuse_for_inference`, whose
outputs equal the train-time form's within float32 rounding (oracle: the unfused model, BatchNorm statistics moved
away from their init so every fused branch matters)."""

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from dataset_scripts.teachers import load_teacher  # noqa: E402
from evaluation.common import load_evaluated_model  # noqa: E402
from model_helpers import max_relative_error, perturb_  # noqa: E402
from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel, MobileCLIPProcessor  # noqa: E402
from modeling_mobileclip.loading import fuse_for_inference  # noqa: E402

# Fused and unfused eval-mode math agree up to float32 rounding (tests/modeling/test_modeling_reparameterize.py).
RELATIVE_TOLERANCE = 1e-5


def unfused_timm_blocks(model: torch.nn.Module) -> list[str]:
    """timm's re-parameterizable blocks (MobileOne, RepMixer, RepCPE, large-kernel convs) still in train-time form."""
    return [name for name, module in model.named_modules()
            if callable(getattr(module, "reparameterize", None)) and hasattr(module, "reparam_conv")
            and module.reparam_conv is None]


@pytest.fixture(scope="module")
def mobileclip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mobileclip-tiny")
    torch.manual_seed(0)
    model = perturb_(MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny"))).eval()
    model.save_pretrained(folder)
    MobileCLIPProcessor.from_variant("mobileclip-tiny").save_pretrained(folder)
    return folder, model


def test_evaluation_and_teachers_load_a_mobileclip_folder_fused_with_the_same_embeddings(mobileclip_folder):
    folder, unfused = mobileclip_folder
    size = unfused.config.vision_config.image_size
    pixels = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = unfused.encode_image(pixels)
        evaluated, _ = load_evaluated_model(str(folder), Accelerator(cpu=True))
        assert evaluated.config.vision_config.reparameterized and not evaluated.training
        assert max_relative_error(evaluated.encode_image(pixels), expected) < RELATIVE_TOLERANCE

        teacher = load_teacher(f"hf:{folder}", torch.device("cpu"), torch.float32)
        assert teacher.model.config.vision_config.reparameterized
        assert max_relative_error(teacher.model.encode_image(pixels), expected) < RELATIVE_TOLERANCE
    assert not unfused.config.vision_config.reparameterized  # the in-memory model the test compares against


def test_open_clip_mobileclip2_fuses_through_timm_with_the_same_embeddings():
    torch.manual_seed(0)
    model = perturb_(open_clip.create_model("MobileCLIP2-S0", pretrained=None)).eval()
    assert unfused_timm_blocks(model)
    pixels = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model.encode_image(pixels)
        fused = fuse_for_inference(copy.deepcopy(model))
        assert unfused_timm_blocks(fused) == []
        assert max_relative_error(fused.encode_image(pixels), expected) < RELATIVE_TOLERANCE
        state = {key: value.clone() for key, value in fused.state_dict().items()}
        fuse_for_inference(fused)  # idempotent
        assert all(torch.equal(value, state[key]) for key, value in fused.state_dict().items())

    teacher = load_teacher("open_clip:MobileCLIP2-S0:none", torch.device("cpu"), torch.float32)
    train_time = load_teacher("open_clip:MobileCLIP2-S0:none", torch.device("cpu"), torch.float32, fuse=False)
    assert unfused_timm_blocks(teacher.model) == [] and not teacher.model.training
    assert unfused_timm_blocks(train_time.model) and not train_time.model.training
    views = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(teacher.encode_images(views), train_time.encode_images(views), atol=1e-5, rtol=0)
