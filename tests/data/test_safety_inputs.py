"""Bad inputs fail at once with a message naming the file/column/value, what was expected and the fix."""

import os
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from test_dataset_reinforce import EMOJI, models, run  # noqa: E402,F401 (fixture)
from torch_threads import single_torch_thread  # noqa: E402,F401 (autouse fixture)


def test_classlabel_with_another_number_of_class_names_is_an_error_naming_the_counts():
    from evaluation.datasets_io import EvalDataset, EvaluationInputError, label_indices

    features = datasets.Features({"label": datasets.ClassLabel(names=["cat", "dog"])})
    loaded = EvalDataset(datasets.Dataset.from_dict({"label": [0, 1, 1]}, features=features), "pets")
    assert label_indices(loaded, "label", ["a cat", "a dog"]) == ([0, 1, 1], ["a cat", "a dog"])
    with pytest.raises(EvaluationInputError, match=r"'label' of pets is a ClassLabel with 2 classes .*but 3 class "
                                                   r"names were given \(expected 2\)"):
        label_indices(loaded, "label", ["background", "a cat", "a dog"])
    plain = EvalDataset(datasets.Dataset.from_dict({"label": [0, 1]}), "pets.txt")
    with pytest.raises(EvaluationInputError, match=r"entries \[2\] of 3 are empty"):
        label_indices(plain, "label", ["cat", "dog", ""])  # a trailing blank line of classnames.txt


def test_plain_integer_labels_with_surplus_class_names_warn_naming_the_counts():
    import warnings

    from evaluation.datasets_io import EvalDataset, label_indices

    tenfold = EvalDataset(datasets.Dataset.from_dict({"label": [0, 2, 1, 2]}), "digits-subset")
    with pytest.warns(UserWarning, match=r"reach only class 2 \(at most 3 classes\) but 10 class names were given: "
                                         r"names 3\.\.9 \('n3', \.\.\.\)"):
        assert label_indices(tenfold, "label", [f"n{i}" for i in range(10)]) == ([0, 2, 1, 2], [f"n{i}" for i in range(10)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the matching count is silent
        label_indices(tenfold, "label", ["n0", "n1", "n2"])


def test_recall_at_zero_is_rejected():
    from evaluation.retrieval import parse_args

    assert parse_args(["--model", "m", "--dataset", "d", "--recall-k", "1", "5"]).recall_k == [1, 5]
    with pytest.raises(SystemExit) as error:
        parse_args(["--model", "m", "--dataset", "d", "--recall-k", "0", "5"])
    assert error.value.code == 2


def test_recall_at_zero_message(capsys):
    from evaluation.retrieval import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--dataset", "d", "--recall-k", "0"])
    assert "--recall-k takes cut-offs >= 1" in capsys.readouterr().err


def test_a_single_parquet_file_is_training_data(tmp_path):
    from training.config import TrainingConfig
    from training.data import load_train_dataset

    config = TrainingConfig(variant="mobileclip-tiny", mode="clip", train_data=str(EMOJI), report_to="none",
                            caption_column="captions", output_dir=str(tmp_path))
    dataset = load_train_dataset(config)
    assert len(dataset) == 1906 and {"image", "captions"} <= set(dataset.column_names)
    sliced = load_train_dataset(TrainingConfig(**{**config.to_dict(), "train_split": "train[:5]"}))
    assert len(sliced) == 5


def test_card_teacher_dims_edited_with_the_same_sum_are_caught_by_the_slice_norms(tmp_path):
    from train_helpers import build_reinforced_dataset
    from training.config import TrainingConfig
    from training.data import DataValidationError, load_train_dataset, validate_dataset

    data = build_reinforced_dataset(tmp_path / "data", num_rows=8, dims=(6, 4))
    config = TrainingConfig(variant="mobileclip-tiny", train_data=str(data), report_to="none",
                            output_dir=str(tmp_path / "out"))
    assert validate_dataset(load_train_dataset(config), config).teacher_dims == [6, 4]
    card = data / "README.md"
    _, front, body = card.read_text().split("---\n", 2)
    meta = yaml.safe_load(front)
    meta["datacompdr"]["teachers"][0]["dim"], meta["datacompdr"]["teachers"][1]["dim"] = 4, 6  # same sum 10
    card.write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + body)
    with pytest.raises(DataValidationError, match=r"card's teacher 'open_clip:tiny-0:none' \(dim 4, embedding "
                                                  r"columns 0\.\.3 of 10\) does not cut unit-norm vectors out of "
                                                  r"'image_emb': L2 norms .* expected 1"):
        validate_dataset(load_train_dataset(config), config)


def test_a_failing_dataloader_worker_ends_the_reinforcement_with_its_error(tmp_path, models, monkeypatch):
    from dataset_scripts import reinforce as reinforce_module

    original = reinforce_module.ReinforcementStream._add_example

    def failing(self, batch, example, unit, row):
        if row == 1:
            raise RuntimeError("worker bug on row 1")
        return original(self, batch, example, unit, row)

    monkeypatch.setattr(reinforce_module.ReinforcementStream, "_add_example", failing)
    outcome = {}

    def target():
        try:
            run(tmp_path / "out", models, "--split", "train[:3]", "--caption-column", "name", "--num-workers", "1",
                teachers=models["open_clip_teacher"], captioner=False)
        except Exception as error:  # noqa: BLE001 (the test inspects it)
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "reinforcement hung after a DataLoader worker failed"
    assert "worker bug on row 1" in str(outcome.get("error"))
