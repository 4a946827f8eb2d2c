"""The 38-task suite on tiny local datasets in the published layouts, with a model whose answers are known.

The colour model (eval_helpers) makes every prediction, hence every main metric, computable by hand. The
classification and retrieval fixtures are written by CLIP_benchmark's own WebDataset exporter (the layout oracle).
"""

import json

import numpy as np
import pytest
import torch
import webdataset
from clip_benchmark.datasets.builder import build_dataset
from clip_benchmark.webdataset_builder import PIL_to_bytes, convert_dataset, convert_retrieval_dataset

import datasets
from evaluation.common import make_accelerator
from evaluation.datasets_io import load_eval_dataset
from evaluation.suite import DATACOMP38, IMAGENET_SHIFT, main as suite_main, run_suite, select_tasks
from eval_helpers import ColourModel, ColourProcessor, swatch
from torch_threads import single_torch_thread  # noqa: F401 (fixture)

class _Pairs(torch.utils.data.Dataset):
    def __init__(self, pairs, classes=None, templates=None):
        self.pairs, self.classes, self.templates = pairs, classes, templates

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        image, target = self.pairs[i]
        return PIL_to_bytes("webp")(image), target


# (image colour, label): predictions 0 0 1 1 1 2 0 2 -> acc1 6/8; recalls 2/3, 1, 2/3 -> mean 7/9.
CLASSIFICATION = [("red", 0), ("red", 0), ("green", 0), ("green", 1), ("green", 1), ("blue", 2), ("red", 2), ("blue", 2)]
# Text->image R@1 4/6 (the cyan and yellow captions miss), image->text R@1 4/4 -> mean R@1 5/6.
RETRIEVAL = [("red", ["a red square", "a cyan square"]), ("green", ["green"]),
             ("blue", ["a blue thing", "a yellow thing"]), ("magenta", ["magenta"])]
# (colour, label, region, year): region accuracies 1, 1/2, 1/2 -> acc_worst_region 1/2.
FMOW = [("red", 0, 0, 0), ("green", 1, 0, 0), ("blue", 2, 1, 1), ("red", 2, 1, 1), ("green", 0, 2, 1), ("blue", 2, 2, 0)]
TEN = ["red", "green", "blue", "cyan", "magenta", "yellow", "orange", "purple", "azure", "rose"]
# 10 candidates: 'green' -> picks green (Jaccard 1); 'blue' with truth purple -> picks blue (0). 5 candidates: 'red'
# with truth {red, cyan} -> picks {red, white} (1/3). jaccard_score_10-12 = 1/2.
WINOGAVIL = [("green", TEN, ["green"]), ("blue", TEN, ["purple"]), ("red", ["red", "green", "blue", "cyan", "white"], ["red", "cyan"])]

EXPECTED = {
    "cifar10": 6 / 8,
    "vtab/pets": 7 / 9,
    "retrieval/flickr_1k_test_image_text_retrieval": 5 / 6,
    "wilds/fmow": 1 / 2,
    "misc/winogavil": 1 / 2,
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite_data")
    classes, templates = ["red", "green", "blue"], ["a photo of a {c}.", "a {c} thing."]
    pairs = _Pairs([(swatch(c), label) for c, label in CLASSIFICATION], classes, templates)
    # DataComp's folder name for one task, CLIP_benchmark's for the other; 5 per shard -> two shards.
    for folder in ("wds_cifar10_test", "wds_vtab-pets"):
        convert_dataset(pairs, "test", str(root / folder), max_count=5, verbose=False)
    convert_retrieval_dataset(_Pairs([(swatch(c), caps) for c, caps in RETRIEVAL]), "test", str(root / "wds_flickr30k"),
                              max_count=3, verbose=False)
    fmow = root / "wds_wilds-fmow_test"
    (fmow / "test").mkdir(parents=True)
    with webdataset.ShardWriter(str(fmow / "test" / "%d.tar"), maxcount=100) as sink:
        for i, (colour, label, region, year) in enumerate(FMOW):
            sink.write({"__key__": f"s{i:07d}", "webp": PIL_to_bytes("webp")(swatch(colour)), "cls": label,
                        "npy": np.array([region, year, label])})
    (fmow / "test" / "nshards.txt").write_text("1\n")
    (fmow / "classnames.txt").write_text("\n".join(classes) + "\n")
    (fmow / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    features = datasets.Features({"candidate_images": datasets.List(datasets.Image()), "cue": datasets.Value("string"),
                                  "candidates": datasets.List(datasets.Value("string")),
                                  "associations": datasets.List(datasets.Value("string"))})
    rows = {"candidate_images": [[swatch(c) for c in cands] for _, cands, _ in WINOGAVIL],
            "cue": [cue for cue, _, _ in WINOGAVIL], "candidates": [cands for _, cands, _ in WINOGAVIL],
            "associations": [assoc for _, _, assoc in WINOGAVIL]}
    (root / "winogavil").mkdir()
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / "winogavil" / "test.parquet"))
    return root


def test_suite_has_the_38_datacomp_tasks():
    assert len(DATACOMP38) == 38 and len({t.key for t in DATACOMP38}) == 38
    main_metrics = {t.key: t.main_metric for t in DATACOMP38}
    assert [k for k, m in main_metrics.items() if m == "mean_per_class_recall"] == [
        "vtab/caltech101", "fgvc_aircraft", "vtab/flowers", "vtab/pets"]
    assert main_metrics["wilds/iwildcam"] == "F1-macro_all" and main_metrics["fairness/dollar_street"] == "acc_top5_wg"
    assert set(IMAGENET_SHIFT) <= set(main_metrics)


def test_wds_mirror_reads_like_clip_benchmark(data_root):
    ours = load_eval_dataset(str(data_root / "wds_cifar10_test"), "test")
    theirs = build_dataset("wds/cifar10", root=str(data_root / "wds_cifar10_test"), split="test", transform=None)
    samples = list(theirs)
    assert ours.wds.classnames == theirs.classes and ours.wds.templates == theirs.templates
    assert ours.dataset["cls"] == [int(label) for _, label in samples]
    assert all(np.array_equal(np.asarray(ours.dataset[i]["webp"]), np.asarray(img)) for i, (img, _) in enumerate(samples))
    retrieval = load_eval_dataset(str(data_root / "wds_flickr30k"), "test")
    theirs = build_dataset("wds/flickr30k", root=str(data_root / "wds_flickr30k"), split="test", transform=None,
                           task="zeroshot_retrieval")
    assert retrieval.wds.dataset_type == "retrieval"
    assert [r.splitlines() for r in retrieval.dataset["txt"]] == [caps for _, caps in theirs]


def test_suite_reproduces_hand_computed_main_metrics_and_reports_missing(data_root, tmp_path):
    accelerator = make_accelerator(cpu=True)
    out = tmp_path / "results"
    report = run_suite(ColourModel(), ColourProcessor(), "colour-model", DATACOMP38, accelerator, out, data_root,
                       use_hub=False, batch_size=3)
    assert report.scores == pytest.approx(EXPECTED)
    assert report.average == pytest.approx(np.mean(list(EXPECTED.values())))
    assert set(report.missing) == {t.key for t in DATACOMP38} - set(EXPECTED)
    assert report.imagenet_shift is None
    table = report.table()
    assert "MISSING 33 of 38 tasks" in table and "average over 5 of 38 tasks" in table
    record = json.loads((out / "cifar10.json").read_text())
    assert record["task"] == "zeroshot_classification" and record["metrics"]["acc1"] == pytest.approx(0.75)
    assert record["main_metric_name"] == "acc1" and record["dataset"] == "cifar10"

    class Exploding(ColourModel):
        def encode_image(self, pixel_values):
            raise AssertionError("a resumed run must not re-evaluate finished tasks")

    resumed = run_suite(Exploding(), ColourProcessor(), "colour-model", DATACOMP38, accelerator, out, data_root, use_hub=False)
    assert resumed.scores == pytest.approx(EXPECTED)


def test_suite_hub_fallback_offline_reports_why(data_root, tmp_path):
    tasks = select_tasks("datacomp38", ["cifar10", "imagenet1k", "retrieval/mscoco_2014_5k_test_image_text_retrieval"])
    report = run_suite(ColourModel(), ColourProcessor(), "colour-model", tasks, make_accelerator(cpu=True),
                       tmp_path / "out", data_root, use_hub=True)
    assert report.scores == pytest.approx({"cifar10": 0.75})
    assert "djghosh/wds_imagenet1k_test" in report.missing["imagenet1k"]
    assert "nlphuji/mscoco_2014_5k_test_image_text_retrieval" in report.missing["retrieval/mscoco_2014_5k_test_image_text_retrieval"]


def test_suite_cli_with_a_saved_model(data_root, tiny_model_dir, tmp_path, capsys):
    report = suite_main(["--model", str(tiny_model_dir), "--data-root", str(data_root), "--tasks", "cifar10", "vtab/pets",
                         "--no-hub", "--output-dir", str(tmp_path / "cli"), "--cpu", "--num-workers", "0"])
    assert set(report.scores) == {"cifar10", "vtab/pets"} and not report.missing
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["average"] == pytest.approx(report.average) and summary["complete"]
    assert "Stanford" not in capsys.readouterr().out  # only the selected tasks are listed
    with pytest.raises(ValueError, match="Unknown task"):
        select_tasks("datacomp38", ["not-a-task"])


def test_hub_mirror_reads_from_a_prepopulated_hub_cache_like_its_local_folder(data_root, tmp_path, monkeypatch):
    """A CLIP_benchmark mirror by Hub id (`clip-benchmark/wds_<task>`), offline: metadata and shards resolve through a
    Hugging Face cache in the real layout, and the rows equal those of the same mirror as a local folder."""
    import huggingface_hub

    from hub_helpers import write_cached_repo

    local = data_root / "wds_vtab-pets"
    files = {str(path.relative_to(local)): path for path in local.rglob("*") if path.is_file()}
    absent = tuple(name for name in ("dataset_type.txt", "classnames.txt", "zeroshot_classification_templates.txt")
                   if name not in files)
    write_cached_repo(tmp_path / "hf_cache", "clip-benchmark/wds_vtab-pets", files, repo_type="dataset", absent=absent)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    assert huggingface_hub.constants.HF_HUB_OFFLINE
    by_id, by_folder = load_eval_dataset("clip-benchmark/wds_vtab-pets"), load_eval_dataset(str(local))
    assert by_id.wds == by_folder.wds and by_id.default_columns == by_folder.default_columns
    assert by_id.dataset.remove_columns("__url__").to_dict() == by_folder.dataset.remove_columns("__url__").to_dict()
    assert by_id.dataset["cls"] == [label for _, label in CLASSIFICATION]
