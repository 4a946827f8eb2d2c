"""`caption_mode` in training: which captions a sample gets per epoch, on reinforced data made with the
`column:NAME` captioner (rows with 0..K synthetic captions) and on plain data; clip and reinforced modes must
see the same views and captions for one seed.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import EMOJI
from train_helpers import resolved_config, tiny_config


@pytest.fixture(scope="module")
def column_caption_data(tmp_path_factory) -> Path:
    """16 emoji reinforced by the pipeline with `column:captions` (K = 3) and a mobileclip-tiny teacher whose logit
    scale is ln(14.6). Caption lists are cut to 1..4 entries (one with an empty entry), so rows have 0..3
    synthetic captions."""
    import math

    import datasets

    from dataset_scripts.reinforce import main as reinforce_main
    from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel
    from modeling_mobileclip.model_folder import write_model_folder
    from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor

    root = tmp_path_factory.mktemp("column-captions")
    source = datasets.load_dataset(str(EMOJI), "twitter", split="train").select(range(16))
    source = source.map(lambda row, i: {"captions": row["captions"][: 1 + i % 4] + ([""] if i == 5 else [])},
                        with_indices=True)
    source.to_parquet(str(root / "source.parquet"))
    torch.manual_seed(5)
    teacher = MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny")).eval()
    with torch.no_grad():
        teacher.logit_scale.fill_(math.log(14.6))
    teacher_dir = write_model_folder(teacher, root / "teacher", MobileCLIPProcessor.from_variant("mobileclip-tiny"))
    reinforce_main([
        "--source", str(root / "source.parquet"), "--output", str(root / "data"), "--teachers", f"hf:{teacher_dir}",
        "--caption-column", "captions", "--captioner", "column:captions", "--num-synthetic-captions", "3",
        "--num-augmentations", "2", "--image-size", "64", "--batch-size", "8", "--shard-size", "16",
        "--dtype", "float32", "--num-workers", "0", "--no-progress",
    ])
    return root / "data"


def _training_samples(data: Path, **values):
    from modeling_mobileclip import MobileCLIPConfig
    from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor
    from training.data import TrainingSamples, TrainingViews, load_train_dataset, validate_dataset

    config = tiny_config(train_data=str(data), **values)
    dataset = load_train_dataset(config)
    model_config = MobileCLIPConfig.from_variant("mobileclip-tiny")
    tokenizer = MobileCLIPProcessor.from_variant("mobileclip-tiny").tokenizer
    views = TrainingViews(config, validate_dataset(dataset, config), model_config.image_size, model_config.resample,
                          tokenizer)
    return config, dataset, TrainingSamples(dataset, views), tokenizer


def test_random_caption_mode_draws_every_real_caption_of_a_row(column_caption_data):
    from training.config import ConfigError
    from training.data import Collator

    # The sample names the drawn caption too (mode online: the teachers embed the caption text).
    _, dataset, samples, tokenizer = _training_samples(column_caption_data, caption_mode="random")
    assert sorted(len(s) for s in dataset["syn_captions"]) == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    for row in range(len(dataset)):
        record = dataset[row]
        candidates = [record["caption"], *record["syn_captions"]]
        tokens = tokenizer(candidates, return_tensors="pt")["input_ids"]
        stored = np.asarray(record["text_emb"], dtype=np.float16)
        drawn = set()
        for epoch in range(40):
            sample = samples[(row, epoch)]
            batch = Collator(tokenizer)([sample])  # training tokenizes a batch's captions in its collator
            assert "syn_input_ids" not in batch
            matches = [c for c in range(len(candidates)) if torch.equal(batch["input_ids"][0], tokens[c])]
            assert len(matches) == 1, (row, epoch)  # exactly one of the row's real captions
            assert sample["caption"] == candidates[matches[0]] and "syn_caption" not in sample
            # Its own teacher embedding (never a zero padding row) comes with it.
            assert torch.equal(sample["text_emb"], torch.from_numpy(stored[matches[0]])) and stored[matches[0]].any()
            drawn.add(matches[0])
        assert drawn == set(range(len(candidates))), (row, drawn)
    with pytest.raises(ConfigError, match=r"caption_mode must be one of \('both', 'random'\), got 'gt'"):
        tiny_config(caption_mode="gt")


@pytest.mark.parametrize("caption_mode", ["random", "both"])
def test_clip_and_reinforced_modes_see_identical_views_and_captions(column_caption_data, caption_mode):
    from training.data import Collator
    from training.inputs import TrainingData

    batches = {}
    for mode in ("clip", "reinforced"):
        config, dataset, samples, tokenizer = _training_samples(column_caption_data, mode=mode,
                                                                caption_mode=caption_mode)
        data = TrainingData(samples.views.spec, dataset=dataset)
        loader = data.loader(samples.views, Collator(tokenizer), config, 8, 0, 1, 0, None)
        batches[mode] = [batch for _, batch in zip(range(6), loader)]  # 3 epochs of 2 steps
    text_keys = {"input_ids"} if caption_mode == "random" else {"input_ids", "syn_input_ids"}
    for clip, reinforced in zip(batches["clip"], batches["reinforced"]):
        assert set(clip) == {"views", *text_keys}
        assert set(reinforced) - set(clip) == {"image_emb", "text_emb"} | (
            set() if caption_mode == "random" else {"syn_text_emb"})
        for key in ("views", *text_keys):
            assert torch.equal(clip[key], reinforced[key]), key


def test_random_caption_mode_trains_with_the_cards_teacher_scale(fresh_accelerate_state, column_caption_data,
                                                                 tmp_path):
    from training.train import train

    result = train(tiny_config(train_data=str(column_caption_data), caption_mode="random", max_steps=2,
                                per_device_batch_size=8, save_steps=0, output_dir=str(tmp_path)))
    assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"]) and result.history[0]["distill_loss"]
    resolved = resolved_config(result.model_dir)
    assert resolved["caption_mode"] == "random"
    assert resolved["teacher_logit_scales_resolved"] == pytest.approx([14.6], rel=1e-6)


def test_caption_modes_on_plain_data_with_a_synthetic_caption_column():
    """Plain emoji rows: `name` as the caption, the `keywords` list as synthetic captions."""
    values = {"mode": "clip", "train_data_config": "twitter", "max_train_samples": 4, "caption_column": "name",
              "synthetic_caption_column": "keywords"}
    _, dataset, both, _ = _training_samples(EMOJI, **values)
    _, _, random, _ = _training_samples(EMOJI, **values, caption_mode="random")
    _, _, ground_truth_only, _ = _training_samples(EMOJI, **values, caption_mode="random",
                                                   use_synthetic_captions=False)
    record = dataset[0]
    drawn = set()
    for epoch in range(60):
        sample = both[(0, epoch)]
        assert sample["caption"] == record["name"] and sample["syn_caption"] in record["keywords"]
        sample = random[(0, epoch)]
        assert "syn_caption" not in sample and sample["caption"] in [record["name"], *record["keywords"]]
        drawn.add(sample["caption"])
        assert ground_truth_only[(0, epoch)]["caption"] == record["name"]
        assert torch.equal(sample["views"], both[(0, epoch)]["views"])  # the same view either way
    assert drawn == {record["name"], *record["keywords"]}, (drawn, record["keywords"])
