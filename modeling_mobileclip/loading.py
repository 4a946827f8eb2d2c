"""The one way this project loads a model and its processor, with its trust policy for remote code.

Evaluation, teachers and export all load through here, and every inference-only path runs the fused form that
:func:`fuse_for_inference` gives (same function within fp32 rounding, faster: one branch per block).
Only `config.json` is read to decide: MobileCLIP folders load
with this package's own classes (the Python files saved beside them are never imported); other models load with
`AutoModel` / `AutoProcessor` / `AutoTokenizer` and `trust_remote_code` exactly as given. A config that needs custom
code without trust raises :class:`RemoteCodeError`, never transformers' interactive prompt.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.utils import reparameterize_model
from transformers import AutoModel, AutoProcessor, AutoTokenizer, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from .configuration_mobileclip import MobileCLIPConfig
from .modeling_mobileclip import MobileCLIPModel, MobileCLIPPreTrainedModel
from .processing_mobileclip import MobileCLIPProcessor, MobileCLIPTokenizer


TRUST_REMOTE_CODE_HINT = "rerun with --trust-remote-code"


class RemoteCodeError(ValueError):
    """A model whose config names custom Python code, asked for without trusting remote code."""


def read_config(model_id: str) -> dict:
    """`config.json` of a folder or Hub id as a dict (downloaded if needed; parsed as JSON, no code runs)."""
    return PretrainedConfig.get_config_dict(model_id)[0]


def is_mobileclip_config(config: dict) -> bool:
    return config.get("model_type") == MobileCLIPConfig.model_type


def pretrained_classes(model_id: str, trust_remote_code: bool = False,
                       how_to_trust: str = TRUST_REMOTE_CODE_HINT) -> tuple[Any, Any, Any, dict]:
    """(model class, processor class, tokenizer class, from_pretrained kwargs) that load `model_id`.

    A config that needs custom code (an `auto_map` for a model_type transformers does not know) without trust raises
    :class:`RemoteCodeError` telling the user `how_to_trust`.
    """
    config = read_config(model_id)
    model_type = config.get("model_type")
    if is_mobileclip_config(config):
        return MobileCLIPModel, MobileCLIPProcessor, MobileCLIPTokenizer, {}
    if not trust_remote_code and config.get("auto_map") and model_type not in CONFIG_MAPPING_NAMES:
        raise RemoteCodeError(
            f"{model_id}: its config.json names custom code (auto_map {config['auto_map']}) for model_type "
            f"{model_type!r}, which neither this package nor transformers provides. Loading it would run Python "
            f"code shipped with the model, so nothing was loaded. If you trust its author, {how_to_trust}."
        )
    return AutoModel, AutoProcessor, AutoTokenizer, {"trust_remote_code": trust_remote_code}


def fuse_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """`model` in eval mode with its train-time branches fused, in place, for inference only (BatchNorm statistics
    are consumed): a MobileCLIP model through its `reparameterize`, any other through timm's `reparameterize_model`
    (open_clip's MobileCLIP towers are timm FastViTs; a model without such blocks is returned unchanged). Idempotent."""
    model.eval()
    if isinstance(model, MobileCLIPPreTrainedModel):
        return model.reparameterize()
    # timm's walk fuses a block twice (RepMixer then fails), so a model with nothing left to fuse is left as it is.
    unfused = any(callable(getattr(module, "reparameterize", None)) and getattr(module, "reparam_conv", 0) is None
                  for module in model.modules())
    return reparameterize_model(model, inplace=True) if unfused else model


def load_model_and_processor(model_id: str, trust_remote_code: bool = False, how_to_trust: str = TRUST_REMOTE_CODE_HINT,
                             dtype: torch.dtype | None = None, fuse: bool = False) -> tuple[torch.nn.Module, Any]:
    """(model in eval mode, processor) of a folder or Hub id, with the classes :func:`pretrained_classes` picks;
    `fuse`: through :func:`fuse_for_inference` (for inference-only use)."""
    model_class, processor_class, _, kwargs = pretrained_classes(model_id, trust_remote_code, how_to_trust)
    processor = processor_class.from_pretrained(model_id, **kwargs)
    model = model_class.from_pretrained(model_id, **kwargs, **({"dtype": dtype} if dtype is not None else {}))
    return (fuse_for_inference(model) if fuse else model.eval()), processor


__all__ = ["RemoteCodeError", "TRUST_REMOTE_CODE_HINT", "fuse_for_inference", "is_mobileclip_config",
           "load_model_and_processor",
           "pretrained_classes", "read_config"]
