"""training/config.py, the presets, the learning-rate schedule, optimizer groups and the global-batch sampler."""


import pytest

from training.config import CONFIGS_DIR, ConfigError, TrainingConfig, build_config, parse_args
from training.train import learning_rate_at, parameter_groups


# Recipe facts from the reference sheet (mobileclip.md §7.1 and §7.3): global batch, steps, lambda, teacher scales.
PAPER_RECIPES = {
    "mobileclip-s0-datacompdr12m.yaml": (8192, 30000, 1.0, [100.0, 100.0]),
    "mobileclip-s2-datacompdr12m.yaml": (8192, 30000, 1.0, [100.0, 100.0]),
    "mobileclip-b-datacompdr12m.yaml": (8192, 30000, 0.75, [100.0, 100.0]),
    "mobileclip-s1-datacompdr1b.yaml": (65536, 200000, 1.0, [100.0, 100.0]),
    "mobileclip-b-datacompdr1b.yaml": (65536, 200000, 0.75, [100.0, 100.0]),
    "mobileclip2-s0-dfndr2b.yaml": (65536, 200000, 1.0, [70.0, 60.0]),
    "mobileclip2-b-dfndr2b.yaml": (65536, 200000, 1.0, [70.0, 60.0]),
    "mobileclip2-s4-dfndr2b.yaml": (65536, 200000, 1.0, [70.0, 60.0]),
}


def test_every_preset_loads_and_paper_recipes_carry_the_paper_hyperparameters():
    presets = sorted(p for p in CONFIGS_DIR.glob("*.yaml") if not p.name.startswith("_"))
    assert len(presets) >= 16
    for path in presets:
        config = build_config(path)
        assert config.variant, path
    for name, (batch, steps, kd_weight, scales) in PAPER_RECIPES.items():
        config = build_config(CONFIGS_DIR / name)
        assert (config.global_batch_size, config.max_steps, config.resolved_kd_weight(), config.teacher_logit_scales) \
            == (batch, steps, kd_weight, scales), name
        optimizer = (config.learning_rate, config.weight_decay, config.adam_beta2, config.max_grad_norm)
        assert optimizer == (1e-3, 0.2, 0.95, 1.0), name
        assert config.mixed_precision == "bf16" and config.mode == "reinforced"
    assert build_config(CONFIGS_DIR / "mobileclip2-s0-dfndr2b.yaml").warmup_steps == 10000
    assert build_config(CONFIGS_DIR / "mobileclip2-b-dfndr2b.yaml").warmup_steps == 2000


def test_command_line_overrides_preset_and_parses_yaml_values():
    config = parse_args(["--config", "tiny-cpu.yaml", "--max_steps", "7", "--push_to_hub", "--hub_model_id", "me/x",
                         "--teacher_logit_scales", "[70, 60]", "--learning_rate", "3e-4", "--mixed_precision", "no",
                         "--use_synthetic_captions", "false", "--eval_templates", '["a photo of {c}."]'])
    assert (config.max_steps, config.push_to_hub, config.hub_model_id) == (7, True, "me/x")
    assert config.teacher_logit_scales == [70.0, 60.0] and config.learning_rate == 3e-4
    assert config.mixed_precision == "no" and config.use_synthetic_captions is False
    assert config.eval_templates == ["a photo of {c}."]
    assert config.per_device_batch_size == 16  # from the preset
    assert parse_args(["--config", "tiny-cpu-clip.yaml"]).mode == "clip"  # inherited through `base:`
    comma = parse_args(["--mode", "online", "--teachers", "open_clip:ViT-L-14:openai,hf:org/teacher",
                        "--teacher_logit_scales", "70,60"])
    assert comma.teachers == ["open_clip:ViT-L-14:openai", "hf:org/teacher"]
    assert comma.teacher_logit_scales == [70.0, 60.0]


def test_bad_keys_and_values_name_the_source(tmp_path):
    with pytest.raises(ConfigError, match=r"command line: unknown key 'max_stpes'. Did you mean 'max_steps'\?"):
        build_config(None, {"max_stpes": 3})
    preset = tmp_path / "bad.yaml"
    preset.write_text("variant: mobileclip-tiny\nper_device_batch_size: lots\n")
    with pytest.raises(ConfigError, match=rf"{preset}: key 'per_device_batch_size' expects int \| None, got 'lots'"):
        build_config(preset)
    with pytest.raises(SystemExit):  # argparse: no silent prefix matching of --max_step
        parse_args(["--max_step", "5"])
    with pytest.raises(ConfigError, match="mode must be one of"):
        TrainingConfig(mode="distill")
    with pytest.raises(ConfigError, match="mode 'online' needs `teachers`"):
        TrainingConfig(mode="online")
    with pytest.raises(ConfigError, match="mode 'clip' trains without teachers, but kd_weight=0.5"):
        TrainingConfig(mode="clip", kd_weight=0.5)
    with pytest.raises(ConfigError, match="push_to_hub needs hub_model_id"):
        TrainingConfig(push_to_hub=True)


def test_learning_rate_warmup_then_cosine_to_the_floor():
    config = TrainingConfig(learning_rate=1e-3, min_learning_rate=1e-5, warmup_steps=10, max_steps=110)
    assert learning_rate_at(0, config) == pytest.approx(1e-4)
    assert learning_rate_at(9, config) == pytest.approx(1e-3)
    assert learning_rate_at(10, config) == pytest.approx(1e-3)
    assert learning_rate_at(60, config) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert learning_rate_at(110, config) == pytest.approx(1e-5)
    lrs = [learning_rate_at(s, config) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_weight_decay_skips_biases_norms_layer_scales_and_logit_scale():
    from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel

    model = MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny"))
    decay, no_decay = parameter_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in no_decay_names
    assert all(names[id(p)].endswith(".weight") or "embedding" in names[id(p)] for p in decay["params"])
    assert not any(n.endswith(".bias") or "layer_scale" in n for n in (names[id(p)] for p in decay["params"]))
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.2, 0.0)




def test_every_configuration_key_is_documented_in_the_readme_table():
    import dataclasses

    from conftest import REPO_ROOT
    from training.config import TrainingConfig

    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.split("### Configuration keys", 1)[1].split("\n### ", 1)[0]
    missing = [f.name for f in dataclasses.fields(TrainingConfig) if f"| `{f.name}` |" not in table]
    assert not missing, f"README.md's configuration-keys table lacks {missing}"
