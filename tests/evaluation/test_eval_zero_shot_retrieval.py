"""Zero-shot and retrieval commands: CLIP_benchmark parity, 2-process CPU runs, bad input."""

import builtins
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from clip_benchmark.datasets.builder import image_captions_collate_fn
from clip_benchmark.metrics import zeroshot_classification as cb_zsc
from clip_benchmark.metrics import zeroshot_retrieval as cb_zsr
from transformers import AutoModel, AutoProcessor

import datasets
from conftest import REPO_ROOT, free_port, subprocess_env
from evaluation import retrieval, zero_shot
from evaluation.common import EvaluationInputError
from torch_threads import single_torch_thread  # noqa: F401 (fixture)

TEMPLATES = ["an emoji of {c}.", "a picture of {c}."]


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory, tiny_model_dir, emoji_subset, emoji_dir):
    folder = tmp_path_factory.mktemp("cli")
    templates = folder / "templates.json"
    templates.write_text(json.dumps(TEMPLATES))
    common = ["--model", str(tiny_model_dir), "--dataset", str(emoji_subset), "--batch-size", "4", "--num-workers", "0", "--cpu"]
    zs_args = common + ["--label-column", "category", "--classnames", str(emoji_dir / "classnames.json"),
                        "--classnames-key", "category_prompt_names", "--templates", str(templates)]
    rt_args = common + ["--caption-column", "captions"]
    return folder, zs_args, rt_args


@pytest.fixture(scope="module")
def one_process_results(cli_inputs):
    folder, zs_args, rt_args = cli_inputs
    zero_shot.main(zs_args + ["--output", str(folder / "zs1.json")])
    retrieval.main(rt_args + ["--output", str(folder / "rt1.json")])
    return json.loads((folder / "zs1.json").read_text()), json.loads((folder / "rt1.json").read_text())


class _EmojiImages(torch.utils.data.Dataset):
    """The emoji subset as CLIP_benchmark expects it: (pixel values, target) pairs, preprocessed by our processor."""

    def __init__(self, path, processor, target):
        self.rows = datasets.load_dataset("parquet", data_files={"test": str(path)}, split="test")
        self.processor, self.target = processor, target

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        return self.processor(images=[row["image"].convert("RGB")], return_tensors="pt")["pixel_values"][0], self.target(row)


def test_zero_shot_and_retrieval_equal_clip_benchmark(one_process_results, tiny_model_dir, emoji_subset, emoji_dir, monkeypatch):
    zs_record, rt_record = one_process_results
    model = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(tiny_model_dir, trust_remote_code=True)

    def tokenizer(texts):
        return processor(text=texts, return_tensors="pt")["input_ids"]

    names = json.loads((emoji_dir / "classnames.json").read_text())["category_prompt_names"]
    labels = list(names)
    images = _EmojiImages(emoji_subset, processor, lambda row: labels.index(row["category"]))
    images.classes = list(names.values())
    # CLIP_benchmark 1.6.2 calls float() on a 1-element array (rejected by numpy 2): shadow `float` in that module.
    monkeypatch.setattr(cb_zsc, "float", lambda x: builtins.float(np.asarray(x).reshape(-1)[0]) if hasattr(x, "shape")
                        else builtins.float(x), raising=False)
    expected = cb_zsc.evaluate(model, torch.utils.data.DataLoader(images, batch_size=4), tokenizer, images.classes,
                               TEMPLATES, "cpu", amp=False)
    assert zs_record["task"] == "zeroshot_classification" and zs_record["model"] == "mobileclip-tiny"
    for key in ("acc1", "acc5", "mean_per_class_recall"):
        assert zs_record["metrics"][key] == pytest.approx(expected[key], abs=1e-6), key

    pairs = _EmojiImages(emoji_subset, processor, lambda row: row["captions"])
    expected = cb_zsr.evaluate(model, torch.utils.data.DataLoader(pairs, batch_size=4, collate_fn=image_captions_collate_fn),
                               tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    assert expected["text_retrieval_recall@10"] > expected["text_retrieval_recall@1"]  # rankings actually differ by k
    for key, value in expected.items():
        assert rt_record["metrics"][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.slow
def test_two_cpu_processes_give_the_same_numbers(cli_inputs, one_process_results):
    folder, zs_args, rt_args = cli_inputs
    driver = folder / "two_process_driver.py"
    driver.write_text(
        "from accelerate import PartialState\nfrom evaluation import retrieval, zero_shot\n"
        f"zero_shot.main({zs_args + ['--output', str(folder / 'zs2.json')]!r})\n"
        f"retrieval.main({rt_args + ['--output', str(folder / 'rt2.json')]!r})\n"
        # Guard against the silent failure mode: two independent single-process runs (hf_ecosystem.md section 5).
        # One file per rank: the two processes' stdout lines can interleave.
        "state = PartialState()\n"
        f"(__import__('pathlib').Path({str(folder)!r}) / f'rank{{state.process_index}}.txt')"
        ".write_text(f'{state.distributed_type} {state.num_processes}')\n"
    )
    env = subprocess_env(ACCELERATE_USE_CPU="true")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(driver)]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [(folder / f"rank{index}.txt").read_text() for index in range(2)]
    assert ranks == ["DistributedType.MULTI_CPU 2"] * 2, (ranks, result.stdout[-2000:])
    zs_record, rt_record = one_process_results
    for one, two in ((zs_record, folder / "zs2.json"), (rt_record, folder / "rt2.json")):
        two = json.loads(two.read_text())
        assert two["metrics"].keys() == one["metrics"].keys()
        for key, value in one["metrics"].items():
            assert two["metrics"][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


def _parquet(tmp_path, rows: dict, features=None) -> str:
    path = tmp_path / "test.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return str(path)


def test_bad_input_gives_clear_errors(tmp_path, tiny_model_dir, emoji_subset):
    model = ["--model", str(tiny_model_dir), "--cpu", "--num-workers", "0"]
    with pytest.raises(EvaluationInputError, match=r"has no column 'label' for the label .*Pass --label-column"):
        zero_shot.main(model + ["--dataset", str(emoji_subset), "--classnames", "imagenet1k"])
    with pytest.raises(EvaluationInputError, match=r"has no column 'caption' for the caption .*Pass --caption-column"):
        retrieval.main(model + ["--dataset", str(emoji_subset)])

    images = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    from PIL import Image
    dataset = _parquet(tmp_path, {"image": [Image.new("RGB", (4, 4))] * 3, "label": [0, 4, 1]}, images)
    short = tmp_path / "three.json"
    short.write_text(json.dumps(["cat", "dog", "bird"]))
    with pytest.raises(EvaluationInputError, match=r"Row 1 .* label 4 .* outside the 3 class names"):
        zero_shot.main(model + ["--dataset", dataset, "--classnames", str(short)])
    no_placeholder = tmp_path / "templates.json"
    no_placeholder.write_text(json.dumps(["a photo of a thing."]))
    with pytest.raises(EvaluationInputError, match=r"has no '\{c\}' placeholder"):
        zero_shot.main(model + ["--dataset", dataset, "--classnames", "imagenet1k", "--templates", str(no_placeholder)])
    with pytest.raises(EvaluationInputError, match=r"Row 0 .* label 'Smileys & Emotion' in column 'category' is not one of the 3 class labels"):
        zero_shot.main(model + ["--dataset", str(emoji_subset), "--label-column", "category", "--classnames", str(short)])

    empty = tmp_path / "empty"
    empty.mkdir()
    datasets.Dataset.from_dict({"image": [], "label": []}, features=images).to_parquet(str(empty / "test.parquet"))
    with pytest.raises(EvaluationInputError, match=r"Split 'test' of .* is empty"):
        zero_shot.main(model + ["--dataset", str(empty), "--classnames", "imagenet1k"])
    with pytest.raises(EvaluationInputError, match=r"Row 0: column 'caption' has an empty caption"):
        retrieval.main(model + ["--dataset", _parquet(tmp_path, {"image": [Image.new("RGB", (4, 4))], "caption": [[]]},
                                                      datasets.Features({"image": datasets.Image(),
                                                                         "caption": datasets.List(datasets.Value("string"))}))])
