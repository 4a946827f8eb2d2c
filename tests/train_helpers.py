"""Helpers of the training tests: a reinforced emoji dataset in the DataCompDR format, the tiny training config, and
the subprocess runs (a driver script that dumps step-0 gradients or pauses for a kill, `accelerate launch` on two
CPU processes)."""

import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from conftest import EMOJI, REPO_ROOT, free_port, subprocess_env


TINY = ["--variant", "mobileclip-tiny", "--mixed_precision", "no", "--report_to", "none", "--num_workers", "0",
        "--logging_steps", "1", "--warmup_steps", "2"]


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


def tiny_config(**values):
    from training.config import TrainingConfig

    return TrainingConfig(**{"variant": "mobileclip-tiny", "mixed_precision": "no", "report_to": "none",
                             "num_workers": 0, "per_device_batch_size": 4, "max_steps": 1, **values})


def resolved_config(model_dir: Path) -> dict:
    """The resolved training configuration recorded in the saved model card."""
    import yaml

    card = (model_dir / "README.md").read_text()
    return yaml.safe_load(card.split("## Training configuration\n\n```yaml\n", 1)[1].split("\n```", 1)[0])


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


def write_driver(tmp_path: Path) -> Path:
    path = tmp_path / "driver.py"
    path.write_text(DRIVER.format(repo=str(REPO_ROOT)))
    return path


def run_checked(command, timeout=240, **env):
    result = subprocess.run(command, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    output = f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{output}"
    return result


def launch_two_processes(driver: Path, dump_dir: Path, args: list[str]):
    """`accelerate launch` of the driver on 2 CPU processes (gloo), as the training README shows."""
    return run_checked([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                 "--main_process_port", str(free_port()), str(driver), str(dump_dir), *args],
                ACCELERATE_USE_CPU="true")


def kill_when_paused(command: list[str], dump_dir: Path, pause_at: int, timeout: float = 240) -> None:
    """Runs `command` (the driver) until it pauses at step `pause_at`, then SIGKILLs it: a crash mid-training."""
    process = subprocess.Popen(command, env=subprocess_env(PAUSE_AT_STEP=str(pause_at)), cwd=REPO_ROOT,
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


def saved_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def run_killed_and_resumed(tmp_path: Path, common: list[str], pause_at: int, after_kill=None):
    """The run `common` twice through the driver: once uninterrupted, once SIGKILLed at step `pause_at` and started
    again with the same command (`--resume_from_checkpoint latest`). `after_kill(output_dir)` inspects the crashed
    run's folder before the rerun. Returns (uninterrupted output dir, resumed output dir, the rerun's result)."""
    driver = write_driver(tmp_path)
    uninterrupted, crashed = tmp_path / "uninterrupted", tmp_path / "crashed"
    for folder in (uninterrupted, crashed):
        folder.mkdir()
    run_checked([sys.executable, str(driver), str(uninterrupted), *common, "--output_dir", str(uninterrupted / "out")])
    command = [sys.executable, str(driver), str(crashed), *common, "--output_dir", str(crashed / "out"),
               "--resume_from_checkpoint", "latest"]
    kill_when_paused(command, crashed, pause_at)
    if after_kill is not None:
        after_kill(crashed / "out")
    resumed = run_checked(command)  # the same command resumes from the latest checkpoint
    return uninterrupted / "out", crashed / "out", resumed


def assert_same_weights(folder: Path, reference: Path) -> None:
    """The two saved model folders hold bit-identical weights."""
    weights, expected = saved_weights(folder), saved_weights(reference)
    assert weights.keys() == expected.keys()
    for name in expected:
        assert torch.equal(weights[name], expected[name]), f"{folder.name}: {name}"
