"""The README's quickstart (`python -m training.quickstart`) end to end at tiny settings, on the bundled emoji data.

Oracles: the trained folder is evaluated again through the `python -m evaluation.zero_shot` / `evaluation.retrieval`
command lines (their own AutoModel load, data loading and metric modules) and must reproduce the quickstart's
numbers; chance levels are recomputed from the held-out rows; a rerun resumes to bit-identical weights.
"""

import json
from pathlib import Path

import datasets
import pytest
import torch

from conftest import REPO_ROOT

BUNDLED_EMOJI = REPO_ROOT / "dataset_scripts" / "data" / "emoji"
TINY = ["--samples", "64", "--steps", "12", "--batch-size", "16", "--num-augmentations", "2", "--eval-samples", "40",
        "--num-threads", "1"]


def test_bundled_emoji_data_ships_with_its_licenses_and_loads():
    names = {path.name for path in BUNDLED_EMOJI.iterdir()}
    assert {"twitter.parquet", "classnames.json", "README.md", "LICENSE-twemoji.txt", "LICENSE-emoji-data.txt",
            "LICENSE-unicode-cldr.txt"} <= names
    rows = datasets.load_dataset(str(BUNDLED_EMOJI), "twitter", split="train")
    splits = rows["split"]
    assert len(rows) == 1906 and splits.count("train") == 1688 and splits.count("val") == 218
    val_unified = json.loads((BUNDLED_EMOJI / "classnames.json").read_text())["split"]["val_unified"]
    assert sorted(val_unified) == sorted(u for u, s in zip(rows["unified"], splits) if s == "val")


def _write_parquet(rows: datasets.Dataset, path: Path) -> str:
    rows.to_parquet(str(path))
    return str(path)


def test_quickstart_reinforces_trains_evaluates_and_saves_a_loadable_folder(fresh_accelerate_state, tmp_path, capsys):
    from transformers import AutoModel

    from evaluation import retrieval, zero_shot
    from training.quickstart import ZERO_SHOT_TEMPLATES, main

    output = tmp_path / "quickstart"
    summary = main(["--output-dir", str(output), *TINY])
    printed = capsys.readouterr().out

    # The run: 64 reinforced train rows, 12 steps, the loss fell.
    assert summary.train_rows == 64 and summary.eval_rows == 40 and summary.steps == 12
    history = [json.loads(line) for line in (output / "train" / "train_history.jsonl").read_text().splitlines()]
    assert [row["loss"] for row in history] == [row["loss"] for row in summary.history]
    assert summary.loss_first == history[0]["loss"] and summary.loss_last == history[-1]["loss"]
    assert summary.loss_last < 0.95 * summary.loss_first, summary.history
    assert all(row["distill_loss"] > 0 and row["clip_loss"] > 0 for row in history)  # lambda 0.5: both terms

    reinforced = datasets.load_dataset(str(output / "emoji-reinforced"), split="train")
    train_unified = datasets.load_dataset(str(BUNDLED_EMOJI), "twitter", split="train").filter(
        lambda s: s == "train", input_columns="split")["unified"][:64]
    assert sorted(reinforced["uid"]) == sorted(train_unified)  # only train-split rows, keyed by code points
    assert {len(params) for params in reinforced["aug_params"]} == {2}

    # The folder loads with AutoModel; the quickstart compared it with the in-memory model.
    model_dir = Path(summary.model_dir)
    model_dir = model_dir if model_dir.is_absolute() else Path.cwd() / model_dir
    assert type(AutoModel.from_pretrained(model_dir, trust_remote_code=True)).__name__ == "MobileCLIPModel"
    assert summary.reload_max_abs_diff <= 1e-5

    # The metrics: the evaluation command lines on the same held-out rows give the same numbers.
    val_rows = datasets.load_dataset(str(BUNDLED_EMOJI), "twitter", split="train").filter(
        lambda s: s == "val", input_columns="split").select(range(40))
    val_file = _write_parquet(val_rows, tmp_path / "val.parquet")
    templates = tmp_path / "templates.json"
    templates.write_text(json.dumps(ZERO_SHOT_TEMPLATES))
    common = ["--model", str(model_dir), "--dataset", val_file, "--split", "test", "--num-workers", "0"]
    zero_shot_metrics = zero_shot.main([*common, "--label-column", "category", "--templates", str(templates),
                                        "--classnames", str(BUNDLED_EMOJI / "classnames.json"),
                                        "--classnames-key", "category_prompt_names"])
    retrieval_metrics = retrieval.main([*common, "--caption-column", "captions", "--recall-k", "1", "5"])
    trained = summary.metrics["trained"]
    for name in ("acc1", "acc5", "mean_per_class_recall"):
        assert trained[f"zero_shot/{name}"] == pytest.approx(zero_shot_metrics[name], abs=1e-6), name
    for name in ("image_retrieval_recall@1", "image_retrieval_recall@5", "text_retrieval_recall@1",
                 "text_retrieval_recall@5"):
        assert trained[f"retrieval/{name}"] == pytest.approx(retrieval_metrics[name], abs=1e-6), name
    assert summary.metrics["init"].keys() == trained.keys()
    assert summary.chance["retrieval/image_retrieval_recall@1"] == pytest.approx(1 / 40)
    assert summary.chance["zero_shot/acc1"] == pytest.approx(1 / 9)

    # The printed summary and the JSON file.
    assert "random weights" in printed and "no semantics" in printed
    for label in ("zero-shot acc1", "text->image R@1", "text->image R@5", "image->text R@1"):
        assert label in printed
    assert f"{summary.loss_first:.4f} -> {summary.loss_last:.4f}" in printed
    assert json.loads((output / "quickstart_summary.json").read_text())["metrics"] == summary.metrics

    # Rerunning the same command resumes (latest checkpoint) to the same weights; other settings are refused.
    from safetensors.torch import load_file

    first_weights = load_file(str(model_dir / "model.safetensors"))
    rerun = main(["--output-dir", str(output), *TINY])
    assert rerun.metrics == summary.metrics
    for name, tensor in load_file(str(model_dir / "model.safetensors")).items():
        assert torch.equal(tensor, first_weights[name]), name
    with pytest.raises(ValueError, match=r"other settings \(steps: 12 before, 13 now\).*new --output-dir"):
        main(["--output-dir", str(output), *TINY[:2], "--steps", "13", *TINY[4:]])
