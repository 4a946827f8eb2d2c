"""The trained model as a complete Hugging Face folder, its model card, and the push to the Hub.

`save_trained_model` writes `config.json` (with `auto_map`), `model.safetensors`, the remote-code files and the
processor through `modeling_mobileclip.model_folder.write_model_folder` (the one folder writer), plus a README.md model card
(`modeling_mobileclip.model_card.build_model_card`, the builder converted checkpoints use) with the evaluation results
in its model-index, the training configuration and final metrics; optionally a reparameterized (fused) copy for
inference/export.
`training/train.py` pushes it with `modeling_mobileclip.model_folder.push_folder`, the one upload of the project.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from modeling_mobileclip.model_card import build_model_card, training_eval_results
from modeling_mobileclip.model_folder import write_model_folder


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = [f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |"
            for name, value in metrics.items()]
    return "| metric | value |\n|---|---|\n" + "\n".join(rows) if rows else "_No metrics recorded._"


def model_card(resolved_config: dict[str, Any], metrics: dict[str, Any], reparameterized: bool = False,
               eval_history: list[tuple[int, dict[str, Any]]] | None = None, repo_id: str | None = None):
    """The `huggingface_hub.ModelCard` of a trained model (`modeling_mobileclip.model_card.build_model_card`):
    Hub metadata, a model-index with the final evaluation (`eval/*`, `eval_ema/*` metrics) and the periodic ones
    (`eval_history`: (step, metrics) pairs, `metric_config: step-N`), what was trained on what, metrics, config."""
    variant = resolved_config["variant"]
    if repo_id is None and resolved_config.get("push_to_hub"):
        repo_id = resolved_config.get("hub_model_id")
    train_data = resolved_config.get("train_data") or ""
    is_hub_dataset = train_data.count("/") == 1 and not Path(train_data).exists()
    eval_data = str(resolved_config.get("eval_data") or "evaluation data")
    split = resolved_config.get("eval_split") or None
    results = []
    for step, step_metrics in eval_history or []:
        results += training_eval_results(step_metrics, eval_data, split, step=step)
    results += training_eval_results(metrics, eval_data, split)
    teachers = resolved_config.get("teachers_resolved") or []
    scales = resolved_config.get("teacher_logit_scales_resolved") or []
    teacher_lines = "\n".join(f"- `{spec}` (logit scale {scale:g})" for spec, scale in zip(teachers, scales))
    description = (
        f"A MobileCLIP image-text model (`{variant}`) trained with this repository's `training/train.py` in mode "
        f"`{resolved_config['mode']}` on `{train_data}` for {resolved_config['max_steps']} steps at a global batch of "
        f"{resolved_config.get('global_batch_size_resolved')} (loss: (1 - lambda) CLIP + lambda KD with lambda = "
        f"{resolved_config.get('kd_weight_resolved')}; MobileCLIP, Vasu et al., CVPR 2024).\n\n"
        f"Teachers:\n{teacher_lines or '- none (plain CLIP training)'}\n")
    extra = f"""## Metrics

{_metrics_table(metrics)}

## Training configuration

```yaml
{yaml.safe_dump(resolved_config, sort_keys=False).strip()}
```
"""
    return build_model_card(
        variant, repo_id=repo_id, eval_results=results, description=description, extra_sections=extra,
        reparameterized=reparameterized, base_model=resolved_config.get("init_from") or None,
        datasets=[train_data] if is_hub_dataset else None,
        tags=["multi-modal-reinforced-training", f"mode-{resolved_config['mode']}"])


def save_trained_model(model, processor, output_dir: str | Path, resolved_config: dict[str, Any],
                       metrics: dict[str, Any], reparameterized_copy: bool = False,
                       eval_history: list[tuple[int, dict[str, Any]]] | None = None) -> Path:
    """Writes `output_dir` (and `output_dir/reparameterized`) with weights, code, processor and model card
    (final and, with `eval_history`, periodic evaluation results in its model-index)."""
    output_dir = Path(output_dir)
    # channels_last weights are not contiguous in the default layout; safetensors needs contiguous tensors.
    model = model.to(memory_format=torch.contiguous_format)
    write_model_folder(model, output_dir, processor, reparameterized_subfolder=reparameterized_copy,
                       model_card=lambda fused: model_card(resolved_config, metrics, fused, eval_history))
    (output_dir / "training_metrics.json").write_text(json.dumps(metrics, indent=2))
    return output_dir


__all__ = ["model_card", "save_trained_model"]
