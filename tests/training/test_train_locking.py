"""Locked towers (`lock_image*`, `lock_text*`, training/locking.py) against open_clip as the oracle.

open_clip builds the full-size MobileCLIP models on the meta device (structure without weights: fast), locks them with
its own `lock_image_tower` / `lock_text_tower` for every count of unlocked groups, and the parameters it freezes
(named in our layout by the checkpoint converter's open_clip mapping) must be exactly the ones `lock_towers` freezes.
Tiny training runs then check what locking is for: locked weights stay bit-identical and hold no optimizer state,
and BatchNorm statistics of locked groups stay with `lock_image_freeze_bn_stats`.
"""

import json

import open_clip
import pytest
import torch
from open_clip.utils import FrozenBatchNorm2d
from safetensors.torch import load_file
from torch import nn

from conftest import EMOJI
from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel
from modeling_mobileclip.convert import convert_state_dict
from test_parity_official import OPEN_CLIP_CASES
from training.config import ConfigError, TrainingConfig
from training.locking import image_tower_groups, lock_towers, text_tower_groups


# One FastViT / MCi tower, the hybrid-stem ViT (it has BatchNorms) and a plain ViT, with their text towers, run in the
# quick suite; the other published architectures are slow only for their number of groups.
QUICK = {"mobileclip2-s0", "mobileclip-b", "mobileclip2-l-14"}
CASES = [pytest.param(*case, id=case[0], marks=[] if case[0] in QUICK else [pytest.mark.slow])
         for case in OPEN_CLIP_CASES]


def _tiny(variant: str = "mobileclip-tiny") -> MobileCLIPModel:
    torch.manual_seed(0)
    return MobileCLIPModel(MobileCLIPConfig.from_variant(variant))


def _frozen_by_us(model: MobileCLIPModel, **keys) -> tuple[set[str], set[str]]:
    """(frozen parameter names, BatchNorm modules kept in eval mode) after `lock_towers` with these config keys."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    norms = lock_towers(model, TrainingConfig(**keys))
    return {name for name, p in model.named_parameters() if not p.requires_grad}, set(norms)


def _frozen_by_open_clip(reference: nn.Module, lock) -> tuple[set[str], set[str]]:
    """The same for open_clip's `lock` (a call on `reference`), then undone: open_clip freezes BatchNorm statistics by
    swapping in `FrozenBatchNorm2d` modules (their weights become buffers, so frozen too); the originals go back."""
    names = [name for name, _ in reference.named_parameters()]
    originals = {name: module for name, module in reference.named_modules() if isinstance(module, nn.BatchNorm2d)}
    with torch.device("meta"):  # FrozenBatchNorm2d is created where the weights it copies live
        lock()
    trainable = {name for name, p in reference.named_parameters() if p.requires_grad}
    frozen_norms = {name for name, module in reference.named_modules() if isinstance(module, FrozenBatchNorm2d)}
    for name, module in originals.items():
        parent, _, child = name.rpartition(".")
        reference.get_submodule(parent).add_module(child, module)
    for parameter in reference.parameters():
        parameter.requires_grad_(True)
    return set(names) - trainable, frozen_norms


def _open_clip_names(reference: nn.Module, model: MobileCLIPModel) -> dict[str, str]:
    """open_clip state-dict name -> ours, through the converter (each tensor replaced by its index)."""
    keys = list(reference.state_dict())
    converted = convert_state_dict({key: torch.tensor(index) for index, key in enumerate(keys)}, "open_clip", model)
    assert not [key for key in converted if key.startswith("<unmapped")]
    return {keys[int(index)]: name for name, index in converted.items()}


@pytest.mark.parametrize("variant,open_clip_name,overrides", CASES)
def test_the_same_parameters_and_batchnorms_freeze_as_in_open_clip(variant, open_clip_name, overrides):
    with torch.device("meta"):
        reference = open_clip.create_model(open_clip_name, pretrained=None, device="meta")
        model = MobileCLIPModel(MobileCLIPConfig.from_variant(variant, **overrides))
    ours = _open_clip_names(reference, model)
    assert len(ours) == len(reference.state_dict()) == len(model.state_dict())

    def mapped(frozen: set[str], norms: set[str]) -> tuple[set[str], set[str]]:
        return {ours[name] for name in frozen}, {ours[f"{name}.weight"].removesuffix(".weight") for name in norms}

    image_groups = len(image_tower_groups(model))
    image = {name for name in ours.values() if name.startswith("vision_model.")}
    for unlocked in range(image_groups + 1):
        for freeze_bn_stats in (False, True):
            frozen, norms = _frozen_by_us(model, lock_image=True, lock_image_unlocked_groups=unlocked,
                                          lock_image_freeze_bn_stats=freeze_bn_stats)
            if unlocked == image_groups and freeze_bn_stats:
                # open_clip's empty selection of BatchNorms means "all" (see _image_batchnorms): ours freezes none.
                assert frozen == norms == set()
                continue
            expected = mapped(*_frozen_by_open_clip(reference, lambda: reference.lock_image_tower(
                unlocked_groups=unlocked, freeze_bn_stats=freeze_bn_stats)))
            assert (frozen, norms) == expected, (unlocked, freeze_bn_stats)
            assert frozen <= image and (unlocked or frozen == {n for n, _ in model.named_parameters()} & image)
    # The projection lives inside the timm trunk (open_clip's `timm_proj: null`), in the last group.
    projection = {id(p) for p in model.vision_model.backbone.get_classifier().parameters()}
    last = set(image_tower_groups(model)[-1])
    assert projection and projection <= {id(p) for name, p in model.named_parameters() if name in last}

    text_groups = len(text_tower_groups(model))
    assert text_groups == model.config.text_config.num_hidden_layers + 2  # embeddings, the layers, the projection
    for unlocked in range(text_groups + 1):
        keys = dict(lock_text=True, lock_text_unlocked_layers=unlocked, lock_text_freeze_layer_norm=True)
        expected = mapped(*_frozen_by_open_clip(
            reference, lambda: reference.lock_text_tower(unlocked_layers=unlocked, freeze_layer_norm=True)))
        assert _frozen_by_us(model, **keys) == expected, unlocked
    for key, lock, count in (("lock_image_unlocked_groups", "lock_image", image_groups),
                             ("lock_text_unlocked_layers", "lock_text", text_groups)):
        with pytest.raises(ConfigError, match=f"{key} is {count + 1}, .* only {count} groups"):
            _frozen_by_us(model, **{lock: True, key: count + 1})


def test_the_groups_of_the_tiny_towers():
    """The groups spelled out (the oracle test above is the proof): MCi, ViT and MCt's RepMixer text blocks."""
    def heads(groups, depth=2):  # each group by its parameters' module prefixes
        return [sorted({".".join(name.removeprefix("vision_model.backbone.").split(".")[:depth]) for name in group})
                for group in groups]

    model = _tiny()  # one block per stage: stem, 4 blocks, final conv + projection
    assert heads(image_tower_groups(model)) == [
        ["stem.0", "stem.1", "stem.2"], ["stages.0"], ["stages.1"], ["stages.2"], ["stages.3"],
        ["final_conv.conv_kxk", "final_conv.conv_scale", "final_conv.se", "head.fc"]]
    assert heads(image_tower_groups(model), 3)[4] == ["stages.3.blocks", "stages.3.downsample", "stages.3.pos_emb"]
    assert heads(text_tower_groups(model), 3) == [  # RepMixer block, 2 attention layers, RepMixer block
        ["text_model.position_embedding", "text_model.token_embedding.weight"], ["text_model.layers.0"],
        ["text_model.layers.1"], ["text_model.layers.2"],
        ["text_model.final_layer_norm.bias", "text_model.final_layer_norm.weight", "text_model.layers.3"],
        ["text_projection.weight"]]
    assert type(model.text_model.layers[3]).__name__ == "MobileCLIPTextRepMixerBlock"
    vit = _tiny("mobileclip-tiny-vit")
    assert heads(image_tower_groups(vit)) == [
        ["cls_token", "norm_pre.bias", "norm_pre.weight", "patch_embed.proj", "pos_embed"], ["blocks.0"],
        ["blocks.1", "norm.bias", "norm.weight"], ["head.bias", "head.weight"]]


def test_text_layer_norms_stay_trainable_without_lock_text_freeze_layer_norm():
    """open_clip's flag freezes the LayerNorms of the locked groups ("for any locked layers"; its Hugging Face text
    towers without it leave them trainable): the same locks, less every LayerNorm weight and bias."""
    model = _tiny()
    with_norms, _ = _frozen_by_us(model, lock_text=True, lock_text_unlocked_layers=2, lock_text_freeze_layer_norm=True)
    without, _ = _frozen_by_us(model, lock_text=True, lock_text_unlocked_layers=2)
    layer_norms = {f"{m}.{p}" for m, module in model.named_modules() if isinstance(module, nn.LayerNorm)
                   for p in ("weight", "bias")}
    assert without == with_norms - layer_norms and with_norms & layer_norms == {
        f"text_model.layers.{i}.layer_norm{j}.{p}" for i in (1, 2) for j in (1, 2) for p in ("weight", "bias")}


def test_too_many_unlocked_groups_is_a_config_error():
    with pytest.raises(ConfigError) as error:
        _frozen_by_us(_tiny(), lock_image=True, lock_image_unlocked_groups=7)
    assert str(error.value).startswith("lock_image_unlocked_groups is 7, but the image tower has only 6 groups")
    assert _frozen_by_us(_tiny(), lock_image=True, lock_image_unlocked_groups=6) == (set(), set())  # all trainable


def test_locked_parameters_get_no_optimizer_state():
    from training.train import parameter_groups

    model = _tiny()
    frozen, _ = _frozen_by_us(model, lock_image=True, lock_text=True, lock_text_unlocked_layers=1)
    in_optimizer = {id(p) for group in parameter_groups(model, 0.2) for p in group["params"]}
    assert {name for name, p in model.named_parameters() if id(p) not in in_optimizer} == frozen
    assert "logit_scale" not in frozen and "text_projection.weight" not in frozen


# (config keys, the parameters that stay, whether the stats of locked BatchNorms stay)
RUNS = {
    "lock_image": (dict(lock_image=True), lambda name: name.startswith("vision_model."), False),
    "lock_text_1": (dict(lock_text=True, lock_text_unlocked_layers=1),
                    lambda name: name.startswith("text_model.") and "layer_norm" not in name, False),
    "lock_image_1_bn": (dict(lock_image=True, lock_image_unlocked_groups=1, lock_image_freeze_bn_stats=True),
                        lambda name: name.startswith("vision_model.") and ".final_conv." not in name
                        and ".head." not in name, True),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_a_locked_training_run(run, fresh_accelerate_state, tiny_model_dir, tmp_path):
    """Fine-tuning the saved tiny model: locked weights bit-identical, the others trained, no optimizer state for the
    locked ones, and the locked groups' BatchNorm statistics kept exactly when `lock_image_freeze_bn_stats` asks."""
    from training.train import train

    keys, is_locked, keeps_stats = RUNS[run]
    output = tmp_path / run
    result = train(TrainingConfig(
        variant="mobileclip-tiny", init_from=str(tiny_model_dir), mode="clip", mixed_precision="no", report_to="none",
        num_workers=0, train_data=str(EMOJI), train_data_config="twitter", caption_column="captions",
        max_train_samples=16, per_device_batch_size=8, max_steps=2, warmup_steps=1, save_steps=1, logging_steps=1,
        output_dir=str(output), **keys))
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(result.model_dir / "model.safetensors"))
    parameters = [name for name, _ in result.model.named_parameters()]
    locked = [name for name in parameters if is_locked(name)]
    assert locked and {name for name, p in result.model.named_parameters() if not p.requires_grad} == set(locked)
    assert all(torch.equal(after[name], before[name]) for name in locked)
    assert all(not torch.equal(after[name], before[name]) for name in parameters if name not in locked)
    # The checkpoint's optimizer holds exactly the trainable parameters.
    optimizer = json.loads((output / "checkpoints" / "step_1" / "optimizer.json").read_text())
    assert sum(len(group["params"]) for group in optimizer["param_groups"]) == len(parameters) - len(locked)
    statistics = [name for name in before if name.endswith(".running_mean") and name.startswith("vision_model.")]
    changed = {name for name in statistics if not torch.equal(after[name], before[name])}
    locked_statistics = {name for name in statistics if is_locked(name.replace(".running_mean", ".weight"))}
    assert changed == (set(statistics) - locked_statistics if keeps_stats else set(statistics))
