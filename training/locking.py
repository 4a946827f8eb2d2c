"""Locked towers for fine-tuning: open_clip's `--lock-image` / `--lock-text` and their refinements.

A locked parameter gets `requires_grad=False` before the optimizer is built: it receives no gradient, holds no AdamW
state (`training.train.parameter_groups` skips it) and stays bit-identical, as LiT (locked-image tuning,
arXiv:2111.07991) needs. Each tower is split into ordered groups, first to last; `*_unlocked_groups` /
`*_unlocked_layers` = N leaves the last N groups trainable. The groups are open_clip's, so the same flags train the
same parameters here and in open_clip (tests/training/test_train_locking.py checks this against open_clip itself):

- Image tower. open_clip builds every MobileCLIP image tower as a timm trunk whose classifier is the projection
  (`timm_proj: null`), and `TimmModel.lock` groups the trunk's parameters with timm's fine `group_matcher`. Our
  `vision_model.backbone` is the same timm model, so the same timm helpers give the same groups. FastViT / MCi: the
  stem; one group per block (a stage's downsampling and conditional position embedding join its first block);
  `final_conv` with the projection `head`. ViT: the embeddings (patch embedding, class token, position embedding,
  `norm_pre`); one group per block, the final `norm` joining the last block; the projection `head`.
- Text tower (open_clip's `lock_text_tower`): the token and position embeddings; one group per layer (MCt's RepMixer
  blocks count as layers), the final LayerNorm joining the last one; the projection `text_projection`.

`logit_scale` belongs to neither tower and is never locked.
"""

from __future__ import annotations

import logging

from timm.models import group_modules, group_parameters
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from modeling_mobileclip import MobileCLIPModel
from training.config import ConfigError, TrainingConfig


logger = logging.getLogger(__name__)

IMAGE_PREFIX = "vision_model.backbone."


def image_tower_groups(model: MobileCLIPModel) -> list[list[str]]:
    """Parameter names of the image tower's groups, first to last (timm's `group_matcher`, as open_clip's
    `TimmModel.lock` uses it: the fine grouping, one group per block)."""
    backbone = model.vision_model.backbone
    groups = group_parameters(backbone, backbone.group_matcher())
    return [[IMAGE_PREFIX + name for name in groups[index]] for index in sorted(groups)]


def text_tower_groups(model: MobileCLIPModel) -> list[list[str]]:
    """Parameter names of the text tower's groups, first to last (open_clip's `lock_text_tower`)."""
    text = model.text_model

    def names(prefix: str, module: nn.Module) -> list[str]:
        return [f"{prefix}.{name}" for name, _ in module.named_parameters()]

    layers = [names(f"text_model.layers.{index}", layer) for index, layer in enumerate(text.layers)]
    embeddings = [*names("text_model.token_embedding", text.token_embedding), "text_model.position_embedding"]
    last = layers.pop() + names("text_model.final_layer_norm", text.final_layer_norm)
    return [embeddings, *layers, last, names("text_projection", model.text_projection)]


def _locked_group_count(groups: list[list[str]], unlocked: int, key: str, tower: str) -> int:
    """How many leading groups to lock. open_clip silently locks nothing when N exceeds the groups; a typo or a count
    of stages instead of blocks must not start a run that trains the whole tower, so this refuses it."""
    if unlocked > len(groups):
        raise ConfigError(
            f"{key} is {unlocked}, but the {tower} tower has only {len(groups)} groups (see training/locking.py); use "
            f"0..{len(groups)} ({len(groups)} leaves the whole tower trainable)."
        )
    return len(groups) - unlocked


def _image_batchnorms(model: MobileCLIPModel, locked: int, num_groups: int) -> list[str]:
    """BatchNorm modules of the locked image groups, whose running statistics must stay (`freeze_bn_stats`).

    As open_clip: with no group unlocked every BatchNorm of the trunk; otherwise those that timm's `group_modules`
    puts in a locked group. (open_clip freezes every BatchNorm also when all groups are unlocked, an artefact of an
    empty selection meaning "all" in `freeze_batch_norm_2d`; here unlocking all groups freezes nothing.)
    """
    backbone = model.vision_model.backbone
    batchnorms = [name for name, module in backbone.named_modules() if isinstance(module, _BatchNorm)]
    if locked < num_groups:
        module_group = group_modules(backbone, backbone.group_matcher(), reverse=True)
        batchnorms = [name for name in batchnorms if module_group[name] < locked]
    return [IMAGE_PREFIX + name for name in batchnorms]


def _layer_norm_parameters(model: nn.Module) -> set[str]:
    """Names of the LayerNorm weights and biases (what open_clip's `freeze_layer_norm` is about)."""
    return {f"{module_name}.{name}" for module_name, module in model.named_modules()
            if isinstance(module, nn.LayerNorm) for name, _ in module.named_parameters(recurse=False)}


def lock_towers(model: MobileCLIPModel, config: TrainingConfig) -> list[str]:
    """Sets `requires_grad=False` on the locked parameters of `model` (before the optimizer is built) and returns the
    names (as in `model.named_modules()`) of the BatchNorm modules that must stay in eval mode: those of the locked
    image groups with `lock_image_freeze_bn_stats`, else none.

    `lock_text_freeze_layer_norm` follows open_clip's flag (its help: "Freeze LayerNorm ... for any locked layers"):
    without it the LayerNorms of locked text groups stay trainable, as in open_clip's Hugging Face text towers; with
    it they are locked like every other weight, as open_clip's own `TextTransformer` does (it accepts nothing else).
    Raises `ConfigError` when an unlocked count exceeds the tower's groups.
    """
    locked: set[str] = set()
    frozen_norms: list[str] = []
    if config.lock_image:
        groups = image_tower_groups(model)
        count = _locked_group_count(groups, config.lock_image_unlocked_groups, "lock_image_unlocked_groups", "image")
        locked.update(name for group in groups[:count] for name in group)
        if config.lock_image_freeze_bn_stats:
            frozen_norms = _image_batchnorms(model, count, len(groups))
        logger.info("lock_image: %d of %d image groups locked, %d BatchNorm statistics frozen", count, len(groups),
                    len(frozen_norms))
    if config.lock_text:
        groups = text_tower_groups(model)
        count = _locked_group_count(groups, config.lock_text_unlocked_layers, "lock_text_unlocked_layers", "text")
        text_locked = {name for group in groups[:count] for name in group}
        if not config.lock_text_freeze_layer_norm:
            text_locked -= _layer_norm_parameters(model)
        locked |= text_locked
        logger.info("lock_text: %d of %d text groups locked", count, len(groups))
    parameters = dict(model.named_parameters())
    for name in locked:
        parameters[name].requires_grad_(False)
    return frozen_norms
