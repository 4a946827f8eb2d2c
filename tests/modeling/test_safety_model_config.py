"""Reliability of config and weight loading: wrong types, misspelt keywords and truncated weight files fail at load
with an error naming the key (or file), what was expected and what was given."""

import json
import re

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError, StrictDataclassFieldValidationError
from safetensors.torch import save_file

from modeling_mobileclip.configuration_mobileclip import (
    DEV_VARIANTS,
    VARIANTS,
    MobileCLIPConfig,
    MobileCLIPTextConfig,
    MobileCLIPVisionConfig,
)
from modeling_mobileclip.convert import load_checkpoint
from modeling_mobileclip.modeling_mobileclip import MobileCLIPModel


@pytest.fixture(scope="module")
def tiny_config():
    return MobileCLIPConfig.from_variant("mobileclip-tiny")


def _write_config(folder, edit):
    config = MobileCLIPConfig.from_variant("mobileclip-tiny").to_dict()
    edit(config)
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# --------------------------------------------------------------------------------------------------- wrong types


def test_string_where_a_bool_belongs_fails_at_load_naming_the_key(tmp_path):
    # "false" is truthy: stored silently, it turned the text tower causal. It must fail when config.json is read.
    folder = _write_config(tmp_path / "model", lambda config: config["text_config"].update(causal="false"))
    expected = r"field 'text_config':\s+TypeError: Field 'causal' expected bool, got str \(value: 'false'\)"
    with pytest.raises(StrictDataclassFieldValidationError, match=expected):
        MobileCLIPConfig.from_pretrained(folder)
    with pytest.raises(StrictDataclassFieldValidationError, match=expected):
        MobileCLIPConfig(text_config={"causal": "false"})
    with pytest.raises(StrictDataclassFieldValidationError, match="Field 'causal' expected bool"):
        MobileCLIPTextConfig(causal="false")


def test_wrong_types_name_the_field_instead_of_failing_later():
    # Before: "TypeError: not all arguments converted during string formatting" from the modulo in validation.
    with pytest.raises(StrictDataclassFieldValidationError, match=r"Field 'hidden_size' expected int, got str"):
        MobileCLIPTextConfig(hidden_size="512")
    # Before: "text_config.projection_dim (512) must equal projection_dim (512)", contradicting itself.
    with pytest.raises(StrictDataclassFieldValidationError, match=r"Field 'projection_dim' expected int, got str"):
        MobileCLIPConfig.from_variant("mobileclip-s0", projection_dim="512")
    with pytest.raises(StrictDataclassFieldValidationError, match=r"'vision_config'.*\s.*'image_size' expected int"):
        MobileCLIPConfig.from_variant("mobileclip-s0", vision_config={"image_size": 256.0})
    # Before: "TypeError: 'int' object is not iterable" from dict.update.
    with pytest.raises(TypeError, match=r"text_config must be a dict of overrides or a MobileCLIPTextConfig, got int"):
        MobileCLIPConfig.from_variant("mobileclip-s0", text_config=5)


def test_whole_numbers_in_float_fields_still_load(tmp_path):
    # Hand-written JSON writes 0 / 4 / 100 for whole floats: strict typing must not reject them.
    def edit(config):
        config["text_config"].update(repmixer_mlp_ratio=4, attention_dropout=0)
        config["vision_config"].update(drop_path_rate=0)
        config["logit_scale_max"] = 100

    config = MobileCLIPConfig.from_pretrained(_write_config(tmp_path / "model", edit))
    assert config.text_config.repmixer_mlp_ratio == 4 and config.logit_scale_max == 100
    assert config.text_config.causal is False


def test_config_objects_replace_the_preset_in_from_variant(tiny_config):
    text = MobileCLIPTextConfig(**{**tiny_config.text_config.to_dict(), "causal": True})
    skip = ("model_type", "transformers_version")
    text_dict = {key: value for key, value in text.to_dict().items() if key not in skip}
    config = MobileCLIPConfig.from_variant("mobileclip-tiny", text_config=MobileCLIPTextConfig(**text_dict))
    assert config.text_config.causal is True


# ---------------------------------------------------------------------------------------------- misspelt keywords


def test_misspelt_keyword_to_from_variant_is_refused_with_suggestions():
    with pytest.raises(TypeError, match=re.escape("'projection_dm' (did you mean 'projection_dim'?)")):
        MobileCLIPConfig.from_variant("mobileclip-s0", projection_dm=256)
    with pytest.raises(TypeError, match=r"from_variant\(text_config=\.\.\.\) got unknown keyword\(s\) 'hiden_size'"):
        MobileCLIPConfig.from_variant("mobileclip-s0", text_config={"hiden_size": 256})
    with pytest.raises(TypeError, match=r"'backbon' \(did you mean 'backbone' or 'backbone_kwargs'\?\)"):
        MobileCLIPConfig.from_variant("mobileclip-s0", vision_config={"backbon": "fastvit_mci1"})
    # correctly spelt overrides still apply
    overrides = dict(projection_dim=256, text_config={"projection_dim": 256}, vision_config={"projection_dim": 256})
    config = MobileCLIPConfig.from_variant("mobileclip-s0", **overrides)
    assert config.projection_dim == config.text_config.projection_dim == 256


def test_misspelt_keyword_to_a_constructor_is_refused_with_suggestions():
    # Before: stored as a new attribute, the default silently kept.
    unknown = "got unknown keyword(s)"
    hint = "'projection_dm' (did you mean 'projection_dim'?)"
    with pytest.raises(TypeError, match=re.escape(f"MobileCLIPConfig() {unknown} {hint}")):
        MobileCLIPConfig(projection_dm=256)
    hint = "'hiden_size' (did you mean 'hidden_size'"
    with pytest.raises(TypeError, match=re.escape(f"MobileCLIPTextConfig() {unknown} {hint}")):
        MobileCLIPTextConfig(hiden_size=256)
    hint = "'imge_size' (did you mean 'image_size'?)"
    with pytest.raises(TypeError, match=re.escape(f"MobileCLIPVisionConfig() {unknown} {hint}")):
        MobileCLIPVisionConfig(imge_size=224)
    with pytest.raises(TypeError, match=re.escape(f"MobileCLIPConfig(vision_config=...) {unknown} 'backbon'")):
        MobileCLIPConfig(vision_config={"backbon": "fastvit_mci1"})


def test_keys_transformers_knows_are_still_accepted(tmp_path):
    # What PreTrainedConfig itself writes or consumes: saved-config keys, legacy `torch_dtype`, load-time overrides.
    config = MobileCLIPConfig(
        model_type="mobileclip", transformers_version="5.0.0", architectures=["MobileCLIPModel"], auto_map={},
        torch_dtype="float32", _name_or_path="somewhere", attn_implementation="eager", output_attentions=False,
        id2label={"0": "a", "1": "b"}, _commit_hash="abc",
        text_config={"model_type": "mobileclip_text_model", "dtype": "float32", "_name_or_path": ""},
        vision_config={"model_type": "mobileclip_vision_model", "transformers_version": "5.0.0"},
    )  # fmt: skip
    assert config.id2label == {0: "a", 1: "b"} and config._attn_implementation == "eager"
    folder = _write_config(tmp_path / "model", lambda c: c.update(torch_dtype="float32", _name_or_path="x"))
    assert MobileCLIPConfig.from_pretrained(folder, attn_implementation="sdpa").projection_dim == 32


@pytest.mark.parametrize("name", [*VARIANTS, *DEV_VARIANTS])
def test_every_variant_config_survives_save_and_load(tmp_path, name):
    config = MobileCLIPConfig.from_variant(name)
    config.save_pretrained(tmp_path)
    assert MobileCLIPConfig.from_pretrained(tmp_path).to_json_string() == config.to_json_string()


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda config: config.update(projection_dm=256), "'projection_dm' (did you mean 'projection_dim'?)"),
        (lambda config: config["text_config"].update(casual=True), "'casual' (did you mean 'causal'?)"),
        (lambda config: config["vision_config"].update(backbon="x"), "'backbon' (did you mean 'backbone'"),
    ],
    ids=["top_level", "text_config", "vision_config"],
)
def test_misspelt_key_in_config_json_fails_at_load_naming_key_and_file(tmp_path, edit, key):
    folder = _write_config(tmp_path / "model", edit)
    expected = f"Invalid config {folder / 'config.json'}: .*{re.escape(key)}"
    with pytest.raises(TypeError, match=expected):
        MobileCLIPConfig.from_pretrained(folder)
    with pytest.raises(TypeError, match=expected):
        MobileCLIPModel.from_pretrained(folder)  # reads its config through MobileCLIPConfig.from_pretrained
    with pytest.raises(TypeError, match=expected):  # a path to the file itself
        MobileCLIPConfig.from_pretrained(folder / "config.json")


# ------------------------------------------------------------------------------- config errors name their file


def test_invalid_config_json_errors_name_the_file(tmp_path):
    folder = _write_config(tmp_path / "wrong_type", lambda config: config["text_config"].update(causal="false"))
    path = re.escape(str(folder / "config.json"))
    for load in (MobileCLIPConfig.from_pretrained, MobileCLIPModel.from_pretrained):
        with pytest.raises(StrictDataclassFieldValidationError, match=rf"^Invalid config {path}: .*'text_config'"):
            load(folder)
    folder = _write_config(tmp_path / "mismatch", lambda config: config.update(resample="nearest"))
    path = re.escape(str(folder / "config.json"))
    for load in (MobileCLIPConfig.from_pretrained, MobileCLIPModel.from_pretrained):
        with pytest.raises(StrictDataclassError, match=rf"(?s)^Invalid config {path}: .*resample must be 'bilinear'"):
            load(folder)


# ------------------------------------------------------------------------------------------ truncated weight files


def test_truncated_model_safetensors_names_the_file(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = MobileCLIPModel(tiny_config).eval()
    model.save_pretrained(tmp_path)
    reloaded = MobileCLIPModel.from_pretrained(tmp_path)  # the intact folder loads, weights equal
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
    weights = tmp_path / "model.safetensors"
    full_size = weights.stat().st_size
    with open(weights, "r+b") as handle:
        handle.truncate(full_size // 2)
    expected = rf"{re.escape(str(weights))} is {full_size // 2} bytes but its header declares {full_size}.*truncated"
    with pytest.raises(OSError, match=expected):
        MobileCLIPModel.from_pretrained(tmp_path)
    with open(weights, "r+b") as handle:  # cut inside the header itself
        handle.truncate(20)
    with pytest.raises(OSError, match=rf"{re.escape(str(weights))} has no complete header \(20 bytes\).*truncated"):
        MobileCLIPModel.from_pretrained(tmp_path)


def test_converter_names_a_truncated_checkpoint(tmp_path):
    checkpoint = tmp_path / "open_clip_model.safetensors"
    save_file({"text.token_embedding.weight": torch.zeros(64, 64)}, str(checkpoint))
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with pytest.raises(OSError, match=rf"{re.escape(str(checkpoint))} is truncated or corrupt"):
        load_checkpoint(checkpoint)
    torch_checkpoint = tmp_path / "mobileclip_s0.pt"
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}}, torch_checkpoint)
    torch_checkpoint.write_bytes(torch_checkpoint.read_bytes()[:100])
    with pytest.raises(OSError, match=rf"{re.escape(str(torch_checkpoint))} is truncated or corrupt"):
        load_checkpoint(torch_checkpoint)
