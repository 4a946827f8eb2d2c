"""The trained model as a complete Hugging Face folder, its model card, and the push to the Hub.

`save_trained_model` writes `config.json` (with `auto_map`), `model.safetensors`, the remote-code files and the
processor through `modeling_mobileclip.convert.save_model_folder`, plus a README.md model card recording the
training configuration and final metrics; optionally a reparameterized (fused) copy for inference/export.
`push_folder` uploads it to a Hub model repo through `dataset_scripts.hub_push`, the one upload the dataset scripts
use too.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
import yaml
from huggingface_hub import ModelCardData

from dataset_scripts import hub_push
from modeling_mobileclip.convert import save_model_folder


REPARAMETERIZED_SUBFOLDER = "reparameterized"


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = [f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |"
            for name, value in metrics.items()]
    return "| metric | value |\n|---|---|\n" + "\n".join(rows) if rows else "_No metrics recorded._"


def model_card_text(resolved_config: dict[str, Any], metrics: dict[str, Any], reparameterized: bool = False) -> str:
    """README.md of a trained model: Hub metadata, what was trained on what, metrics, the full config, usage."""
    variant = resolved_config["variant"]
    train_data = resolved_config.get("train_data") or ""
    is_hub_dataset = train_data.count("/") == 1 and not Path(train_data).exists()
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=["mobileclip", "clip", "multi-modal-reinforced-training", f"mode-{resolved_config['mode']}"],
        datasets=[train_data] if is_hub_dataset else None,
        base_model=resolved_config.get("init_from") or None,
    )
    teachers = resolved_config.get("teachers_resolved") or []
    scales = resolved_config.get("teacher_logit_scales_resolved") or []
    teacher_lines = "\n".join(f"- `{spec}` (logit scale {scale:g})" for spec, scale in zip(teachers, scales))
    fused = ("\nThis folder holds the **reparameterized** (fused) inference form: same outputs in eval mode, "
             "fewer layers; do not train it further.\n" if reparameterized else "")
    return f"""---
{card_data.to_yaml()}
---

# {variant} trained with multi-modal reinforced training

A MobileCLIP image-text model (`{variant}`) trained with this repository's `training/train.py` in mode
`{resolved_config['mode']}` on `{train_data}` for {resolved_config['max_steps']} steps at a global batch of
{resolved_config.get('global_batch_size_resolved')} (loss: (1 - lambda) CLIP + lambda KD with lambda =
{resolved_config.get('kd_weight_resolved')}; MobileCLIP, Vasu et al., CVPR 2024).
{fused}
Teachers:
{teacher_lines or '- none (plain CLIP training)'}

## Metrics

{_metrics_table(metrics)}

## Usage

```python
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained("PATH_OR_REPO", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("PATH_OR_REPO", trust_remote_code=True)
inputs = processor(text=["a photo of a cat", "a photo of a dog"], images=[image], return_tensors="pt")
probs = model(**inputs).logits_per_image.softmax(dim=-1)
```

## Training configuration

```yaml
{yaml.safe_dump(resolved_config, sort_keys=False).strip()}
```
"""


def save_trained_model(model, processor, output_dir: str | Path, resolved_config: dict[str, Any],
                       metrics: dict[str, Any], reparameterized_copy: bool = False) -> Path:
    """Writes `output_dir` (and `output_dir/reparameterized`) with weights, code, processor and model card."""
    output_dir = Path(output_dir)
    # channels_last weights are not contiguous in the default layout; safetensors needs contiguous tensors.
    model = model.to(memory_format=torch.contiguous_format)
    save_model_folder(model, output_dir, processor)
    (output_dir / "README.md").write_text(model_card_text(resolved_config, metrics))
    (output_dir / "training_metrics.json").write_text(json.dumps(metrics, indent=2))
    if reparameterized_copy:
        fused = copy.deepcopy(model).eval().reparameterize()
        fused_dir = output_dir / REPARAMETERIZED_SUBFOLDER
        save_model_folder(fused, fused_dir, processor)
        (fused_dir / "README.md").write_text(model_card_text(resolved_config, metrics, reparameterized=True))
    return output_dir


def push_folder(folder: str | Path, repo_id: str, private: bool = False, commit_message: str | None = None) -> str:
    """Creates the model repo `repo_id` if needed and uploads `folder` (subfolders included); returns the commit URL."""
    return hub_push.push_folder(folder, repo_id, private,
                                commit_message or "Upload MobileCLIP trained with training/train.py", repo_type="model")


__all__ = ["model_card_text", "push_folder", "save_trained_model"]
