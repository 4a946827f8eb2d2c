"""End-to-end tests of training/train.py on CPU: validation, a reinforced emoji run (saved folder, Hub push), the
other modes, 2-process DDP against 1 process, and kill + resume against an uninterrupted run.

All models are `mobileclip-tiny`; subprocess runs use `accelerate launch` exactly as users do.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import EMOJI
from eval_helpers import hand_zero_shot_top1
from train_helpers import (
    TINY,
    assert_same_weights,
    build_reinforced_dataset,
    launch_two_processes,
    resolved_config,
    run_checked,
    run_killed_and_resumed,
    tiny_config,
    write_driver,
)


@pytest.fixture(scope="module")
def reinforced_data(tmp_path_factory) -> Path:
    return build_reinforced_dataset(tmp_path_factory.mktemp("reinforced"))


# --- input validation ---------------------------------------------------------------------------------------------


def test_reinforced_mode_rejects_plain_data_with_a_clear_message(fresh_accelerate_state, tmp_path):
    from training.data import DataValidationError
    from training.train import train

    config = tiny_config(train_data=str(EMOJI), train_data_config="twitter", output_dir=str(tmp_path))
    with pytest.raises(DataValidationError, match=r"lacks column\(s\) \['uid', 'caption', 'syn_captions'.*"
                                                  r"does not look like a reinforced dataset"):
        train(config)


def test_teacher_settings_are_checked_against_the_dataset_card(fresh_accelerate_state, reinforced_data, tmp_path):
    from training.data import DataValidationError
    from training.train import train

    base = {"train_data": str(reinforced_data), "output_dir": str(tmp_path)}
    with pytest.raises(DataValidationError, match=r"teacher_logit_scales \[70.0\] has 1 values, but there are 2"):
        train(tiny_config(**base, teacher_logit_scales=[70.0]))
    with pytest.raises(DataValidationError, match=r"differ from the teachers recorded in the card"):
        train(tiny_config(**base, teachers=["open_clip:tiny-1:none", "open_clip:tiny-0:none"]))


def test_stored_embedding_width_must_match_card_teacher_dims(fresh_accelerate_state, reinforced_data, tmp_path):
    import shutil

    import yaml

    from training.data import DataValidationError
    from training.train import train

    tampered = tmp_path / "tampered"
    shutil.copytree(reinforced_data, tampered)
    card = (tampered / "README.md").read_text()
    front, body = card.split("---\n", 2)[1:]
    meta = yaml.safe_load(front)
    meta["datacompdr"]["teachers"][1]["dim"] = 8  # the stored vectors are 6 + 4 wide
    (tampered / "README.md").write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + body)
    with pytest.raises(DataValidationError, match=r"'image_emb' stores embeddings of shape \(3, 10\).*dims \[6, 8\]"):
        train(tiny_config(train_data=str(tampered), output_dir=str(tmp_path / "out")))


def test_batch_size_is_checked_against_processes_and_data(fresh_accelerate_state, reinforced_data, tmp_path):
    from training.config import ConfigError
    from training.data import DataValidationError
    from training.train import BatchSizes, resolve_batch_sizes, train

    with pytest.raises(ConfigError, match="global_batch_size 10 cannot be split evenly over 3 processes"):
        resolve_batch_sizes(tiny_config(per_device_batch_size=None, global_batch_size=10), 3)
    # A global batch and a per-device batch: the accumulation steps are derived (16 = 4 per device x 2 x 2).
    assert resolve_batch_sizes(tiny_config(global_batch_size=16), 2) == BatchSizes(16, 4, 2, 2)
    with pytest.raises(ConfigError, match=r"global_batch_size 16 != per_device_batch_size 4 x "
                                          r"gradient_accumulation_steps 1 x 2 processes = 8"):
        resolve_batch_sizes(tiny_config(global_batch_size=16, gradient_accumulation_steps=1), 2)
    assert resolve_batch_sizes(tiny_config(per_device_batch_size=None, global_batch_size=12), 3) == \
        BatchSizes(12, 4, 1, 3)
    with pytest.raises(DataValidationError, match="32 rows, fewer than one global batch of 64"):
        train(tiny_config(train_data=str(reinforced_data), per_device_batch_size=64, output_dir=str(tmp_path)))


def test_multi_process_launch_without_distributed_backend_is_refused(fresh_accelerate_state, reinforced_data,
                                                                     tmp_path, monkeypatch):
    """`torchrun`/`accelerate launch --multi_gpu` on a GPU-less box without CPU mode: each process would train alone."""
    from training.train import train

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="2 processes were launched but Accelerate runs each alone"):
        train(tiny_config(train_data=str(reinforced_data), output_dir=str(tmp_path)))


# --- a short reinforced run on emoji --------------------------------------------------------------------------------


@pytest.mark.slow
def test_emoji_reinforced_run_lowers_loss_saves_loadable_folder_and_pushes(
    fresh_accelerate_state, emoji_subset, tmp_path, monkeypatch
):
    """Reinforce 64 emoji with two tiny random teachers (dataset_scripts.reinforce), train, evaluate, save, push."""
    from huggingface_hub import HfApi
    from transformers import AutoModel, AutoProcessor

    from dataset_scripts.reinforce import main as reinforce_main
    from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel
    from modeling_mobileclip.model_folder import write_model_folder
    from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor
    from training.train import main

    teachers = []
    for index in range(2):
        torch.manual_seed(100 + index)
        teacher = MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny")).eval()
        processor = MobileCLIPProcessor.from_variant("mobileclip-tiny")
        teachers.append(write_model_folder(teacher, tmp_path / f"teacher{index}", processor))
    data = tmp_path / "emoji_dr"
    reinforce_main([
        "--source", str(EMOJI), "--source-config", "twitter", "--split", "train[:64]", "--output", str(data),
        "--teachers", ",".join(f"hf:{t}" for t in teachers), "--num-augmentations", "2",
        "--caption-column", "captions", "--batch-size", "32", "--shard-size", "64", "--dtype", "float32",
        "--num-workers", "0", "--no-progress",
    ])

    calls = {}
    def fake_create_repo(self, repo_id, **kw):
        calls["create_repo"] = (repo_id, kw)

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)

    def fake_upload(self, repo_id, folder_path, **kw):
        calls["upload_folder"] = (repo_id, sorted(p.relative_to(folder_path).as_posix()
                                                  for p in Path(folder_path).rglob("*") if p.is_file()), kw)
        return "https://huggingface.co/me/tiny-emoji/commit/0"

    monkeypatch.setattr(HfApi, "upload_folder", fake_upload)
    out = tmp_path / "run"
    result = main([*TINY, "--train_data", str(data), "--max_steps", "24", "--per_device_batch_size", "16",
                   "--learning_rate", "2e-3", "--output_dir", str(out), "--save_steps", "0",
                   "--teacher_logit_scales", "[70, 60]",
                   "--eval_data", str(emoji_subset), "--eval_split", "test",
                   "--eval_label_column", "category", "--eval_max_samples", "48", "--eval_steps", "12",
                   "--eval_templates", '["an emoji of {c}"]', "--save_reparameterized",
                   "--push_to_hub", "--hub_model_id", "me/tiny-emoji"])

    losses = [row["loss"] for row in result.history]
    assert len(losses) == 24 and all(np.isfinite(losses))
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6]), losses
    assert result.history[0]["distill_loss"] > 0 and result.history[0]["loss"] == result.history[0]["distill_loss"]
    # The final evaluation, scored again by hand from the saved folder: the 37 emoji of 9 categories.
    import datasets

    eval_rows = datasets.Dataset.from_parquet(str(emoji_subset))
    assert len(eval_rows) == 37 and len(set(eval_rows["category"])) == 9
    assert result.metrics["eval/acc1"] == pytest.approx(
        hand_zero_shot_top1(out / "model", eval_rows["image"], eval_rows["category"], "an emoji of {c}"), abs=1e-6)

    model_dir = out / "model"
    files = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_mobileclip.py", "configuration_mobileclip.py",
            "processing_mobileclip.py", "processor_config.json", "README.md"} <= files
    card = (model_dir / "README.md").read_text()
    assert "pipeline_tag: zero-shot-image-classification" in card and "teacher_logit_scales:" in card
    assert "eval/acc1" in card and f"hf:{teachers[0]}" in card

    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    fused = AutoModel.from_pretrained(model_dir / "reparameterized", trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    inputs = processor(text=["an emoji of a face"], images=[_emoji_image(EMOJI)], return_tensors="pt")
    with torch.no_grad():
        pixels, ids = inputs["pixel_values"], inputs["input_ids"]
        torch.testing.assert_close(fused.encode_image(pixels), model.encode_image(pixels), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fused.encode_text(ids), model.encode_text(ids), rtol=1e-4, atol=1e-5)
    assert calls["create_repo"][0] == "me/tiny-emoji"
    repo_id, uploaded, _ = calls["upload_folder"]
    assert repo_id == "me/tiny-emoji"
    assert {"config.json", "model.safetensors", "README.md", "reparameterized/model.safetensors"} <= set(uploaded)


def _emoji_image(emoji_dir: Path):
    import datasets

    return datasets.load_dataset(str(emoji_dir), "google", split="train")[0]["image"].convert("RGB")


# --- other modes ----------------------------------------------------------------------------------------------------


def test_clip_mode_on_plain_data_and_online_mode_with_teachers(fresh_accelerate_state, reinforced_data, tmp_path):
    from accelerate.state import AcceleratorState

    from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel
    from modeling_mobileclip.model_folder import write_model_folder
    from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor
    from training.train import main

    clip = main([*TINY, "--mode", "clip", "--train_data", str(EMOJI), "--train_data_config", "twitter",
                 "--caption_column", "captions", "--max_train_samples", "32", "--max_steps", "2",
                 "--per_device_batch_size", "8", "--output_dir", str(tmp_path / "clip"), "--save_steps", "0"])
    assert all(row["distill_loss"] == 0 and row["loss"] == row["clip_loss"] for row in clip.history)
    AcceleratorState._reset_state(True)

    torch.manual_seed(7)
    teacher = write_model_folder(MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny")).eval(),
                                tmp_path / "teacher", MobileCLIPProcessor.from_variant("mobileclip-tiny"))
    online = main([*TINY, "--mode", "online", "--teachers", f"[hf:{teacher}]", "--teacher_logit_scales", "[50]",
                   "--train_data", str(reinforced_data), "--max_steps", "2", "--per_device_batch_size", "8",
                   "--output_dir", str(tmp_path / "online"), "--save_steps", "0"])
    assert all(row["distill_loss"] > 0 and row["loss"] == row["distill_loss"] for row in online.history)


# --- distributed equivalence and exact resume -------------------------------------------------------------------------


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_on_the_same_global_batch(reinforced_data, tmp_path):
    """gloo DDP on 2 CPU processes (ACCELERATE_USE_CPU + --multi_gpu) vs 1 process: same loss, same gradients.

    BatchNorm runs on frozen statistics here: without SyncBatchNorm (GPU only) each process normalises with its own
    half-batch statistics, which a single process cannot reproduce.
    """
    driver = write_driver(tmp_path)
    common = [*TINY, "--train_data", str(reinforced_data), "--max_steps", "1", "--freeze_batchnorm",
              "--global_batch_size", "8", "--save_steps", "0", "--kd_weight", "0.75"]
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()
    run_checked([sys.executable, str(driver), str(one), *common, "--output_dir", str(one / "out")])
    launched = launch_two_processes(driver, two, [*common, "--output_dir", str(two / "out")])
    assert "global batch 8 = 4 per device x 1 accumulation step x 2 processes" in launched.stdout, \
        launched.stdout[-2000:]

    reference = torch.load(one / "step0_rank0.pt")
    ranks = [torch.load(two / f"step0_rank{r}.pt") for r in range(2)]
    for rank in ranks:  # without --local_loss every rank scores the whole global batch
        torch.testing.assert_close(rank["loss"], reference["loss"], rtol=1e-5, atol=1e-6)
    assert reference["grads"].keys() == ranks[0]["grads"].keys() and len(reference["grads"]) > 100
    for name, grad in reference["grads"].items():
        for rank in ranks:  # DDP has averaged the gradients over ranks
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_kill_mid_training_then_resume_latest_equals_uninterrupted_run(reinforced_data, tmp_path):
    # 32 rows / batch 8 = 4 steps per epoch: the run crosses epoch boundaries, resuming mid-epoch at step 6.
    common = [*TINY, "--train_data", str(reinforced_data), "--max_steps", "9", "--per_device_batch_size", "8",
              "--save_steps", "3", "--save_total_limit", "2"]

    def killed_at_step_7(output_dir):
        checkpoints = sorted(p.name for p in (output_dir / "checkpoints").iterdir())
        assert checkpoints == ["step_3", "step_6"], checkpoints
        assert not (output_dir / "model").exists()

    reference, resumed, _ = run_killed_and_resumed(tmp_path, common, 7, killed_at_step_7)  # resumes from step_6
    assert_same_weights(resumed / "model", reference / "model")
    history = [json.loads(line) for line in (resumed / "train_history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == list(range(1, 10))


# --- teacher logit scales from the card ---------------------------------------------------------------------------


def test_teacher_logit_scales_default_to_the_card_unless_configured():
    from training.data import DataSpec
    from training.train import DEFAULT_TEACHER_LOGIT_SCALE, resolve_teacher_logit_scales

    def spec(card_scales):
        from dataset_scripts.augmentation import AugmentationConfig

        return DataSpec(True, True, ["a", "b"], [6, 4], AugmentationConfig(), 32, card_logit_scales=card_scales)

    assert resolve_teacher_logit_scales(tiny_config(), spec([14.6, 37.5])) == [14.6, 37.5]
    assert resolve_teacher_logit_scales(tiny_config(teacher_logit_scales=[70.0, 60.0]), spec([14.6, 37.5])) \
        == [70.0, 60.0]
    assert resolve_teacher_logit_scales(tiny_config(), spec(None)) == [DEFAULT_TEACHER_LOGIT_SCALE] * 2 == [100.0] * 2
    assert resolve_teacher_logit_scales(tiny_config(mode="clip"), spec([14.6, 37.5])) == []


def test_card_logit_scales_reach_the_loss_and_explicit_scales_override(fresh_accelerate_state, tmp_path):
    from accelerate.state import AcceleratorState

    from training.train import train

    data = build_reinforced_dataset(tmp_path / "data", num_rows=16, logit_scales=[14.6, 37.5])
    base = {"train_data": str(data), "per_device_batch_size": 8, "save_steps": 0}
    from_card = train(tiny_config(**base, output_dir=str(tmp_path / "card")))
    resolved = resolved_config(from_card.model_dir)
    assert resolved["teacher_logit_scales"] is None and resolved["teacher_logit_scales_resolved"] == [14.6, 37.5]
    assert "(logit scale 14.6)" in (from_card.model_dir / "README.md").read_text()
    AcceleratorState._reset_state(True)
    explicit = train(tiny_config(**base, teacher_logit_scales=[70.0, 60.0], output_dir=str(tmp_path / "explicit")))
    assert resolved_config(explicit.model_dir)["teacher_logit_scales_resolved"] == [70.0, 60.0]
