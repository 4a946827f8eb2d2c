"""Behaviour of MobileCLIPModel on the tiny dev config: outputs, loss, reparameterization, save/load, dtypes,
gradient checkpointing, initialisation and config validation."""

import math

import pytest
import torch
import torch.nn.functional as F

from model_helpers import perturb_
from modeling_mobileclip import DEV_VARIANTS, VARIANTS, MobileCLIPConfig, MobileCLIPModel
from modeling_mobileclip.modeling_mobileclip import (
    MobileCLIPTextConvFFN,
    MobileCLIPTextRepMixer,
    contrastive_loss,
)


SOT, EOT = 49406, 49407


def make_inputs(config: MobileCLIPConfig, batch: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    pixel_values = torch.rand(batch, 3, size, size, generator=generator)
    input_ids = torch.zeros(batch, 77, dtype=torch.long)
    for row in range(batch):
        length = 3 + row * 4
        input_ids[row, 0] = SOT
        input_ids[row, 1:length] = torch.randint(1, 49000, (length - 1,), generator=generator)
        input_ids[row, length] = EOT
    return pixel_values, input_ids


@pytest.fixture
def tiny_config():
    return MobileCLIPConfig.from_variant("mobileclip-tiny")


@pytest.fixture
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return perturb_(MobileCLIPModel(tiny_config)).eval()


def test_forward_outputs_and_loss(tiny_model, tiny_config):
    pixel_values, input_ids = make_inputs(tiny_config)
    output = tiny_model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True)
    assert output.logits_per_image.shape == (3, 3)
    torch.testing.assert_close(output.logits_per_text, output.logits_per_image.t())
    torch.testing.assert_close(output.image_embeds.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(output.text_embeds.norm(dim=-1), torch.ones(3))

    image = tiny_model.encode_image(pixel_values, normalize=True)
    text = tiny_model.encode_text(input_ids, normalize=True)
    torch.testing.assert_close(output.image_embeds, image)
    expected_logits = math.exp(tiny_config.logit_scale_init_value) * text @ image.t()
    torch.testing.assert_close(output.logits_per_text, expected_logits)
    assert output.loss.item() == pytest.approx(_hand_infonce(expected_logits), rel=1e-5)
    # transformers 5 convention: get_*_features return model outputs whose pooler_output is the projection.
    torch.testing.assert_close(tiny_model.get_text_features(input_ids).pooler_output, tiny_model.encode_text(input_ids))
    as_tuple = tiny_model(input_ids=input_ids, pixel_values=pixel_values, return_dict=False)
    torch.testing.assert_close(as_tuple[0], output.logits_per_image)


def test_logit_scale_is_clamped_at_100(tiny_model, tiny_config):
    pixel_values, input_ids = make_inputs(tiny_config)
    with torch.no_grad():
        tiny_model.logit_scale.fill_(10.0)
    output = tiny_model(input_ids=input_ids, pixel_values=pixel_values)
    torch.testing.assert_close(output.logits_per_text, 100.0 * output.text_embeds @ output.image_embeds.t())


def test_text_pooling_uses_first_eot_and_pads_matter_only_without_causal_mask(tiny_config):
    torch.manual_seed(0)
    model = perturb_(MobileCLIPModel(tiny_config)).eval()
    _, input_ids = make_inputs(tiny_config, batch=1)
    other_pad = input_ids.clone()
    other_pad[input_ids == 0] = 7
    with torch.no_grad():
        # Bidirectional tower, no padding mask: pad tokens change the EOT feature (as in Apple's / open_clip's code).
        assert not torch.allclose(model.encode_text(input_ids), model.encode_text(other_pad))
        causal = MobileCLIPConfig.from_variant("mobileclip-tiny", text_config=dict(causal=True, num_repmixer_blocks=0))
        causal_model = MobileCLIPModel(causal).eval()
        torch.testing.assert_close(causal_model.encode_text(input_ids), causal_model.encode_text(other_pad))
        # encode_text skips the positions after the last EOT in causal towers: same result as the full pass.
        full = causal_model.get_text_features(input_ids).pooler_output
        torch.testing.assert_close(causal_model.encode_text(input_ids), full, atol=1e-6, rtol=1e-5)


def test_eager_and_sdpa_attention_agree(tiny_config):
    for causal in (False, True):
        config = MobileCLIPConfig.from_variant("mobileclip-tiny", text_config=dict(causal=causal))
        torch.manual_seed(0)
        model = perturb_(MobileCLIPModel(config)).eval()
        _, input_ids = make_inputs(config)
        with torch.no_grad():
            sdpa = model.encode_text(input_ids)
            model.set_attn_implementation("eager")
            eager = model.encode_text(input_ids)
        torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)


def test_text_repmixer_blocks_fuse_exactly():
    torch.manual_seed(0)
    mixer = perturb_(MobileCLIPTextRepMixer(dim=16, kernel_size=11)).eval()
    ffn = perturb_(MobileCLIPTextConvFFN(16, 32, 11)).eval()
    hidden = torch.randn(2, 16, 77)
    with torch.no_grad():
        before = (mixer(hidden), ffn(hidden))
        mixer.reparameterize()
        ffn.reparameterize()
        mixer.reparameterize()  # idempotent
        after = (mixer(hidden), ffn(hidden))
    assert mixer.reparam_conv is not None and not hasattr(mixer, "mixer_conv")
    assert ffn.dw_bn is None
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_reparameterize_keeps_outputs_and_round_trips(tiny_model, tiny_config, tmp_path):
    pixel_values, input_ids = make_inputs(tiny_config)
    with torch.no_grad():
        image, text = tiny_model.encode_image(pixel_values), tiny_model.encode_text(input_ids)
        n_before = sum(p.numel() for p in tiny_model.parameters())
        tiny_model.reparameterize()
        assert tiny_model.config.reparameterized
        assert sum(p.numel() for p in tiny_model.parameters()) < n_before
        torch.testing.assert_close(tiny_model.encode_image(pixel_values), image, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(tiny_model.encode_text(input_ids), text, atol=1e-5, rtol=1e-4)

    # A model built from the fused config has exactly the fused layout, so saved fused folders reload fused.
    with torch.device("meta"):
        fresh = MobileCLIPModel(tiny_model.config)
    assert fresh.state_dict().keys() == tiny_model.state_dict().keys()
    tiny_model.save_pretrained(tmp_path)
    reloaded = MobileCLIPModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.reparameterized
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_image(pixel_values), tiny_model.encode_image(pixel_values))
        torch.testing.assert_close(reloaded.encode_text(input_ids), tiny_model.encode_text(input_ids))


def test_save_and_reload_restores_weights_and_batchnorm_statistics(tiny_model, tiny_config, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    reloaded = MobileCLIPModel.from_pretrained(tmp_path).eval()
    for (name, ours), (_, theirs) in zip(tiny_model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(ours, theirs), name
    config = __import__("json").loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForZeroShotImageClassification"] == "modeling_mobileclip.MobileCLIPModel"
    for name in ("modeling_mobileclip.py", "configuration_mobileclip.py", "text_mobileclip.py"):
        assert (tmp_path / name).is_file(), name  # the remote-code files, relative imports included


def test_bf16_inference_tracks_fp32(tiny_model, tiny_config):
    pixel_values, input_ids = make_inputs(tiny_config)
    with torch.no_grad():
        image32, text32 = tiny_model.encode_image(pixel_values), tiny_model.encode_text(input_ids)
        model16 = tiny_model.to(torch.bfloat16)
        image16 = model16.encode_image(pixel_values.bfloat16())
        text16 = model16.encode_text(input_ids)
    assert image16.dtype == torch.bfloat16 and torch.isfinite(image16).all() and torch.isfinite(text16).all()
    assert F.cosine_similarity(image16.float(), image32).min() > 0.99
    assert F.cosine_similarity(text16.float(), text32).min() > 0.99


def test_gradient_checkpointing_gives_identical_gradients(tiny_config):
    pixel_values, input_ids = make_inputs(tiny_config, batch=4)

    def gradients(checkpointing: bool):
        torch.manual_seed(0)
        model = MobileCLIPModel(tiny_config).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert any(getattr(m, "grad_checkpointing", False) for m in model.vision_model.backbone.modules())
            assert all(layer.gradient_checkpointing for layer in model.text_model.layers)
        model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 50
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_from_scratch_init_is_trainable(tiny_config):
    torch.manual_seed(0)
    model = MobileCLIPModel(tiny_config)
    pixel_values, input_ids = make_inputs(tiny_config, batch=8)
    text = model.encode_text(input_ids)
    assert text.abs().mean() > 1e-2, "text features collapse at init (uninitialised projection?)"
    output = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True)
    assert torch.isfinite(output.loss)
    torch.testing.assert_close(model.logit_scale.detach(), torch.tensor(math.log(1 / 0.07)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8


def _hand_infonce(logits_per_text: torch.Tensor) -> float:
    """Symmetric InfoNCE from its definition (CLIP, Radford et al. 2021, Fig. 3), one row at a time in Python floats:
    text i scores -log(exp(l_ii) / sum_j exp(l_ij)) over its row, image i the same over its column; the two means
    are averaged."""
    rows = logits_per_text.double().tolist()
    n = len(rows)
    per_text = [math.log(sum(math.exp(value) for value in rows[i])) - rows[i][i] for i in range(n)]
    per_image = [math.log(sum(math.exp(rows[j][i]) for j in range(n))) - rows[i][i] for i in range(n)]
    return (sum(per_text) / n + sum(per_image) / n) / 2


def test_contrastive_loss_matches_closed_form_hand_loop_and_open_clip():
    from open_clip.loss import ClipLoss

    # Scaled identity s * I_n: every row and column gives -log(e^s / (e^s + (n - 1))) = log(1 + (n - 1) e^-s).
    assert contrastive_loss(2.0 * torch.eye(4)).item() == pytest.approx(math.log(1 + 3 * math.exp(-2.0)), rel=1e-6)
    logits = 10 * torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert contrastive_loss(logits).item() == pytest.approx(_hand_infonce(logits), rel=1e-12)
    # open_clip's ClipLoss on features whose scaled products are these logits: images = logits^T, texts = I.
    peer = ClipLoss()(logits.t().contiguous(), torch.eye(5, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(contrastive_loss(logits), peer)


def test_variant_registry_and_errors():
    assert len(VARIANTS) == 13 and "mobileclip-s0" in VARIANTS and "mobileclip2-l-14" in VARIANTS
    assert "mobileclip-tiny" in DEV_VARIANTS and "mobileclip-tiny" not in VARIANTS
    with pytest.raises(ValueError) as error:
        MobileCLIPConfig.from_variant("mobileclip-s9")
    assert "mobileclip-s9" in str(error.value) and all(name in str(error.value) for name in VARIANTS)
    assert MobileCLIPConfig.from_variant("MobileCLIP2_S4").variant == "mobileclip2-s4"
    with pytest.raises(Exception, match="projection_dim"):
        MobileCLIPConfig.from_variant("mobileclip-s0", text_config=dict(projection_dim=256))
    with pytest.raises(Exception, match="apple_vit_stem"):
        MobileCLIPConfig.from_variant("mobileclip-s0", vision_config=dict(apple_vit_stem=True))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny")).encode_text(torch.zeros(1, 78, dtype=torch.long))


@pytest.mark.parametrize("variant", ["mobileclip-s0", "mobileclip-b", "mobileclip2-l-14"])
def test_variant_configs_round_trip(variant, tmp_path):
    config = MobileCLIPConfig.from_variant(variant)
    config.save_pretrained(tmp_path)
    reloaded = MobileCLIPConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    assert isinstance(reloaded.text_config, type(config.text_config))
