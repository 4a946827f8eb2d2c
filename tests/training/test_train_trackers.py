"""The trackers of `report_to` record what a run does: a tiny in-process run per tracker (TensorBoard, wandb offline,
both), read back from what each tracker wrote (TensorBoard's event files and hparams, wandb's offline run log) and
compared with the run's own record (`TrainingResult.history` = `train_history.jsonl`, the lr schedule, the
evaluations' return values)."""

import json
import math
import struct
import time
import zlib
from pathlib import Path

import pytest

from conftest import EMOJI
from train_helpers import build_reinforced_dataset

# wandb's service process must not hang a run: fail instead (the slowest test takes ~10 s).
pytestmark = pytest.mark.timeout(300)

TRAIN_METRICS = ("loss", "clip_loss", "distill_loss", "grad_norm", "lr", "logit_scale", "samples_per_second")
EVALUATION = {"eval_data": str(EMOJI), "eval_data_config": "twitter", "eval_split": "train",
              "eval_label_column": "category", "eval_templates": ["an emoji of {c}"], "eval_max_samples": 16,
              "eval_steps": 1}
# Hyperparameters every tracker must hold, as the run resolved them.
HPARAMS = {"learning_rate": 1e-3, "global_batch_size_resolved": 8, "mode": "reinforced", "max_steps": 3,
           "kd_weight_resolved": 1.0, "variant": "mobileclip-tiny"}


@pytest.fixture(scope="module")
def reinforced_data(tmp_path_factory) -> Path:
    return build_reinforced_dataset(tmp_path_factory.mktemp("reinforced"), num_rows=16)


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    """wandb offline, its user folders under tmp_path (nothing reaches the network or $HOME); the service process
    wandb starts is shut down after the test."""
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                        "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true", "WANDB_INIT_TIMEOUT": "60",
                        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
                        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
                        "WANDB_DATA_DIR": str(tmp_path / "wandb_data")}.items():
        monkeypatch.setenv(name, value)
    for name in ("WANDB_DIR", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_NAME", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    yield
    import wandb

    if wandb.run is not None:  # a failed run: close it so the next test starts clean
        wandb.finish(exit_code=1)
    wandb.teardown()


def _train(tmp_path, monkeypatch, report_to, **values):
    """A 3-step reinforced run (distillation on: every loss term non-zero) with an evaluation at every step; returns
    (config, result, the evaluations' metrics in call order)."""
    from training.config import TrainingConfig
    from training.train import PeriodicEvaluation, train

    evaluations = []
    evaluate = PeriodicEvaluation.__call__

    def spy(self, *args, **kwargs):
        metrics = evaluate(self, *args, **kwargs)
        evaluations.append(dict(metrics))
        return metrics

    monkeypatch.setattr(PeriodicEvaluation, "__call__", spy)
    config = TrainingConfig(**{
        "variant": "mobileclip-tiny", "mode": "reinforced", "mixed_precision": "no", "num_workers": 0,
        "train_data": str(values.pop("train_data")), "per_device_batch_size": 8, "max_steps": 3,
        "warmup_steps": 2, "learning_rate": 1e-3, "save_steps": 0, "logging_steps": 1, "seed": 0,
        "output_dir": str(tmp_path / "run"), "project_name": "trackers", "report_to": report_to,
        **EVALUATION, **values})
    result = train(config)
    assert [row["step"] for row in result.history] == [1, 2, 3]
    history_file = [json.loads(line) for line in (tmp_path / "run" / "train_history.jsonl").read_text().splitlines()]
    assert history_file == result.history
    assert len(evaluations) == 3  # periodic at steps 1 and 2, the final one at step 3
    return config, result, evaluations


def _expected(config, result, evaluations) -> dict[str, dict[int, float]]:
    """metric name -> {step: value}, from the run's own record."""
    from training.schedule import learning_rate_at

    expected: dict[str, dict[int, float]] = {}
    for row in result.history:
        assert row["lr"] == learning_rate_at(row["step"] - 1, config)  # the lr the step trained with
        for name in TRAIN_METRICS:
            expected.setdefault(f"train/{name}", {})[row["step"]] = row[name]
    for step, metrics in enumerate(evaluations, start=1):
        for name, value in metrics.items():
            expected.setdefault(name, {})[step] = value
    assert all(value != 0 for value in expected["train/distill_loss"].values())
    assert {"eval/acc1", "eval/acc5"} <= expected.keys()
    if config.ema_decay is not None:
        assert {"eval_ema/acc1", "eval_ema/acc5"} <= expected.keys()
    return expected


def _assert_recorded(recorded: dict[str, dict[int, float]], expected: dict[str, dict[int, float]], rel: float):
    missing = sorted(expected.keys() - recorded.keys())
    assert not missing, f"not recorded: {missing}"
    for name, values in expected.items():
        assert recorded[name].keys() == values.keys(), (name, recorded[name], values)
        for step, value in values.items():
            assert recorded[name][step] == pytest.approx(value, rel=rel, abs=1e-12, nan_ok=True), (name, step)


# --- TensorBoard ----------------------------------------------------------------------------------------------------


def _tensorboard_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["scalars"]:
        events = accumulator.Scalars(tag)
        steps = [event.step for event in events]
        assert len(steps) == len(set(steps)), f"{tag} logged twice at a step: {steps}"
        scalars[tag] = {event.step: event.value for event in events}
    return scalars


def _tensorboard_hparams(log_dir: Path) -> dict:
    """The hparams plugin's session start info (SummaryWriter.add_hparams writes it into a sub-run of log_dir)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    found = {}
    for events in log_dir.glob("*/events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events.parent))
        accumulator.Reload()
        for content in accumulator.PluginTagToContent("hparams").values():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if data.HasField("session_start_info"):
                for name, value in data.session_start_info.hparams.items():
                    found[name] = getattr(value, value.WhichOneof("kind"))
    return found


def _assert_tensorboard(config, expected):
    import yaml

    log_dir = Path(config.output_dir) / config.project_name  # README: TensorBoard logs go to output_dir/<project_name>
    assert list(log_dir.glob("events.out.tfevents.*")), f"no event file in {log_dir}"
    _assert_recorded(_tensorboard_scalars(log_dir), expected, rel=1e-6)  # event files hold float32
    hparams = _tensorboard_hparams(log_dir)
    for name, value in HPARAMS.items():
        assert hparams[name] == pytest.approx(value) if not isinstance(value, str) else hparams[name] == value, name
    # Lists and None, which hparams cannot hold, arrive as text.
    assert hparams["eval_templates"] == str(config.eval_templates)
    assert hparams["resume_from_checkpoint"] == "None"
    (hparams_file,) = log_dir.glob("*/hparams.yml")  # accelerate's copy
    stored = yaml.safe_load(hparams_file.read_text())
    assert {name: stored[name] for name in HPARAMS} == HPARAMS


@pytest.mark.slow  # trains 3 steps with an evaluation at every step: ~10 s on a CPU
def test_tensorboard_records_every_metric_at_its_step_and_the_hyperparameters(fresh_accelerate_state, monkeypatch,
                                                                             tmp_path, reinforced_data):
    config, result, evaluations = _train(tmp_path, monkeypatch, "tensorboard", train_data=reinforced_data)
    _assert_tensorboard(config, _expected(config, result, evaluations))
    assert not (Path(config.output_dir) / "wandb").exists()


# --- wandb (offline) ------------------------------------------------------------------------------------------------


def _wandb_records(path: Path):
    """The records of an offline run's `run-*.wandb`: a LevelDB-style log (7-byte file header `:W&B` + magic +
    version; 32 KiB blocks of chunks with a 7-byte header: CRC-32 of type + data, length, type full/first/middle/last)
    of `wandb_internal_pb2.Record` protobufs. wandb ships the protobuf but, in recent versions, no Python reader."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:7] == b":W&B" + struct.pack("<HB", 0xBEE1, 0), raw[:7]
    block, position, pending = 32768, 7, b""
    while position < len(raw):
        left = block - position % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        checksum, length, kind = struct.unpack("<IHB", raw[position:position + 7])
        if (checksum, length, kind) == (0, 0, 0):  # zero padding at the end of a block
            position += left
            continue
        data = raw[position + 7:position + 7 + length]
        if len(data) < length:  # the tail wandb's writer has not finished
            return
        assert zlib.crc32(data, zlib.crc32(bytes([kind]))) == checksum, f"{path}: bad chunk at {position}"
        position += 7 + length
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _finished_records(log: Path, timeout: float = 60) -> list:
    """The records of a finished run. `run.finish()` can return before wandb's service has written the whole log
    (seen with several runs in one process): wait, within `timeout`, for the exit record."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(_wandb_records(log))
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            return records
        assert time.monotonic() < deadline, f"{log}: no exit record after {timeout} s"
        time.sleep(0.2)


def _read_wandb_run(run_dir: Path) -> tuple[dict, dict, dict[str, dict[int, float]]]:
    """(run: name/project, config, metric name -> {step: value}) of an offline run folder."""
    (log,) = run_dir.glob("run-*.wandb")
    run, config, history = {}, {}, {}

    def update(items):
        for item in items:
            key = item.key or "/".join(item.nested_key)
            if key != "_wandb":
                config[key] = json.loads(item.value_json)

    for record in _finished_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = {"name": record.run.display_name, "project": record.run.project}
            update(record.run.config.update)
        elif kind == "config":
            update(record.config.update)
        elif kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    value = json.loads(item.value_json)
                    assert record.history.step.num not in history.get(key, {}), (key, record.history.step.num)
                    history.setdefault(key, {})[record.history.step.num] = value
    return run, config, history


def _assert_wandb(config, expected, wandb_dir: Path):
    runs = sorted(wandb_dir.glob("wandb/offline-run-*"))
    assert len(runs) == 1, f"expected one offline run under {wandb_dir}: {runs}"
    run, stored, history = _read_wandb_run(runs[0])
    assert run == {"name": config.run_name or run["name"], "project": config.project_name}
    _assert_recorded(history, expected, rel=1e-12)  # JSON: the exact doubles
    assert {name: stored[name] for name in HPARAMS} == HPARAMS
    # wandb holds lists and None as such.
    assert stored["eval_templates"] == config.eval_templates
    assert stored["resume_from_checkpoint"] is None


@pytest.mark.slow  # trains 3 steps with an evaluation at every step: ~10 s on a CPU
def test_wandb_offline_records_every_metric_at_its_step_the_config_and_the_run_name(
        fresh_accelerate_state, monkeypatch, tmp_path, reinforced_data, offline_wandb):
    config, result, evaluations = _train(tmp_path, monkeypatch, "wandb", train_data=reinforced_data,
                                         run_name="tiny-offline")
    # README: without WANDB_DIR, wandb writes into output_dir/wandb, next to the rest of the run.
    _assert_wandb(config, _expected(config, result, evaluations), Path(config.output_dir))
    assert not (Path(config.output_dir) / config.project_name).exists()  # no TensorBoard


@pytest.mark.slow  # trains 3 steps with an evaluation at every step: ~10 s on a CPU
def test_report_to_all_feeds_both_trackers(fresh_accelerate_state, monkeypatch, tmp_path, reinforced_data,
                                           offline_wandb):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_runs"))  # WANDB_DIR wins over output_dir
    config, result, evaluations = _train(tmp_path, monkeypatch, "all", train_data=reinforced_data, ema_decay=0.5)
    expected = _expected(config, result, evaluations)  # with the EMA's evaluation (eval_ema/...)
    _assert_tensorboard(config, expected)
    _assert_wandb(config, expected, tmp_path / "wandb_runs")
    assert not (Path(config.output_dir) / "wandb").exists()
    assert math.isfinite(result.metrics["eval_ema/acc1"])


def test_start_trackers_all_offline(fresh_accelerate_state, tmp_path, offline_wandb):
    """The quick check of both trackers (and of the wandb version installed) without training: `all` starts TensorBoard
    and wandb only, each takes the configuration in its own types and records logged values at their steps."""
    from accelerate import Accelerator

    from training.config import TrainingConfig
    from training.train import start_trackers

    config = TrainingConfig(variant="mobileclip-tiny", mixed_precision="no", report_to="all", learning_rate=1e-3,
                            output_dir=str(tmp_path / "run"), project_name="trackers", run_name="quick",
                            eval_templates=["an emoji of {c}"])
    assert config.trackers == ["tensorboard", "wandb"]  # not Accelerate's `all`: every tracker package installed
    accelerator = Accelerator(log_with=config.trackers, project_dir=config.output_dir)
    start_trackers(accelerator, config, config.to_dict())
    assert sorted(tracker.name for tracker in accelerator.trackers) == ["tensorboard", "wandb"]
    logged = {step: {"train/loss": 1.0 / step, "train/lr": 1e-3 * step} for step in (1, 2, 3)}
    for step, values in logged.items():
        accelerator.log(values, step=step)
    accelerator.log({"eval/acc1": 0.5}, step=3)  # the final evaluation, at the last training step
    accelerator.end_training()
    expected = {name: {step: values[name] for step, values in logged.items()} for name in logged[1]}
    expected["eval/acc1"] = {3: 0.5}

    log_dir = tmp_path / "run" / "trackers"
    _assert_recorded(_tensorboard_scalars(log_dir), expected, rel=1e-6)
    hparams = _tensorboard_hparams(log_dir)
    assert (hparams["learning_rate"], hparams["eval_templates"], hparams["init_from"]) == \
        (pytest.approx(1e-3), "['an emoji of {c}']", "None")
    (run_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    run, stored, history = _read_wandb_run(run_dir)
    assert run == {"name": "quick", "project": "trackers"}
    _assert_recorded(history, expected, rel=1e-12)
    assert (stored["learning_rate"], stored["eval_templates"], stored["init_from"]) == (1e-3, ["an emoji of {c}"], None)


def test_a_resumed_run_replaces_in_tensorboard_the_steps_it_redoes(fresh_accelerate_state, tmp_path):
    """A run killed after logging steps 1-3 with its last checkpoint at step 1 redoes steps 2-3 on resume: TensorBoard
    shows the redone values only (purge_step), as train_history.jsonl keeps only the redone rows."""
    from accelerate import Accelerator

    from training.config import TrainingConfig
    from training.train import start_trackers

    config = TrainingConfig(variant="mobileclip-tiny", mixed_precision="no", report_to="tensorboard",
                            output_dir=str(tmp_path / "run"), project_name="trackers")
    for resumed_at, values in ((0, {1: 1.0, 2: 2.0, 3: 3.0}), (1, {2: 20.0, 3: 30.0})):
        if resumed_at:
            time.sleep(1.1)  # event files are named by the second they were opened in, and read in name order
        fresh_accelerate_state()
        accelerator = Accelerator(log_with=config.trackers, project_dir=config.output_dir)
        start_trackers(accelerator, config, config.to_dict(), step=resumed_at)
        for step, value in values.items():
            accelerator.log({"train/loss": value}, step=step)
        accelerator.end_training()
    assert _tensorboard_scalars(tmp_path / "run" / "trackers") == {"train/loss": {1: 1.0, 2: 20.0, 3: 30.0}}
