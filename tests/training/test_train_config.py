"""training/config.py, the presets, the learning-rate schedule, optimizer groups and the global-batch sampler."""


import pytest

from training.config import ConfigError, TrainingConfig
from training.config_loading import CONFIGS_DIR, build_config, parse_args
from training.schedule import learning_rate_at
from training.train import parameter_groups


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
    overrides = parse_args(["--config_overrides", "{text_config: {max_position_embeddings: 32}}"]).config_overrides
    assert overrides == {"text_config": {"max_position_embeddings": 32}}
    with pytest.raises(ConfigError, match=r"key 'config_overrides' expects .*got 32 \(32 is not a mapping"):
        parse_args(["--config_overrides", "32"])


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


# --- batch sizes: global = per device x accumulation steps x processes ---------------------------------------------


def test_per_device_batch_and_accumulation_give_the_global_batch():
    """transformers / accelerate / open_clip semantics: the per-device batch is one forward pass, accumulation
    multiplies it."""
    from training.batch_sizes import BatchSizes, resolve_batch_sizes

    config = parse_args(["--per_device_batch_size", "2", "--gradient_accumulation_steps", "4"])
    sizes = resolve_batch_sizes(config, 1)
    assert sizes == BatchSizes(global_batch=8, per_device=2, accumulation_steps=4, num_processes=1)
    assert sizes.per_process == 8
    assert sizes.describe() == "global batch 8 = 2 per device x 4 accumulation steps x 1 process"
    assert resolve_batch_sizes(config, 2) == BatchSizes(16, 2, 4, 2)
    assert resolve_batch_sizes(parse_args(["--per_device_batch_size", "2"]), 1) == BatchSizes(2, 2, 1, 1)
    # The global batch alone is split over the processes (the presets' case, as before): no accumulation.
    assert resolve_batch_sizes(parse_args(["--global_batch_size", "8"]), 2) == BatchSizes(8, 4, 1, 2)
    # Global batch and accumulation steps: the per-device batch is derived.
    config = parse_args(["--global_batch_size", "8", "--gradient_accumulation_steps", "2"])
    assert resolve_batch_sizes(config, 2) == BatchSizes(8, 2, 2, 2)


def test_global_and_per_device_batch_derive_the_accumulation_steps():
    from training.batch_sizes import BatchSizes, resolve_batch_sizes

    config = parse_args(["--global_batch_size", "8", "--per_device_batch_size", "2"])
    assert config.gradient_accumulation_steps is None  # derived once the processes are known
    assert resolve_batch_sizes(config, 1) == BatchSizes(8, 2, 4, 1)
    assert resolve_batch_sizes(config, 2) == BatchSizes(8, 2, 2, 2)
    assert resolve_batch_sizes(config, 4) == BatchSizes(8, 2, 1, 4)
    assert resolve_batch_sizes(config, 2).describe() == "global batch 8 = 2 per device x 2 accumulation steps x " \
                                                         "2 processes"
    # All three given and consistent.
    config = parse_args(["--global_batch_size", "8", "--per_device_batch_size", "2", "--gradient_accumulation_steps",
                         "2"])
    assert resolve_batch_sizes(config, 2) == BatchSizes(8, 2, 2, 2)


def test_impossible_batch_combinations_name_the_numbers():
    from training.batch_sizes import resolve_batch_sizes

    # Not divisible, whatever the number of processes: refused when the config is built.
    with pytest.raises(ConfigError, match=r"global_batch_size 10 is not a multiple of per_device_batch_size 4\b"):
        parse_args(["--global_batch_size", "10", "--per_device_batch_size", "4"])
    with pytest.raises(ConfigError, match=r"global_batch_size 12 is not a multiple of per_device_batch_size 2 x "
                                          r"gradient_accumulation_steps 4 = 8"):
        TrainingConfig(global_batch_size=12, per_device_batch_size=2, gradient_accumulation_steps=4)
    with pytest.raises(ConfigError, match=r"global_batch_size 9 is not a multiple of gradient_accumulation_steps 2"):
        TrainingConfig(global_batch_size=9, gradient_accumulation_steps=2)
    # Not divisible over the processes.
    config = parse_args(["--global_batch_size", "12", "--per_device_batch_size", "2"])
    with pytest.raises(ConfigError, match=r"global_batch_size 12 is not a multiple of per_device_batch_size 2 x "
                                          r"4 processes = 8"):
        resolve_batch_sizes(config, 4)
    with pytest.raises(ConfigError, match=r"global_batch_size 8 cannot be split evenly over 3 processes x "
                                          r"1 accumulation step \(= 3\)"):
        resolve_batch_sizes(parse_args(["--global_batch_size", "8"]), 3)
    # All three given and inconsistent.
    config = parse_args(["--global_batch_size", "16", "--per_device_batch_size", "2", "--gradient_accumulation_steps",
                         "4"])
    with pytest.raises(ConfigError, match=r"global_batch_size 16 != per_device_batch_size 2 x "
                                          r"gradient_accumulation_steps 4 x 1 process = 8"):
        resolve_batch_sizes(config, 1)
    assert resolve_batch_sizes(config, 2).global_batch == 16  # consistent on 2 processes
    with pytest.raises(ConfigError, match=r"Set per_device_batch_size .* or global_batch_size"):
        resolve_batch_sizes(parse_args(["--gradient_accumulation_steps", "4"]), 1)


def _readme_single_gpu_command() -> list[str]:
    """The arguments of the README's "one GPU / CPU" training command (after `training/train.py`)."""
    import shlex

    from conftest import REPO_ROOT

    training = (REPO_ROOT / "README.md").read_text().split("## Training (`training/`)", 1)[1]
    block = training.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = block.split("# one GPU / CPU", 1)[1].splitlines()[1:]  # the lines after that comment
    command = ""
    for line in lines:
        command += " " + line.split("  #", 1)[0].strip().rstrip("\\")
        if not line.split("  #", 1)[0].rstrip().endswith("\\"):
            break
    words = shlex.split(command)
    assert words[:3] == ["accelerate", "launch", "training/train.py"], words
    return words[3:]


def test_readme_single_gpu_command_derives_the_accumulation_steps():
    """The README's one-GPU command (a preset with global_batch_size 8192 plus --per_device_batch_size 256) is valid
    on 1 process: 8192 = 256 per device x 32 accumulation steps x 1 process. The preset's global batch is unchanged
    and the 32-process recipe still splits it without accumulation."""
    from training.batch_sizes import BatchSizes, resolve_batch_sizes

    args = _readme_single_gpu_command()
    assert "--per_device_batch_size" in args and "--config" in args
    config = parse_args(args)
    assert (config.global_batch_size, config.per_device_batch_size) == (8192, 256)
    assert resolve_batch_sizes(config, 1) == BatchSizes(8192, 256, 32, 1)
    assert resolve_batch_sizes(config, 1).describe() == \
        "global batch 8192 = 256 per device x 32 accumulation steps x 1 process"
    assert resolve_batch_sizes(config, 8) == BatchSizes(8192, 256, 4, 8)
    preset = build_config(CONFIGS_DIR / "mobileclip-s0-datacompdr12m.yaml")
    assert resolve_batch_sizes(preset, 32) == BatchSizes(8192, 256, 1, 32)


def test_command_line_batch_key_wins_over_the_preset_layout_and_the_rest_is_derived(tmp_path):
    """A preset fixing the global batch and its layout: a per-device batch on the command line re-derives the
    preset's accumulation steps; accumulation steps on the command line re-derive its per-device batch; the global
    batch stays the recipe's, and both layout keys on the command line must agree with it."""
    from training.batch_sizes import BatchSizes, resolve_batch_sizes

    preset = tmp_path / "preset.yaml"
    preset.write_text("variant: mobileclip-tiny\nreport_to: none\nglobal_batch_size: 64\nper_device_batch_size: 16\n"
                      "gradient_accumulation_steps: 4\n")
    assert resolve_batch_sizes(build_config(preset), 1) == BatchSizes(64, 16, 4, 1)  # the preset alone
    config = parse_args(["--config", str(preset), "--per_device_batch_size", "4"])
    assert (config.per_device_batch_size, config.gradient_accumulation_steps) == (4, None)
    assert resolve_batch_sizes(config, 1) == BatchSizes(64, 4, 16, 1)
    assert resolve_batch_sizes(config, 2) == BatchSizes(64, 4, 8, 2)
    config = parse_args(["--config", str(preset), "--gradient_accumulation_steps", "2"])
    assert (config.per_device_batch_size, config.gradient_accumulation_steps) == (None, 2)
    assert resolve_batch_sizes(config, 1) == BatchSizes(64, 32, 2, 1)
    assert resolve_batch_sizes(config, 2) == BatchSizes(64, 16, 2, 2)
    # The global batch on the command line keeps the preset's per-device batch and re-derives the accumulation.
    config = parse_args(["--config", str(preset), "--global_batch_size", "128"])
    assert resolve_batch_sizes(config, 1) == BatchSizes(128, 16, 8, 1)
    # Both layout keys from the command line: checked against the preset's global batch, the numbers named.
    config = parse_args(["--config", str(preset), "--per_device_batch_size", "4", "--gradient_accumulation_steps", "2"])
    with pytest.raises(ConfigError, match=r"global_batch_size 64 != per_device_batch_size 4 x "
                                          r"gradient_accumulation_steps 2 x 1 process = 8"):
        resolve_batch_sizes(config, 1)
    assert resolve_batch_sizes(config, 8) == BatchSizes(64, 4, 2, 8)
    config = parse_args(["--config", str(preset), "--per_device_batch_size", "4", "--gradient_accumulation_steps", "2",
                         "--global_batch_size", "null"])
    assert resolve_batch_sizes(config, 1) == BatchSizes(8, 4, 2, 1)
    # Without a command-line batch key the preset's three values stay as written (and are checked).
    assert build_config(preset, {"max_steps": 3}).gradient_accumulation_steps == 4


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
