"""End-to-end tests of training/train.py on CPU: validation, a reinforced emoji run (saved folder, Hub push), the
other modes, 2-process DDP against 1 process, and kill + resume against an uninterrupted run.

All models are `mobileclip-tiny`; subprocess runs use `accelerate launch` exactly as users do.
"""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import EMOJI, REPO_ROOT


OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY = ["--variant", "mobileclip-tiny", "--mixed_precision", "no", "--report_to", "none", "--num_workers", "0",
        "--logging_steps", "1", "--warmup_steps", "2"]


# --- helpers ------------------------------------------------------------------------------------------------------


def build_reinforced_dataset(path: Path, num_rows: int = 32, num_augmentations: int = 3, num_synthetic: int = 2,
                             dims=(6, 4), seed: int = 0, logit_scales=None) -> Path:
    """A reinforced dataset in the format of dataset_scripts/dr_format.py from emoji images.

    Teacher embeddings are learnable on purpose: every view and caption of image i embeds near one random vector
    per image (per teacher, L2-normalised), so distillation targets the identity-like similarity structure.
    """
    import datasets

    from dataset_scripts.augmentation import AugmentationConfig, sample_augmentation
    from dataset_scripts.dr_format import (ReinforcementMetadata, TeacherInfo, shard_filename, write_dataset_card,
                                           write_parquet_shard)

    source = datasets.load_dataset(str(EMOJI), "twitter", split="train").select(range(num_rows))
    metadata = ReinforcementMetadata(
        teachers=[TeacherInfo(f"open_clip:tiny-{i}:none", d, None if logit_scales is None else logit_scales[i])
                  for i, d in enumerate(dims)],
        num_augmentations=num_augmentations, num_synthetic_captions=num_synthetic,
        augmentation=AugmentationConfig(size=48), seed=seed,
    )
    generator = torch.Generator().manual_seed(seed)

    def near(base, count):
        noisy = base + 0.1 * torch.randn(count, base.shape[-1], generator=generator)
        return torch.cat([F.normalize(part, dim=-1) for part in noisy.split(list(dims), dim=-1)], -1).numpy()

    rows = []
    for index, record in enumerate(source):
        image = record["image"]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        base = torch.randn(1, sum(dims), generator=generator)
        rows.append({
            "uid": f"emoji-{index}",
            "image": {"bytes": buffer.getvalue(), "path": None},
            "caption": record["captions"][0],
            "syn_captions": record["captions"][1 : 1 + num_synthetic],
            "aug_params": [sample_augmentation(image.height, image.width, metadata.augmentation, generator).to_json()
                           for _ in range(num_augmentations)],
            "image_emb": near(base, num_augmentations).astype(np.float16),
            "text_emb": near(base, 1 + num_synthetic).astype(np.float16),
        })
    write_parquet_shard(rows, metadata, path / shard_filename("train", 0, 0))
    write_dataset_card(path, metadata, {"train": num_rows})
    return path


@pytest.fixture(scope="module")
def reinforced_data(tmp_path_factory) -> Path:
    return build_reinforced_dataset(tmp_path_factory.mktemp("reinforced"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


DRIVER = """
import os, sys, time, pathlib, torch
sys.path.insert(0, {repo!r})
from training.train import main

dump_dir, pause_at = pathlib.Path(sys.argv[1]), int(os.environ.get("PAUSE_AT_STEP", "-1"))

def on_gradients(step, model, losses):
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if step == 0:
        grads = {{n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}}
        torch.save({{"loss": losses["loss"].detach(), "grads": grads}}, dump_dir / f"step0_rank{{rank}}.pt")
    if step == pause_at:  # simulate a hang mid-training: the test kills the process here
        (dump_dir / "paused").touch()
        time.sleep(3600)

main(sys.argv[2:], on_gradients=on_gradients)
"""


def _driver(tmp_path: Path) -> Path:
    path = tmp_path / "driver.py"
    path.write_text(DRIVER.format(repo=str(REPO_ROOT)))
    return path


def _env(**extra) -> dict:
    return {**os.environ, **OFFLINE_ENV, **extra}


def _run(command, timeout=240, **env):
    result = subprocess.run(command, env=_env(**env), capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    output = f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{output}"
    return result


def _launch_two_processes(driver: Path, dump_dir: Path, args: list[str]):
    """`accelerate launch` of the driver on 2 CPU processes (gloo), as the training README shows."""
    return _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                 "--main_process_port", str(_free_port()), str(driver), str(dump_dir), *args],
                ACCELERATE_USE_CPU="true")


def _kill_when_paused(command: list[str], dump_dir: Path, pause_at: int, timeout: float = 240) -> None:
    """Runs `command` (the driver) until it pauses at step `pause_at`, then SIGKILLs it: a crash mid-training."""
    process = subprocess.Popen(command, env=_env(PAUSE_AT_STEP=str(pause_at)), cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not (dump_dir / "paused").exists():
            assert process.poll() is None, f"run ended before the kill:\n{process.stderr.read()[-4000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for step {pause_at}"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


# --- input validation ---------------------------------------------------------------------------------------------


def _tiny_config(**values):
    from training.config import TrainingConfig

    return TrainingConfig(**{"variant": "mobileclip-tiny", "mixed_precision": "no", "report_to": "none",
                             "num_workers": 0, "per_device_batch_size": 4, "max_steps": 1, **values})


def test_reinforced_mode_rejects_plain_data_with_a_clear_message(fresh_accelerate_state, tmp_path):
    from training.data import DataValidationError
    from training.train import train

    config = _tiny_config(train_data=str(EMOJI), train_data_config="twitter", output_dir=str(tmp_path))
    with pytest.raises(DataValidationError, match=r"lacks column\(s\) \['uid', 'caption', 'syn_captions'.*"
                                                  r"does not look like a reinforced dataset"):
        train(config)


def test_teacher_settings_are_checked_against_the_dataset_card(fresh_accelerate_state, reinforced_data, tmp_path):
    from training.data import DataValidationError
    from training.train import train

    base = {"train_data": str(reinforced_data), "output_dir": str(tmp_path)}
    with pytest.raises(DataValidationError, match=r"teacher_logit_scales \[70.0\] has 1 values, but there are 2"):
        train(_tiny_config(**base, teacher_logit_scales=[70.0]))
    with pytest.raises(DataValidationError, match=r"differ from the teachers recorded in the card"):
        train(_tiny_config(**base, teachers=["open_clip:tiny-1:none", "open_clip:tiny-0:none"]))


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
        train(_tiny_config(train_data=str(tampered), output_dir=str(tmp_path / "out")))


def test_batch_size_is_checked_against_processes_and_data(fresh_accelerate_state, reinforced_data, tmp_path):
    from training.config import ConfigError
    from training.data import DataValidationError
    from training.train import resolve_batch_sizes, train

    with pytest.raises(ConfigError, match="global_batch_size 10 cannot be split evenly over 3 processes"):
        resolve_batch_sizes(_tiny_config(per_device_batch_size=None, global_batch_size=10), 3)
    with pytest.raises(ConfigError, match=r"per_device_batch_size 4 x 2 processes != global_batch_size 16"):
        resolve_batch_sizes(_tiny_config(global_batch_size=16), 2)
    assert resolve_batch_sizes(_tiny_config(per_device_batch_size=None, global_batch_size=12), 3) == (12, 4)
    with pytest.raises(DataValidationError, match="32 rows, fewer than one global batch of 64"):
        train(_tiny_config(train_data=str(reinforced_data), per_device_batch_size=64, output_dir=str(tmp_path)))


def test_multi_process_launch_without_distributed_backend_is_refused(fresh_accelerate_state, reinforced_data,
                                                                     tmp_path, monkeypatch):
    """`torchrun`/`accelerate launch --multi_gpu` on a GPU-less box without CPU mode: each process would train alone."""
    from training.train import train

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="2 processes were launched but Accelerate runs each alone"):
        train(_tiny_config(train_data=str(reinforced_data), output_dir=str(tmp_path)))


# --- a short reinforced run on emoji --------------------------------------------------------------------------------


def test_emoji_reinforced_run_lowers_loss_saves_loadable_folder_and_pushes(
    fresh_accelerate_state, tmp_path, monkeypatch
):
    """Reinforce 64 emoji with two tiny random teachers (dataset_scripts.reinforce), train, evaluate, save, push."""
    from huggingface_hub import HfApi
    from transformers import AutoModel, AutoProcessor

    from dataset_scripts.reinforce import main as reinforce_main
    from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel
    from modeling_mobileclip.convert import save_model_folder
    from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor
    from training.train import main

    teachers = []
    for index in range(2):
        torch.manual_seed(100 + index)
        teacher = MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny")).eval()
        processor = MobileCLIPProcessor.from_variant("mobileclip-tiny")
        teachers.append(save_model_folder(teacher, tmp_path / f"teacher{index}", processor))
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
                   "--eval_data", str(EMOJI), "--eval_data_config", "google", "--eval_split", "train",
                   "--eval_label_column", "category", "--eval_max_samples", "48", "--eval_steps", "12",
                   "--eval_templates", '["an emoji of {c}"]', "--save_reparameterized",
                   "--push_to_hub", "--hub_model_id", "me/tiny-emoji"])

    losses = [row["loss"] for row in result.history]
    assert len(losses) == 24 and all(np.isfinite(losses))
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6]), losses
    assert result.history[0]["distill_loss"] > 0 and result.history[0]["loss"] == result.history[0]["distill_loss"]
    assert 0.0 <= result.metrics["eval/acc1"] <= 1.0

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
    from modeling_mobileclip.convert import save_model_folder
    from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor
    from training.train import main

    clip = main([*TINY, "--mode", "clip", "--train_data", str(EMOJI), "--train_data_config", "twitter",
                 "--caption_column", "captions", "--max_train_samples", "32", "--max_steps", "2",
                 "--per_device_batch_size", "8", "--output_dir", str(tmp_path / "clip"), "--save_steps", "0"])
    assert all(row["distill_loss"] == 0 and row["loss"] == row["clip_loss"] for row in clip.history)
    AcceleratorState._reset_state(True)

    torch.manual_seed(7)
    teacher = save_model_folder(MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny")).eval(),
                                tmp_path / "teacher", MobileCLIPProcessor.from_variant("mobileclip-tiny"))
    online = main([*TINY, "--mode", "online", "--teachers", f"[hf:{teacher}]", "--teacher_logit_scales", "[50]",
                   "--train_data", str(reinforced_data), "--max_steps", "2", "--per_device_batch_size", "8",
                   "--output_dir", str(tmp_path / "online"), "--save_steps", "0"])
    assert all(row["distill_loss"] > 0 and row["loss"] == row["distill_loss"] for row in online.history)


# --- distributed equivalence and exact resume -------------------------------------------------------------------------


def test_two_process_ddp_equals_one_process_on_the_same_global_batch(reinforced_data, tmp_path):
    """gloo DDP on 2 CPU processes (ACCELERATE_USE_CPU + --multi_gpu) vs 1 process: same loss, same gradients.

    BatchNorm runs on frozen statistics here: without SyncBatchNorm (GPU only) each process normalises with its own
    half-batch statistics, which a single process cannot reproduce.
    """
    driver = _driver(tmp_path)
    common = [*TINY, "--train_data", str(reinforced_data), "--max_steps", "1", "--freeze_batchnorm",
              "--global_batch_size", "8", "--save_steps", "0", "--kd_weight", "0.75"]
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()
    _run([sys.executable, str(driver), str(one), *common, "--output_dir", str(one / "out")])
    launched = _launch_two_processes(driver, two, [*common, "--output_dir", str(two / "out")])
    assert "global batch 8 = 2 x 4" in launched.stdout, launched.stdout[-2000:]

    reference = torch.load(one / "step0_rank0.pt")
    ranks = [torch.load(two / f"step0_rank{r}.pt") for r in range(2)]
    for rank in ranks:  # without --local_loss every rank scores the whole global batch
        torch.testing.assert_close(rank["loss"], reference["loss"], rtol=1e-5, atol=1e-6)
    assert reference["grads"].keys() == ranks[0]["grads"].keys() and len(reference["grads"]) > 100
    for name, grad in reference["grads"].items():
        for rank in ranks:  # DDP has averaged the gradients over ranks
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_kill_mid_training_then_resume_latest_equals_uninterrupted_run(reinforced_data, tmp_path):
    driver = _driver(tmp_path)
    # 32 rows / batch 8 = 4 steps per epoch: the run crosses epoch boundaries, resuming mid-epoch at step 6.
    common = [*TINY, "--train_data", str(reinforced_data), "--max_steps", "9", "--per_device_batch_size", "8",
              "--save_steps", "3", "--save_total_limit", "2"]
    uninterrupted = tmp_path / "uninterrupted"
    uninterrupted.mkdir()
    _run([sys.executable, str(driver), str(uninterrupted), *common, "--output_dir", str(uninterrupted / "out")])

    crashed = tmp_path / "crashed"
    crashed.mkdir()
    command = [sys.executable, str(driver), str(crashed), *common, "--output_dir", str(crashed / "out"),
               "--resume_from_checkpoint", "latest"]
    _kill_when_paused(command, crashed, 7)
    checkpoints = sorted(p.name for p in (crashed / "out" / "checkpoints").iterdir())
    assert checkpoints == ["step_3", "step_6"], checkpoints
    assert not (crashed / "out" / "model").exists()

    _run(command)  # same command: resumes from checkpoints/step_6
    resumed, reference = _weights(crashed / "out" / "model"), _weights(uninterrupted / "out" / "model")
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name
    history = [json.loads(line) for line in (crashed / "out" / "train_history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == list(range(1, 10))


# --- teacher logit scales from the card ---------------------------------------------------------------------------


def _resolved_config(model_dir: Path) -> dict:
    """The resolved training configuration recorded in the saved model card."""
    import yaml

    card = (model_dir / "README.md").read_text()
    return yaml.safe_load(card.split("## Training configuration\n\n```yaml\n", 1)[1].split("\n```", 1)[0])


def test_teacher_logit_scales_default_to_the_card_unless_configured():
    from training.data import DataSpec
    from training.train import DEFAULT_TEACHER_LOGIT_SCALE, resolve_teacher_logit_scales

    def spec(card_scales):
        from dataset_scripts.augmentation import AugmentationConfig

        return DataSpec(True, True, ["a", "b"], [6, 4], AugmentationConfig(), 32, card_logit_scales=card_scales)

    assert resolve_teacher_logit_scales(_tiny_config(), spec([14.6, 37.5])) == [14.6, 37.5]
    assert resolve_teacher_logit_scales(_tiny_config(teacher_logit_scales=[70.0, 60.0]), spec([14.6, 37.5])) \
        == [70.0, 60.0]
    assert resolve_teacher_logit_scales(_tiny_config(), spec(None)) == [DEFAULT_TEACHER_LOGIT_SCALE] * 2 == [100.0] * 2
    assert resolve_teacher_logit_scales(_tiny_config(mode="clip"), spec([14.6, 37.5])) == []


def test_card_logit_scales_reach_the_loss_and_explicit_scales_override(fresh_accelerate_state, tmp_path):
    from accelerate.state import AcceleratorState

    from training.train import train

    data = build_reinforced_dataset(tmp_path / "data", num_rows=16, logit_scales=[14.6, 37.5])
    base = {"train_data": str(data), "per_device_batch_size": 8, "save_steps": 0}
    from_card = train(_tiny_config(**base, output_dir=str(tmp_path / "card")))
    resolved = _resolved_config(from_card.model_dir)
    assert resolved["teacher_logit_scales"] is None and resolved["teacher_logit_scales_resolved"] == [14.6, 37.5]
    assert "(logit scale 14.6)" in (from_card.model_dir / "README.md").read_text()
    AcceleratorState._reset_state(True)
    explicit = train(_tiny_config(**base, teacher_logit_scales=[70.0, 60.0], output_dir=str(tmp_path / "explicit")))
    assert _resolved_config(explicit.model_dir)["teacher_logit_scales_resolved"] == [70.0, 60.0]
