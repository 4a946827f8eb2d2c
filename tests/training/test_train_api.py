"""`training.train.train` as a library call: the model it returns, the data seam, and periodic evaluation that
leaves the run untouched."""

import datasets
import torch
from safetensors.torch import load_file

from conftest import EMOJI


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _config(tmp_path, name, **values):
    from training.config import TrainingConfig

    return TrainingConfig(**{
        "variant": "mobileclip-tiny", "mode": "clip", "mixed_precision": "no", "report_to": "none", "num_workers": 0,
        "train_data": str(EMOJI), "train_data_config": "twitter", "caption_column": "captions",
        "per_device_batch_size": 8, "max_steps": 3, "warmup_steps": 1, "save_steps": 0, "logging_steps": 1,
        "output_dir": str(tmp_path / name), **values})


def test_a_dataset_in_hand_trains_as_the_same_rows_read_from_train_data(fresh_accelerate_state, tmp_path):
    from training.inputs import TrainingData
    from training.train import train

    from_path = train(_config(tmp_path, "path", max_train_samples=16))
    _reset_accelerate()
    rows = datasets.load_dataset(str(EMOJI), "twitter", split="train").select(range(16))
    in_memory = datasets.Dataset.from_list(list(rows), features=rows.features)  # not backed by the data files
    config = _config(tmp_path, "memory")
    given = train(config, data=TrainingData.from_dataset(in_memory, config))
    saved = load_file(str(from_path.model_dir / "model.safetensors"))
    for name, tensor in given.model.state_dict().items():  # the returned model is the trained one...
        assert torch.equal(tensor, saved[name]), name  # ...and equals the run that read the same rows from disk


def test_periodic_evaluation_does_not_change_the_training_run(fresh_accelerate_state, tmp_path):
    from training.train import train

    evaluation = {"eval_data": str(EMOJI), "eval_data_config": "twitter", "eval_split": "train",
                  "eval_label_column": "category", "eval_templates": ["an emoji of {c}"], "eval_max_samples": 16}
    quiet = train(_config(tmp_path, "quiet", max_train_samples=16))
    _reset_accelerate()
    evaluated = train(_config(tmp_path, "evaluated", max_train_samples=16, eval_steps=1, **evaluation))
    assert "eval/acc1" in evaluated.metrics
    from huggingface_hub import ModelCard

    # Every periodic evaluation (steps 1 and 2) and the final one reach the saved card's model-index.
    results = ModelCard.load(evaluated.model_dir / "README.md").data.eval_results
    configs = {result.metric_config for result in results if result.metric_type == "acc1"}
    assert {"step-1", "step-2"} <= configs, configs
    for name, tensor in quiet.model.state_dict().items():
        assert torch.equal(tensor, evaluated.model.state_dict()[name]), name
