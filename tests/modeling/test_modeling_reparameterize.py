"""Fusion owned by the blocks: `reparameterize()` on every published variant (random weights, BatchNorm statistics and
layer scales moved away from their init so every fused branch matters) keeps the embeddings of the unfused model, fuses
every BatchNorm away, builds the layout a `reparameterized: true` config builds (timm's `inference_mode` layout plus
our folds, so a saved fused model reloads fused), and fusing twice is fusing once, bit for bit.

The full-size variants are `slow` (about two minutes together on one CPU thread); the dev variants keep the check in
the fast loop.
"""

import hashlib

import pytest
import torch
from torch import nn

from model_helpers import perturb_
from modeling_mobileclip import DEV_VARIANTS, VARIANTS, MobileCLIPConfig, MobileCLIPModel
from modeling_mobileclip.text_mobileclip import MobileCLIPTextRepMixerBlock

SOT, EOT = 49406, 49407
# Fused and unfused eval-mode math agree up to float32 rounding: measured <= 5e-7 of the embeddings' largest entry.
RELATIVE_TOLERANCE = 1e-5


def _inputs(config: MobileCLIPConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One image and two captions of different lengths (the CI-affordable batch)."""
    generator = torch.Generator().manual_seed(0)
    size = config.vision_config.image_size
    pixel_values = torch.rand(1, 3, size, size, generator=generator)
    input_ids = torch.zeros(2, 77, dtype=torch.long)
    for row, length in enumerate((6, 12)):
        input_ids[row, 0] = SOT
        input_ids[row, 1:length] = torch.randint(1, 49000, (length - 1,), generator=generator)
        input_ids[row, length] = EOT
    return pixel_values, input_ids


def _fingerprint(model: nn.Module) -> dict[str, tuple]:
    """Every state-dict entry's shape, dtype and a hash of its bytes: a bit-exact comparison without a second copy of
    a 400M-parameter model in memory."""
    return {
        name: (tuple(tensor.shape), tensor.dtype, hashlib.sha1(tensor.reshape(-1).contiguous().view(torch.uint8).numpy()).hexdigest())
        for name, tensor in model.state_dict().items()
    }


def _max_relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


VARIANT_CASES = [pytest.param(name, marks=pytest.mark.slow) for name in VARIANTS] + list(DEV_VARIANTS)


@pytest.mark.parametrize("variant", VARIANT_CASES)
def test_reparameterize_keeps_embeddings_fuses_everything_and_is_idempotent(variant):
    torch.manual_seed(0)
    config = MobileCLIPConfig.from_variant(variant)
    model = perturb_(MobileCLIPModel(config)).eval()
    pixel_values, input_ids = _inputs(config)
    has_fusable_blocks = config.vision_config.is_fastvit or config.text_config.num_repmixer_blocks > 0
    parameters_before = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        image, text = model.encode_image(pixel_values), model.encode_text(input_ids)
        assert model.reparameterize() is model

        fused_image, fused_text = model.encode_image(pixel_values), model.encode_text(input_ids)
        assert _max_relative_difference(fused_image, image) <= RELATIVE_TOLERANCE
        assert _max_relative_difference(fused_text, text) <= RELATIVE_TOLERANCE
        # Every BatchNorm of a fusable block is folded away (FastViT's timm blocks, our FastViT folds, MCt's RepMixer
        # blocks); only ViT-B's convolutional stem keeps its Conv-BN-GELU layers, as timm's and Apple's code do ...
        remaining = [name for name, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
        assert all(name.startswith("vision_model.backbone.patch_embed.backbone.") for name in remaining), remaining
        assert bool(remaining) == (config.vision_config.backbone == "vit_base_mci_224")
        if has_fusable_blocks:
            assert sum(p.numel() for p in model.parameters()) < parameters_before
        # ... into the layout that a config recording `reparameterized: true` builds (timm's `inference_mode`).
        assert model.config.vision_config.reparameterized and model.config.text_config.reparameterized
        with torch.device("meta"):
            built_fused = MobileCLIPModel(model.config)
        assert {k: v.shape for k, v in built_fused.state_dict().items()} == {
            k: v.shape for k, v in model.state_dict().items()
        }

        once = _fingerprint(model)
        model.reparameterize()
        assert _fingerprint(model) == once
        assert torch.equal(model.encode_image(pixel_values), fused_image)
        assert torch.equal(model.encode_text(input_ids), fused_text)


def test_towers_and_blocks_fuse_themselves_as_the_model_does():
    """The model-level call is only a walk: fusing each tower on its own, or each MCt block on its own first, gives
    the same fused weights as `MobileCLIPModel.reparameterize()`."""
    def build():
        torch.manual_seed(0)
        return perturb_(MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny"))).eval()

    whole = build().reparameterize()
    by_tower = build()
    by_tower.vision_model.reparameterize()
    by_tower.text_model.reparameterize()
    by_block = build()
    blocks = [layer for layer in by_block.text_model.layers if isinstance(layer, MobileCLIPTextRepMixerBlock)]
    assert len(blocks) == 2
    for block in blocks:
        block.reparameterize()
        block.reparameterize()
    by_block.reparameterize()
    assert _fingerprint(by_tower) == _fingerprint(whole) == _fingerprint(by_block)
    assert by_tower.config.vision_config.reparameterized and by_tower.config.text_config.reparameterized
