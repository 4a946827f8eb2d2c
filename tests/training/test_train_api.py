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


def test_config_overrides_give_a_shorter_text_context_and_a_tokenizer_that_follows_it(fresh_accelerate_state,
                                                                                    tmp_path):
    """`config_overrides` change the variant of a model trained from scratch; with a 32-token text context the saved
    processor gives open_clip's ids at `context_length=32` (truncated captions end with `<end_of_text>`)."""
    import open_clip

    from modeling_mobileclip import MobileCLIPModel
    from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor
    from training.train import train

    overrides = {"text_config": {"max_position_embeddings": 32}}
    result = train(_config(tmp_path, "short", max_train_samples=16, max_steps=1, config_overrides=overrides))
    model = MobileCLIPModel.from_pretrained(result.model_dir)
    processor = MobileCLIPProcessor.from_pretrained(result.model_dir)
    assert model.config.text_config.max_position_embeddings == 32
    texts = ["an emoji of a grinning face", " ".join(["smiling cat face with heart-shaped eyes"] * 6)]
    ids = processor(text=texts, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, open_clip.tokenize(texts, context_length=32))
    assert model.get_text_features(input_ids=ids).pooler_output.shape == (2, model.config.projection_dim)


def test_config_overrides_that_cannot_apply_name_the_problem(fresh_accelerate_state, tmp_path):
    import pytest

    from training.config import ConfigError
    from training.train import train

    with pytest.raises(ConfigError, match="max_position_embedings.*max_position_embeddings"):
        train(_config(tmp_path, "typo", config_overrides={"text_config": {"max_position_embedings": 32}}))
    with pytest.raises(ConfigError, match="config_overrides change the variant of a model trained from scratch"):
        _config(tmp_path, "both", init_from=str(tmp_path), config_overrides={"projection_dim": 16})
