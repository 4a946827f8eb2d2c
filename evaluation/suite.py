"""The 38-task DataComp evaluation suite (the "Avg 38" of the MobileCLIP papers).

    python -m evaluation.suite --model DIR_OR_ID --suite datacomp38 [--data-root DIR] [--tasks KEY ...] \
        [--no-hub] [--output-dir DIR]

Each task is looked up under `--data-root` (folder names `wds_<task>_test` as DataComp downloads them, or
`wds_<task>` as CLIP_benchmark names its mirrors, or the Hub dataset's name for the retrieval and WinoGAViL tasks),
then on the Hub (`djghosh/wds_<task>_test`, `clip-benchmark/wds_<task>`, `nlphuji/...`) unless `--no-hub`. Each
task's main metric is computed as DataComp / the MobileCLIP papers do (top-1 accuracy; mean per-class recall for
Caltech-101, FGVC Aircraft, Flowers, Pets; mean R@1 for Flickr and COCO retrieval; `jaccard_score_10-12`
WinoGAViL; `F1-macro_all` iWildCam; `acc_worst_region` FMoW; `acc_top5_wg` Dollar Street; `acc_wg` GeoDE).

One result file per task is written to `--output-dir` (CLIP_benchmark's output shape, plus `main_metric`); a rerun
skips tasks whose file exists, so an interrupted run resumes where it stopped. The table ends with the average over
the tasks found and lists the missing ones: an average over fewer than 38 tasks is not the paper's Avg 38.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from datasets.exceptions import DatasetNotFoundError
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from modeling_mobileclip.cli import run_main

from .common import (
    EvaluationConfig, EvaluationInputError, IndexedRows, build_dataloader, encode_images, encode_texts,
    evaluation_parser, load_evaluated_model, make_accelerator, model_name, preprocess_images, progress,
    results_record, tokenize, write_json
)
from .datasets_io import EvalDataset, load_eval_dataset, require_columns
from .retrieval import evaluate_retrieval
from .task_metrics import jaccard_index, wilds_metrics, winogavil_metrics, winogavil_prompt
from .zero_shot import evaluate_zero_shot


@dataclass(frozen=True)
class SuiteTask:
    """One benchmark task: its DataComp key, display name, kind, main metric and where its data may live."""

    key: str
    name: str
    kind: str  # "classification", "retrieval", "wilds" (classification + npy metadata) or "winogavil"
    main_metric: str
    local_names: tuple[str, ...]
    hub_ids: tuple[str, ...]

    @property
    def result_file(self) -> str:
        return f"{self.key.replace('/', '-')}.json"


def _wds_task(key: str, name: str, main_metric: str = "acc1", kind: str = "classification") -> SuiteTask:
    # DataComp drops the "fairness/" prefix in folder names and turns "/" into "-" (`eval_utils/wds_eval.py`).
    slug = key.removeprefix("fairness/").replace("/", "-")
    return SuiteTask(key, name, kind, main_metric, (f"wds_{slug}_test", f"wds_{slug}"),
                     (f"djghosh/wds_{slug}_test", f"clip-benchmark/wds_{slug}"))


def _hf_task(key: str, name: str, kind: str, main_metric: str, hub_name: str, cb_name: str | None = None) -> SuiteTask:
    local = (hub_name, f"wds_{cb_name}") if cb_name else (hub_name,)
    hub = (f"nlphuji/{hub_name}", f"clip-benchmark/wds_{cb_name}") if cb_name else (f"nlphuji/{hub_name}",)
    return SuiteTask(key, name, kind, main_metric, local, hub)


# DataComp's 38 tasks (mlfoundations/datacomp `tasklist.yml`; FairFace and UTKFace are evaluated there but are not
# part of the average). Mean per-class recall where `tasklist.yml` sets `main_metric`.
DATACOMP38: tuple[SuiteTask, ...] = (
    _wds_task("imagenet1k", "ImageNet 1k"),
    _wds_task("imagenet_sketch", "ImageNet Sketch"),
    _wds_task("imagenetv2", "ImageNet v2"),
    _wds_task("imagenet-a", "ImageNet-A"),
    _wds_task("imagenet-o", "ImageNet-O"),
    _wds_task("imagenet-r", "ImageNet-R"),
    _wds_task("objectnet", "ObjectNet"),
    _wds_task("vtab/caltech101", "Caltech-101", "mean_per_class_recall"),
    _wds_task("cifar10", "CIFAR-10"),
    _wds_task("vtab/cifar100", "CIFAR-100"),
    _wds_task("vtab/clevr_count_all", "CLEVR Counts"),
    _wds_task("vtab/clevr_closest_object_distance", "CLEVR Distance"),
    _wds_task("country211", "Country211"),
    _wds_task("vtab/dtd", "Describable Textures"),
    _wds_task("vtab/eurosat", "EuroSAT"),
    _wds_task("fgvc_aircraft", "FGVC Aircraft", "mean_per_class_recall"),
    _wds_task("food101", "Food-101"),
    _wds_task("gtsrb", "GTSRB"),
    _wds_task("vtab/kitti_closest_vehicle_distance", "KITTI Vehicle Distance"),
    _wds_task("mnist", "MNIST"),
    _wds_task("vtab/flowers", "Oxford Flowers-102", "mean_per_class_recall"),
    _wds_task("vtab/pets", "Oxford-IIIT Pet", "mean_per_class_recall"),
    _wds_task("voc2007", "Pascal VOC 2007"),
    _wds_task("vtab/pcam", "PatchCamelyon"),
    _wds_task("renderedsst2", "Rendered SST2"),
    _wds_task("vtab/resisc45", "RESISC45"),
    _wds_task("cars", "Stanford Cars"),
    _wds_task("stl10", "STL-10"),
    _wds_task("sun397", "SUN397"),
    _wds_task("vtab/svhn", "SVHN"),
    _hf_task("retrieval/flickr_1k_test_image_text_retrieval", "Flickr30k (1k test)", "retrieval", "mean_recall@1",
             "flickr_1k_test_image_text_retrieval", "flickr30k"),
    _hf_task("retrieval/mscoco_2014_5k_test_image_text_retrieval", "MSCOCO (5k test)", "retrieval", "mean_recall@1",
             "mscoco_2014_5k_test_image_text_retrieval", "mscoco_captions"),
    _hf_task("misc/winogavil", "WinoGAViL", "winogavil", "jaccard_score_10-12", "winogavil"),
    _wds_task("wilds/iwildcam", "iWildCam", "F1-macro_all", "wilds"),
    _wds_task("wilds/camelyon17", "Camelyon17", "acc1", "wilds"),
    _wds_task("wilds/fmow", "FMoW", "acc_worst_region", "wilds"),
    _wds_task("fairness/dollar_street", "Dollar Street", "acc_top5_wg", "wilds"),
    _wds_task("fairness/geode", "GeoDE", "acc_wg", "wilds"),
)
SUITES = {"datacomp38": DATACOMP38}
# The "IN-shift" column of the MobileCLIP papers: mean top-1 over the ImageNet distribution shifts.
IMAGENET_SHIFT = ("imagenetv2", "imagenet-a", "imagenet-o", "imagenet-r", "objectnet", "imagenet_sketch")


def _hub_unavailable_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "this Hub source cannot be had" (offline, absent, no access), not "the data is bad"."""
    return (OSError, HfHubHTTPError, OfflineModeIsEnabled, DatasetNotFoundError, EvaluationInputError)


def find_task_data(task: SuiteTask, data_root: str | Path | None, use_hub: bool) -> tuple[EvalDataset | None, str]:
    """Loads the task's test split from the first source found; returns (dataset or None, source or why missing)."""
    if data_root is not None:
        for name in task.local_names:
            folder = Path(data_root) / name
            if folder.is_dir():
                return load_eval_dataset(str(folder), "test"), str(folder)
    if not use_hub:
        return None, f"not under {data_root}" if data_root else "no --data-root and --no-hub"
    reasons = []
    for repo_id in task.hub_ids:
        try:
            return load_eval_dataset(repo_id, "test"), repo_id
        except _hub_unavailable_errors() as error:
            reasons.append(f"{repo_id}: {type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}")
    where = f"not under {data_root}; " if data_root else ""
    return None, where + "; ".join(reasons)


class _WinoGAViLInstance:
    """Collates one WinoGAViL instance: candidate images, the cue prompt's tokens and which candidates are right."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, rows: list[tuple[int, dict]]) -> dict[str, torch.Tensor]:
        (index, row), = rows
        if not row["candidate_images"]:
            raise EvaluationInputError(f"WinoGAViL row {index} has no candidate images.")
        return {
            "pixel_values": preprocess_images(self.processor, row["candidate_images"]),
            "input_ids": tokenize(self.processor, [winogavil_prompt(row["cue"])]),
            "associated": torch.tensor(np.isin(row["candidates"], row["associations"])),
        }


@torch.no_grad()
def evaluate_winogavil(model, processor, loaded: EvalDataset, accelerator: Accelerator, num_workers: int = 0) -> dict:
    """Selects the k candidates most similar to the cue (k = number of true associations), Jaccard vs the truth."""
    columns = ["candidate_images", "cue", "candidates", "associations"]
    require_columns(loaded, **{c: c for c in columns})
    loader = build_dataloader(IndexedRows(loaded.dataset, columns), _WinoGAViLInstance(processor), 1, num_workers, accelerator)
    scores, counts = [], []
    for batch in progress(loader, accelerator, "WinoGAViL"):
        similarity = (encode_texts(model, batch["input_ids"]) @ encode_images(model, batch["pixel_values"]).t())[0]
        associated = batch["associated"].cpu().numpy()
        chosen = np.argsort(similarity.cpu().numpy())[-int(associated.sum()):] if associated.any() else []
        predicted = np.isin(np.arange(len(associated)), chosen)
        instance = torch.tensor([[jaccard_index(associated, predicted), len(associated)]], device=accelerator.device)
        gathered = accelerator.gather_for_metrics(instance).cpu().numpy()
        scores.extend(gathered[:, 0])
        counts.extend(gathered[:, 1])
    return winogavil_metrics(np.array(scores), np.array(counts))


def evaluate_task(task: SuiteTask, loaded: EvalDataset, model, processor, accelerator: Accelerator,
                  batch_size: int, num_workers: int) -> dict:
    """All metrics of one task, plus `main_metric` (the value that enters the average)."""
    if task.kind == "retrieval":
        metrics = evaluate_retrieval(model, processor, loaded, accelerator, batch_size=batch_size, num_workers=num_workers).metrics
    elif task.kind == "winogavil":
        metrics = evaluate_winogavil(model, processor, loaded, accelerator, num_workers)
    else:
        extra = ("npy",) if task.kind == "wilds" and task.key != "wilds/camelyon17" else ()
        result = evaluate_zero_shot(model, processor, loaded, accelerator, batch_size=batch_size,
                                    num_workers=num_workers, extra_columns=extra)
        metrics = dict(result.metrics)
        if extra:
            metrics.update(wilds_metrics(task.key, result.logits, result.targets, result.extras["npy"]))
    if task.main_metric not in metrics:
        raise EvaluationInputError(f"Task {task.key} produced no {task.main_metric} (metrics: {', '.join(metrics)}).")
    return {**metrics, "main_metric": metrics[task.main_metric]}


@dataclass
class SuiteReport:
    """Main metric per evaluated task, the tasks not found (with why) and the averages."""

    scores: dict[str, float]
    missing: dict[str, str]
    tasks: tuple[SuiteTask, ...]

    @property
    def average(self) -> float:
        return float(np.mean(list(self.scores.values()))) if self.scores else float("nan")

    @property
    def imagenet_shift(self) -> float | None:
        values = [self.scores[k] for k in IMAGENET_SHIFT if k in self.scores]
        return float(np.mean(values)) if len(values) == len(IMAGENET_SHIFT) else None

    def table(self) -> str:
        lines = [f"{'task':<28} {'main metric':<22} {'score':>7}", "-" * 59]
        for task in self.tasks:
            score = f"{100 * self.scores[task.key]:7.2f}" if task.key in self.scores else "missing"
            lines.append(f"{task.name:<28} {task.main_metric:<22} {score:>7}")
        lines.append("-" * 59)
        lines.append(f"{f'average over {len(self.scores)} of {len(self.tasks)} tasks':<51} {100 * self.average:7.2f}")
        if self.imagenet_shift is not None:
            lines.append(f"{'ImageNet distribution shift (IN-shift)':<51} {100 * self.imagenet_shift:7.2f}")
        if self.missing:
            lines.append(f"MISSING {len(self.missing)} of {len(self.tasks)} tasks; the average above is NOT the full "
                         f"suite's (Avg {len(self.tasks)}):")
            lines.extend(f"  {key}: {why}" for key, why in self.missing.items())
        return "\n".join(lines)

    def summary(self, model_id: str, suite: str) -> dict:
        return {"model": model_id, "suite": suite, "average": self.average, "num_tasks": len(self.scores),
                "num_tasks_in_suite": len(self.tasks), "complete": not self.missing, "imagenet_shift": self.imagenet_shift,
                "main_metrics": self.scores, "missing": self.missing}


def run_suite(
    model, processor, model_id: str, tasks: tuple[SuiteTask, ...], accelerator: Accelerator, output_dir: str | Path,
    data_root: str | Path | None = None, use_hub: bool = True, batch_size: int = 64, num_workers: int = 0,
) -> SuiteReport:
    """Evaluates every task that can be found, resuming from the result files already in `output_dir`."""
    output_dir = Path(output_dir)
    scores, missing = {}, {}
    for task in progress(tasks, accelerator, "tasks"):
        result_file = output_dir / task.result_file
        if result_file.is_file():
            record = json.loads(result_file.read_text())
            if record.get("pretrained") != model_id:
                raise EvaluationInputError(f"{result_file} holds results of {record.get('pretrained')!r}, not {model_id!r}: "
                                           "use another --output-dir.")
            scores[task.key] = record["metrics"]["main_metric"]
            continue
        with accelerator.main_process_first():
            loaded, source = find_task_data(task, data_root, use_hub)
        if loaded is None:
            missing[task.key] = source
            continue
        metrics = evaluate_task(task, loaded, model, processor, accelerator, batch_size, num_workers)
        scores[task.key] = metrics["main_metric"]
        if accelerator.is_main_process:
            kind = "zeroshot_retrieval" if task.kind == "retrieval" else "zeroshot_classification"
            record = results_record(task.key, model_name(model, model_id), model_id, kind, metrics,
                                    main_metric_name=task.main_metric, source=source)
            write_json(result_file, record)
        accelerator.wait_for_everyone()
    return SuiteReport(scores, missing, tasks)


def select_tasks(suite: str, keys: list[str] | None) -> tuple[SuiteTask, ...]:
    """The suite's tasks, or the named subset (by key, e.g. `vtab/pets`, or display name)."""
    tasks = SUITES[suite]
    if not keys:
        return tasks
    by_name = {t.key: t for t in tasks} | {t.name: t for t in tasks}
    unknown = [k for k in keys if k not in by_name]
    if unknown:
        raise EvaluationInputError(f"Unknown task(s) {', '.join(unknown)}; {suite} has: {', '.join(t.key for t in tasks)}.")
    return tuple(dict.fromkeys(by_name[k] for k in keys))


@dataclass(kw_only=True)
class SuiteConfig(EvaluationConfig):
    """One field per command-line option, with the same defaults."""

    suite: str = "datacomp38"
    data_root: str | None = None
    tasks: list[str] | None = None
    """Task keys or names to evaluate; None: all of the suite's."""
    no_hub: bool = False
    output_dir: str | None = None
    """Per-task result files; None: eval_results/<model>/<suite>."""


def suite_evaluation(settings: SuiteConfig) -> SuiteReport:
    """Evaluate `settings.model` on the suite's tasks (resuming from the result files already written), print the
    table and write the summary; return the report."""
    tasks = select_tasks(settings.suite, settings.tasks)
    accelerator = make_accelerator(settings.cpu)
    output_dir = Path(settings.output_dir or Path("eval_results") / Path(settings.model.rstrip("/")).name
                      / settings.suite)
    model, processor = load_evaluated_model(settings.model, accelerator, settings.trust_remote_code)
    report = run_suite(model, processor, settings.model, tasks, accelerator, output_dir, settings.data_root,
                       not settings.no_hub, settings.batch_size, settings.num_workers)
    if accelerator.is_main_process:
        print(report.table())
        summary = write_json(output_dir / "summary.json", report.summary(settings.model, settings.suite))
        print(f"Per-task results and {summary.name} in {output_dir}")
    accelerator.wait_for_everyone()
    return report


def parse_args(argv: list[str] | None = None) -> SuiteConfig:
    parser = evaluation_parser(__doc__)
    parser.add_argument("--suite", default="datacomp38", choices=sorted(SUITES))
    parser.add_argument("--data-root", default=None, help="folder holding the task folders (wds_<task>_test, ...)")
    parser.add_argument("--tasks", nargs="+", default=None, help="evaluate only these task keys (default: all)")
    parser.add_argument("--no-hub", action="store_true", help="only look under --data-root")
    parser.add_argument("--output-dir", default=None, help="per-task result files (default: eval_results/<model>/<suite>)")
    return SuiteConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> SuiteReport:
    """Command-line entry point; returns the report."""
    return suite_evaluation(parse_args(argv))


if __name__ == "__main__":
    run_main(main)
