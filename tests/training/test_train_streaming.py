"""Streaming training input (training/streaming.py): exactly-once epochs, the same batches for 1 or N processes and
any number of DataLoader workers, exact resume from saved slot positions, unreadable shards skipped and counted,
teacher widths checked per shard. End-to-end runs of train.py on streams are at the end.
"""

import json
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from train_helpers import build_reinforced_dataset

from dataset_scripts.dr_format import shard_filename


SHARDS, ROWS_PER_SHARD = 8, 6


def split_into_shards(folder: Path, shards: int) -> list[Path]:
    """Rewrites the one-shard dataset `build_reinforced_dataset` writes as `shards` equal Parquet shards."""
    single = folder / shard_filename("train", 0, 0)
    table = pq.read_table(single)
    single.unlink()
    per_shard = table.num_rows // shards
    paths = []
    for index in range(shards):
        path = folder / shard_filename("train", index, 0)
        pq.write_table(table.slice(index * per_shard, per_shard), path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sharded")
    build_reinforced_dataset(folder, num_rows=SHARDS * ROWS_PER_SHARD)
    split_into_shards(folder, SHARDS)
    return folder


def stream_config(data: Path, **values):
    from training.config import TrainingConfig

    return TrainingConfig(**{"variant": "mobileclip-tiny", "mixed_precision": "no", "report_to": "none",
                             "train_data": str(data), "streaming": True, "num_workers": 0, "seed": 3,
                             "shuffle_block_size": 5, **values})


def make_loader(config, global_batch, rank=0, world_size=1, saved=None, log=print):
    from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor
    from training.data import Collator, TrainingViews
    from training.streaming import StreamingLoader, plan_stream, prepare_stream

    source, spec = prepare_stream(config)
    processor = MobileCLIPProcessor.from_variant("mobileclip-tiny")
    views = TrainingViews(config, spec, 32, "bilinear", processor.tokenizer)
    plan = plan_stream(len(source.shards), config, global_batch, rank, world_size, saved)
    width = sum(spec.teacher_dims) if config.mode == "reinforced" else None
    return StreamingLoader(source, plan, views, Collator(processor.tokenizer), config, width, log=log)


def take(loader, steps):
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == steps:
            return batches
    raise AssertionError("the stream ended")


def test_every_sample_is_seen_exactly_once_per_epoch(sharded):
    """8 shards of 6 rows over 4 slots (12 rows each), batch 8 = 2 rows per slot: an epoch is 6 steps."""
    config = stream_config(sharded, stream_slots=4)
    batches = take(make_loader(config, 8), 12)
    epochs = [torch.cat([b["text_emb"] for b in batches[i:i + 6]]) for i in (0, 6)]
    for rows in epochs:  # each sample's ground-truth text embedding is its own (random, distinct) vector
        assert len({tuple(row.tolist()) for row in rows}) == SHARDS * ROWS_PER_SHARD == rows.shape[0]
    first = {tuple(row.tolist()) for row in epochs[0]}
    assert first == {tuple(row.tolist()) for row in epochs[1]}
    assert [tuple(r.tolist()) for r in epochs[0]] != [tuple(r.tolist()) for r in epochs[1]]  # reshuffled


def test_two_processes_and_any_worker_count_give_the_global_batch_of_one_process(sharded):
    config = stream_config(sharded, stream_slots=4)
    reference = take(make_loader(config, 8), 7)
    ranks = [take(make_loader(stream_config(sharded, stream_slots=4, num_workers=2), 8, rank, 2), 7)
             for rank in range(2)]
    workers = take(make_loader(stream_config(sharded, stream_slots=4, num_workers=3), 8), 7)
    for step, batch in enumerate(reference):
        for key in ("views", "input_ids", "image_emb", "text_emb", "syn_input_ids", "syn_text_emb"):
            gathered = torch.cat([ranks[0][step][key], ranks[1][step][key]])  # all_gather's rank order
            assert torch.equal(gathered, batch[key]), (step, key)
            assert torch.equal(workers[step][key], batch[key]), (step, key)


def test_resume_from_saved_positions_continues_the_same_stream(sharded, tmp_path):
    from training.streaming import STREAM_STATE_FILE, read_stream_state

    config = stream_config(sharded, stream_slots=4, num_workers=2)
    reference = take(make_loader(config, 8), 9)
    for rank in range(2):  # a 2-process run stops after step 4 (mid-block, mid-epoch) and saves its positions
        loader = make_loader(config, 8, rank, 2)
        take(loader, 4)
        (tmp_path / STREAM_STATE_FILE.format(rank)).write_text(json.dumps(loader.state()))
    saved = read_stream_state(tmp_path, 4)
    assert sorted(saved) == [0, 1, 2, 3]
    resumed = take(make_loader(config, 8, saved=saved), 5)  # resumed by 1 process
    for offset, batch in enumerate(resumed):
        for key in ("views", "image_emb", "text_emb", "syn_input_ids"):
            assert torch.equal(batch[key], reference[4 + offset][key]), (offset, key)


def test_unreadable_shard_is_skipped_and_counted(sharded, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(sharded, copy)
    broken = copy / shard_filename("train", 5, 0)
    broken.write_bytes(b"this is not parquet" * 10)
    messages = []
    loader = make_loader(stream_config(copy, stream_slots=4), 8, log=messages.append)
    batches = take(loader, 6)
    assert loader.unreadable_shards == [str(broken)]
    assert len(messages) == 1 and str(broken) in messages[0] and "unreadable" in messages[0]
    seen = Counter(tuple(row.tolist()) for b in batches for row in b["text_emb"])
    assert max(seen.values()) <= 2  # the short slot wraps into its next epoch; nothing else repeats


def test_teacher_width_that_differs_between_shards_fails_naming_the_shard(sharded, tmp_path):
    import shutil

    from training.data import DataValidationError

    copy = tmp_path / "data"
    shutil.copytree(sharded, copy)
    other = tmp_path / "other"
    build_reinforced_dataset(other, num_rows=ROWS_PER_SHARD, dims=(6, 6))
    odd = copy / shard_filename("train", 6, 0)
    shutil.copy(other / shard_filename("train", 0, 0), odd)
    loader = make_loader(stream_config(copy, stream_slots=4), 8)
    with pytest.raises(DataValidationError, match=f"Shard {odd}.*12 wide.*10"):
        take(loader, 6)


def test_slot_settings_are_checked_against_shards_batch_and_processes(sharded):
    from training.config import ConfigError
    from training.streaming import default_slots, plan_stream

    assert default_slots(8, 8) == 8 and default_slots(8, 12) == 4 and default_slots(3, 64) == 2
    assert default_slots(65536, 65536) == 1024
    config = stream_config(sharded, stream_slots=16)
    with pytest.raises(ConfigError, match="exceeds the 8 shards"):
        plan_stream(8, config, 16, 0, 1)
    with pytest.raises(ConfigError, match="not a multiple of stream_slots 4"):
        plan_stream(8, stream_config(sharded, stream_slots=4), 6, 0, 1)
    with pytest.raises(ConfigError, match="cannot be split over 3 processes"):
        plan_stream(8, stream_config(sharded, stream_slots=4), 12, 0, 3)


# --- Apple's official layout, joined on the fly -------------------------------------------------------------------


def write_official_layout(parquet_folder: Path, root: Path, shards: int, missing_uid: str) -> tuple[Path, Path]:
    """Our reinforced rows rewritten as Apple's reinforcement tars (npz embeddings, no images or captions) plus
    img2dataset image tars holding the images and captions under sequential keys, in reversed order, one missing."""
    import numpy as np

    from dataset_scripts.official import write_official_shard
    from test_dataset_official import write_img2dataset_shard

    rows = pq.read_table(parquet_folder / shard_filename("train", 0, 0)).to_pylist()
    for row in rows:
        row["image_emb"], row["text_emb"] = np.asarray(row["image_emb"]), np.asarray(row["text_emb"])
    (root / "reinforcement").mkdir(parents=True)
    (root / "images").mkdir()
    per_shard = len(rows) // shards
    for index in range(shards):
        part = rows[index * per_shard:(index + 1) * per_shard]
        samples = [{"uid": str(r["uid"]), "syn_captions": list(r["syn_captions"]), "aug_params": list(r["aug_params"]),
                    "image_emb": r["image_emb"], "text_emb": r["text_emb"], "url": f"https://example.com/{r['uid']}"}
                   for r in part]
        write_official_shard(str(root / "reinforcement" / f"{index:08d}.tar"), samples, "npz")
        expected = {str(r["uid"]): {"image": r["image"]["bytes"], "caption": str(r["caption"])} for r in part}
        downloaded = [uid for uid in reversed(list(expected)) if uid != missing_uid]
        write_img2dataset_shard(root / "images" / f"{index:08d}.tar", downloaded, expected, first_key=index * 1000)
    return root / "reinforcement", root / "images"


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """The same samples in our Parquet format and in Apple's layout (teachers 5 + 5: official dims split equally)."""
    root = tmp_path_factory.mktemp("official")
    parquet = root / "parquet"
    build_reinforced_dataset(parquet, num_rows=16, dims=(5, 5))
    # Apple's views are recorded at 224 px (TranslateX/Y are rescaled from it): say the same in our card.
    card = parquet / "README.md"
    card.write_text(card.read_text().replace("    size: 48\n", "    size: 224\n"))
    reinforcement, images = write_official_layout(parquet, root, 4, missing_uid="emoji-6")
    return parquet, reinforcement, images


def test_official_shards_join_their_images_on_the_fly_and_match_our_format(official):
    parquet, reinforcement, images = official
    joined = make_loader(stream_config(f"{reinforcement}/*.tar", streaming=None, stream_slots=1,
                                       train_images=f"{images}/*.tar", teachers=["open_clip:tiny-0:none",
                                                                                 "open_clip:tiny-1:none"]), 5)
    ours = make_loader(stream_config(parquet, stream_slots=1, shuffle_block_size=1), 4)
    joined_rows = {tuple(row.tolist()): index for index, row in enumerate(torch.cat(
        [b["text_emb"] for b in take(joined, 3)]))}  # 15 samples: one epoch without the missing image
    assert len(joined_rows) == 15 and joined.skipped == {"missing_image": 1}
    reference = take(ours, 4)  # epoch 0 of the same samples, read from Parquet
    by_caption = {tuple(r.tolist()): (b["views"][i], b["image_emb"][i], b["input_ids"][i])
                  for b in reference for i, r in enumerate(b["text_emb"])}
    assert set(joined_rows) < set(by_caption)
    joined_again = make_loader(stream_config(f"{reinforcement}/*.tar", stream_slots=1,
                                             train_images=f"{images}/*.tar",
                                             teachers=["open_clip:tiny-0:none", "open_clip:tiny-1:none"]), 5)
    for batch in take(joined_again, 3):  # same uid and epoch: the same view, caption and targets as from Parquet
        for i, row in enumerate(batch["text_emb"]):
            views, image_emb, input_ids = by_caption[tuple(row.tolist())]
            assert torch.equal(batch["views"][i], views) and torch.equal(batch["image_emb"][i], image_emb)
            assert torch.equal(batch["input_ids"][i], input_ids)


# --- training on streams, end to end ----------------------------------------------------------------------------


@pytest.mark.slow
def test_streaming_on_two_processes_trains_the_weights_of_one_process(sharded, tmp_path):
    """gloo DDP on 2 CPU processes vs 1 process, streaming 4 slots at global batch 8 (BatchNorm frozen: without
    SyncBatchNorm each process would normalise with its own half-batch statistics)."""
    from train_helpers import TINY, launch_two_processes, run_checked, saved_weights, write_driver

    driver = write_driver(tmp_path)
    common = [*TINY, "--train_data", str(sharded), "--streaming", "--stream_slots", "4", "--max_steps", "3",
              "--freeze_batchnorm", "--global_batch_size", "8", "--save_steps", "0", "--learning_rate", "1e-4",
              "--num_workers", "1"]
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()
    single = run_checked([sys.executable, str(driver), str(one), *common, "--output_dir", str(one / "out")])
    assert f"streaming {SHARDS} parquet shards" in single.stdout
    launch_two_processes(driver, two, [*common, "--output_dir", str(two / "out")])
    reference, distributed = saved_weights(one / "out" / "model"), saved_weights(two / "out" / "model")
    assert reference.keys() == distributed.keys()
    for name in reference:
        torch.testing.assert_close(distributed[name], reference[name], rtol=0, atol=1e-5, msg=name)


@pytest.mark.slow
def test_streaming_run_killed_and_resumed_equals_the_uninterrupted_run(sharded, tmp_path):
    from train_helpers import TINY, assert_same_weights, run_killed_and_resumed

    # 4 slots of 12 rows at 2 rows per slot and step: an epoch is 6 steps; the kill lands mid-epoch, mid-block.
    common = [*TINY, "--train_data", str(sharded), "--streaming", "--stream_slots", "4", "--max_steps", "9",
              "--per_device_batch_size", "8", "--save_steps", "4", "--num_workers", "2",
              "--shuffle_block_size", "5"]

    def killed_at_step_6(output_dir):
        checkpoint = output_dir / "checkpoints" / "step_4"
        assert sorted(p.name for p in checkpoint.glob("stream_state_*.json")) == ["stream_state_0.json"]

    reference, resumed, rerun = run_killed_and_resumed(tmp_path, common, 6, killed_at_step_6)
    assert "Resumed from" in rerun.stdout
    assert_same_weights(resumed / "model", reference / "model")


def test_official_shards_train_directly(official, tmp_path, fresh_accelerate_state):
    from safetensors.torch import load_file

    from training.train import main

    _, reinforcement, images = official
    result = main(["--variant", "mobileclip-tiny", "--mixed_precision", "no", "--report_to", "none",
                   "--num_workers", "0", "--train_data", f"{reinforcement}/*.tar", "--train_images", f"{images}/*.tar",
                   "--teachers", "open_clip:tiny-0:none,open_clip:tiny-1:none", "--global_batch_size", "4",
                   "--max_steps", "3", "--warmup_steps", "1", "--save_steps", "0", "--output_dir",
                   str(tmp_path / "out")])
    assert result.step == 3 and result.history[-1]["distill_loss"] > 0
    assert load_file(str(result.model_dir / "model.safetensors"))


def test_streaming_is_automatic_for_tar_patterns_and_hub_ids_only(sharded):
    from training.streaming import use_streaming

    def streams(train_data, **values):
        return use_streaming(stream_config(train_data, **{"streaming": None, **values}))

    assert streams("/data/DataCompDR-12M/*.tar") and streams("/data/shards/{00000..01023}.tar")
    assert streams("apple/DataCompDR-12M")  # not a local path: a Hub dataset id
    assert not streams(str(sharded)) and not streams(str(sharded / "data" / "train-00000.parquet"))
    assert not streams("apple/DataCompDR-12M", streaming=False) and streams(str(sharded), streaming=True)


def write_plain_webdataset(root: Path, rows: int = 9, per_shard: int = 4) -> None:
    """Plain image + caption tars as `webdataset.ShardWriter` writes them; sample 5 has no caption."""
    import io

    import datasets
    import webdataset

    from conftest import EMOJI

    emoji = datasets.load_dataset(str(EMOJI), "twitter", split=f"train[:{rows}]")
    root.mkdir(parents=True)
    with webdataset.ShardWriter(str(root / "%05d.tar"), maxcount=per_shard) as sink:
        for index, row in enumerate(emoji):
            png = io.BytesIO()
            row["image"].save(png, "PNG")
            sink.write({"__key__": f"{index:04d}", "png": png.getvalue(),
                        **({"txt": row["name"]} if index != 5 else {})})


def test_plain_webdataset_shards_stream_as_the_webdataset_library_reads_them(tmp_path):
    import numpy as np
    import webdataset

    from training.stream_source import resolve_source

    write_plain_webdataset(tmp_path / "plain")
    source = resolve_source(stream_config(f"{tmp_path / 'plain'}/*.tar", mode="clip"), plain=True)
    assert source.kind == "webdataset" and len(source.shards) == 3
    rows = [row for index in range(len(source.shards)) for row in source.rows(index, {})]
    expected = [sample for shard in source.shards
                for sample in webdataset.WebDataset(shard, shardshuffle=False).decode("pil") if "txt" in sample]
    assert len(rows) == len(expected) == 8  # the sample without a caption is skipped
    assert [row["caption"] for row in rows] == [sample["txt"] for sample in expected]
    for row, sample in zip(rows, expected):
        assert np.array_equal(np.asarray(row["image"]), np.asarray(sample["png"].convert("RGB")))


@pytest.mark.slow
def test_plain_webdataset_shards_train_directly(tmp_path, fresh_accelerate_state):
    from training.train import main

    write_plain_webdataset(tmp_path / "plain")
    result = main(["--variant", "mobileclip-tiny", "--mode", "clip", "--mixed_precision", "no", "--report_to", "none",
                   "--num_workers", "0", "--train_data", f"{tmp_path / 'plain'}/*.tar", "--global_batch_size", "4",
                   "--max_steps", "3", "--warmup_steps", "1", "--save_steps", "0", "--output_dir",
                   str(tmp_path / "out")])
    assert result.step == 3 and all(torch.isfinite(torch.tensor(row["loss"])) for row in result.history)
