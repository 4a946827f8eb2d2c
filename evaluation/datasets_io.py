"""Loading evaluation data: `load_dataset` specs, CLIP_benchmark WebDataset mirrors, class names and templates.

CLIP_benchmark's WebDataset mirrors (Hub repos `clip-benchmark/wds_<task>` and DataComp's `djghosh/wds_<task>_test`,
written by `clip_benchmark.webdataset_builder`, read by `clip_benchmark.datasets.builder.build_wds_dataset`) look like::

    <root>/
        test/nshards.txt               number of shards N
        test/0.tar ... test/{N-1}.tar  samples: image as `webp` (or `png`/`jpg`/`jpeg`), label as `cls`
                                       (multi-label: `npy` multi-hot; retrieval: `txt`, one caption per line;
                                       WILDS / fairness tasks add an `npy` metadata row)
        classnames.txt                 one class name per line (index = label)
        zeroshot_classification_templates.txt   one template per line, `{c}` = class name
        dataset_type.txt               optional: `retrieval` or `multilabel` (default classification)

They are read here by the project's tar reader (through `dataset_scripts.dataset_specs.open_dataset`, into the
columns `datasets`' webdataset builder gives), shards in numeric order; a Hub mirror's shards through the Hub cache.
"""

from __future__ import annotations

import argparse
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import datasets
from accelerate import Accelerator
from huggingface_hub import _CACHED_NO_EXIST, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

from dataset_scripts.dataset_specs import FILE_BUILDERS, IMAGE_EXTENSIONS, file_builder, open_dataset
from .common import DATA_DIR, EvaluationConfig, EvaluationInputError


@dataclass
class WdsInfo:
    """What a CLIP_benchmark WebDataset mirror declares next to its shards."""

    dataset_type: str = "classification"
    classnames: list[str] | None = None
    templates: list[str] | None = None


@dataclass
class EvalDataset:
    """A loaded split plus what its source declares (WebDataset mirrors carry class names and templates)."""

    dataset: datasets.Dataset
    name: str
    wds: WdsInfo | None = None
    default_columns: dict[str, str] = field(default_factory=dict)


def load_eval_dataset(spec: str, split: str = "test", config: str | None = None) -> EvalDataset:
    """Loads one split of `spec`: a WebDataset mirror (local folder or Hub id), a data file, or anything
    `datasets.load_dataset` reads (a local folder, a Hub id, with an optional `config`)."""
    path = Path(spec)
    if path.is_dir() and _is_wds_folder(path, split):
        return _load_local_wds(path, split)
    if path.is_file() and file_builder(spec) is None:
        raise EvaluationInputError(f"Cannot read {spec}: unknown file type (known: {', '.join(FILE_BUILDERS)}).")
    if not path.exists() and re.fullmatch(r"[\w.-]+/wds_[\w.-]+", spec):
        return _load_hub_wds(spec, split)
    try:
        dataset = open_dataset(spec, split, config)
    except ValueError as error:
        if "corresponds to no data" in str(error):  # how `datasets` reports a split without rows
            raise EvaluationInputError(f"Split {split!r} of {spec} is empty: nothing to evaluate.") from error
        if "Unknown split" in str(error):
            raise EvaluationInputError(f"{spec} has no split {split!r} ({error}). Pass --split.") from error
        raise
    return _checked(EvalDataset(dataset, spec), split)


@dataclass(kw_only=True)
class DatasetEvaluationConfig(EvaluationConfig):
    """`EvaluationConfig` plus `add_dataset_arguments`' options, an image column and the result file: the settings the
    zero-shot and retrieval commands share."""

    dataset: str
    config: str | None = None
    """The dataset's configuration name."""
    split: str = "test"
    image_column: str | None = None
    output: str | None = None


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """`--dataset`, `--config` and `--split`: the one dataset the zero-shot and retrieval commands evaluate."""
    parser.add_argument("--dataset", required=True, help="load_dataset spec, data file or WebDataset mirror")
    parser.add_argument("--config", default=None, help="dataset configuration name (e.g. 'twitter' for the emoji set)")
    parser.add_argument("--split", default="test")


def load_eval_dataset_once(accelerator: Accelerator, spec: str, split: str = "test",
                           config: str | None = None) -> EvalDataset:
    """`load_eval_dataset` under several processes: the main process loads first, filling the `datasets` cache that
    the other processes then read, instead of all of them downloading and preparing it at once."""
    with accelerator.main_process_first():
        return load_eval_dataset(spec, split, config)


def _is_wds_folder(root: Path, split: str) -> bool:
    return (root / split / "nshards.txt").is_file() or any((root / split).glob("*.tar"))


def _shard_count(text: str, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise EvaluationInputError(f"{where} must hold the number of shards, got {text.strip()[:40]!r}.") from None


def _wds_info(read_text) -> WdsInfo:
    """Reads the metadata files through `read_text(name) -> str | None` (None: file absent)."""
    info = WdsInfo()
    dataset_type = read_text("dataset_type.txt")
    if dataset_type is not None:
        info.dataset_type = dataset_type.strip().lower() or "classification"
    classnames = read_text("classnames.txt")
    if classnames is not None:
        info.classnames = [line.strip() for line in classnames.splitlines()]
    templates = read_text("zeroshot_classification_templates.txt")
    if templates is not None:
        info.templates = [line.strip() for line in templates.splitlines()]
    return info


def _load_local_wds(root: Path, split: str) -> EvalDataset:
    nshards_file = root / split / "nshards.txt"
    if nshards_file.is_file():
        count = _shard_count(nshards_file.read_text(), str(nshards_file))
        shards = [root / split / f"{i}.tar" for i in range(count)]
        absent = [str(s) for s in shards if not s.is_file()]
        if absent:
            raise EvaluationInputError(f"{nshards_file} declares {count} shards but {', '.join(absent[:3])} is missing.")
    else:
        # No nshards.txt: take every tar, numeric names in numeric order (2.tar before 10.tar).
        shards = sorted((root / split).glob("*.tar"), key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem))

    def read_text(name):
        file = root / name
        return file.read_text() if file.is_file() else None

    dataset = open_dataset([str(s) for s in shards], split)
    return _checked(_wds_eval_dataset(dataset, str(root), _wds_info(read_text)), split)


def _hub_file(repo_id: str, name: str) -> str | None:
    """The local path of a mirror's file (downloaded into the Hub cache if needed); None when the repo lacks it."""
    try:
        return hf_hub_download(repo_id, name, repo_type="dataset")
    except RemoteEntryNotFoundError:
        return None
    except LocalEntryNotFoundError as error:
        # Offline, the cache still knows the files an earlier download found absent (its `.no_exist` records).
        if try_to_load_from_cache(repo_id, name, repo_type="dataset") is _CACHED_NO_EXIST:
            return None
        raise EvaluationInputError(
            f"{repo_id}/{name} is not in the local cache and the Hub cannot be reached (offline?); download the "
            "mirror or pass its local folder."
        ) from error


def _load_hub_wds(repo_id: str, split: str) -> EvalDataset:
    def read_text(name):
        path = _hub_file(repo_id, name)
        return None if path is None else Path(path).read_text()

    nshards = read_text(f"{split}/nshards.txt")
    if nshards is None:
        raise EvaluationInputError(f"Hub dataset {repo_id} has no {split}/nshards.txt: not a CLIP_benchmark mirror or no split {split!r}.")
    count = _shard_count(nshards, f"{repo_id}/{split}/nshards.txt")
    # Through the Hub cache, as the metadata files: a mirror downloaded once is read offline from then on.
    shards = [_hub_file(repo_id, f"{split}/{i}.tar") for i in range(count)]
    if None in shards:
        raise EvaluationInputError(f"{repo_id}/{split}/nshards.txt declares {count} shards but "
                                   f"{split}/{shards.index(None)}.tar is missing.")
    dataset = open_dataset(shards, split)
    return _checked(_wds_eval_dataset(dataset, repo_id, _wds_info(read_text)), split)


def _wds_eval_dataset(dataset: datasets.Dataset, name: str, info: WdsInfo) -> EvalDataset:
    columns = {}
    image_columns = [c for c in IMAGE_EXTENSIONS if c in dataset.column_names]
    if image_columns:
        columns["image"] = image_columns[0]
    if info.dataset_type == "retrieval":
        columns["caption"] = "txt"
    else:
        columns["label"] = "npy" if info.dataset_type == "multilabel" else "cls"
    return EvalDataset(dataset, name, info, columns)


def _checked(loaded: EvalDataset, split: str) -> EvalDataset:
    if len(loaded.dataset) == 0:
        raise EvaluationInputError(f"Split {split!r} of {loaded.name} is empty: nothing to evaluate.")
    return loaded


def require_columns(loaded: EvalDataset, **roles: str) -> None:
    """Checks that each `role=column` exists; the error names the dataset, the role and the columns it has."""
    available = loaded.dataset.column_names
    for role, column in roles.items():
        if column not in available:
            raise EvaluationInputError(
                f"{loaded.name} has no column {column!r} for the {role.replace('_', ' ')} "
                f"(columns: {', '.join(available)}). Pass --{role.replace('_', '-')}-column."
            )


def require_image_column(loaded: EvalDataset, column: str) -> None:
    """Checks that `column` exists and holds images (a `datasets.Image` feature)."""
    require_columns(loaded, image=column)
    feature = loaded.dataset.features[column]
    if not isinstance(feature, datasets.Image):
        raise EvaluationInputError(f"Column {column!r} of {loaded.name} holds {feature}, not images.")


# ---------------------------------------------------------------------------------------------- class names, prompts


def bundled_imagenet_classnames() -> list[str]:
    """The 1000 ImageNet-1k class names of CLIP_benchmark (MIT, see `evaluation/data/README.md`)."""
    return json.loads((DATA_DIR / "imagenet1k_classnames.json").read_text())


def bundled_openai_templates() -> list[str]:
    """The 80 OpenAI ImageNet prompt templates (via CLIP_benchmark), `{c}` = class name."""
    return json.loads((DATA_DIR / "openai_imagenet_templates.json").read_text())


def read_classnames(spec: str, key: str | None = None) -> list[str] | dict[str, str]:
    """Class names from `imagenet1k` (bundled), a `.txt` file (one per line) or a JSON file.

    JSON may hold a list (index = label) or an object `{label: prompt name}` (string labels, in class order);
    `key` selects a member of a larger JSON object (e.g. `category_prompt_names` of the emoji dataset).
    """
    if spec == "imagenet1k":
        return bundled_imagenet_classnames()
    path = Path(spec)
    if not path.is_file():
        raise EvaluationInputError(f"Class-name file {spec} does not exist (or pass 'imagenet1k' for the bundled list).")
    if path.suffix == ".txt":
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    value = _read_json(path)
    if key is not None:
        if not isinstance(value, dict) or key not in value:
            members = ", ".join(value) if isinstance(value, dict) else type(value).__name__
            raise EvaluationInputError(f"{spec} has no member {key!r} (members: {members}).")
        value = value[key]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return value
    raise EvaluationInputError(
        f"{spec}{f' [{key}]' if key else ''} must be a JSON list of class names or an object {{label: name}}; got "
        f"{type(value).__name__}{' (use --classnames-key to pick a member)' if isinstance(value, dict) else ''}."
    )


def read_templates(spec: str | None) -> list[str] | dict[str, list[str]]:
    """Prompt templates: the 80 OpenAI ones by default, a `.txt` file (one per line) or JSON (a list of templates
    with `{c}`, or CuPL-style `{class name: [prompts]}`)."""
    if spec is None or spec == "openai":
        return bundled_openai_templates()
    path = Path(spec)
    if not path.is_file():
        raise EvaluationInputError(f"Template file {spec} does not exist.")
    value = [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.suffix == ".txt" else _read_json(path)
    return check_templates(value, spec)


def check_templates(templates: Any, source: str) -> list[str] | dict[str, list[str]]:
    """Templates must be a non-empty list of strings containing `{c}`, or a dict of per-class prompt lists."""
    if isinstance(templates, list) and templates and all(isinstance(t, str) for t in templates):
        without = [t for t in templates if "{c}" not in t]
        if without:
            raise EvaluationInputError(f"Template {without[0]!r} from {source} has no '{{c}}' placeholder for the class name.")
        return templates
    if isinstance(templates, dict) and templates and all(isinstance(v, list) and v for v in templates.values()):
        return templates
    raise EvaluationInputError(f"{source} must hold a non-empty JSON list of templates with '{{c}}' or a {{class: [prompts]}} object.")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise EvaluationInputError(f"{path} is not valid JSON: {error}") from None


def class_prompts(classnames: Sequence[str], templates: list[str] | dict[str, list[str]]) -> list[list[str]]:
    """The prompts of each class: every template filled with the class name, or the class's own CuPL prompts."""
    if isinstance(templates, dict):
        missing = [c for c in classnames if c not in templates]
        if missing:
            raise EvaluationInputError(f"The per-class prompts have no entry for class {missing[0]!r}.")
        return [list(templates[c]) for c in classnames]
    return [[template.format(c=name) for template in templates] for name in classnames]


def label_indices(loaded: EvalDataset, column: str, classnames: list[str] | dict[str, str]) -> tuple[list[int], list[str]]:
    """Validates the label column against the class names and returns (integer labels, class names in order).

    Integer (or `ClassLabel`) labels must lie in [0, number of class names); string labels must be keys of a
    `{label: name}` mapping or entries of the class-name list.
    """
    names = list(classnames.values()) if isinstance(classnames, dict) else list(classnames)
    keys = list(classnames) if isinstance(classnames, dict) else names
    feature = loaded.dataset.features[column]
    blank = [i for i, name in enumerate(names) if not isinstance(name, str) or not name.strip()]
    if blank:  # e.g. blank lines at the end of a classnames.txt: extra classes that shift nothing but dilute
        raise EvaluationInputError(
            f"Class names for column {column!r} of {loaded.name}: entries {blank[:10]} of {len(names)} are empty; "
            "remove them (one non-empty name per class, in label order)."
        )
    if isinstance(feature, datasets.ClassLabel) and feature.num_classes != len(names):
        raise EvaluationInputError(
            f"Column {column!r} of {loaded.name} is a ClassLabel with {feature.num_classes} classes "
            f"({', '.join(feature.names[:3])}, ...) but {len(names)} class names were given (expected "
            f"{feature.num_classes}): integer labels would index the wrong names. Pass a class-name list of "
            f"{feature.num_classes} entries in label order, or omit --classnames to use the ClassLabel's names."
        )
    labels = loaded.dataset[column]
    index_of = {key: i for i, key in enumerate(keys)}
    indices = []
    for row, label in enumerate(labels):
        if isinstance(label, str):
            if label not in index_of:
                raise EvaluationInputError(
                    f"Row {row} of {loaded.name}: label {label!r} in column {column!r} is not one of the {len(keys)} "
                    f"class labels ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})."
                )
            indices.append(index_of[label])
        elif isinstance(label, int) and not isinstance(label, bool):
            if not 0 <= label < len(names):
                raise EvaluationInputError(
                    f"Row {row} of {loaded.name}: label {label} in column {column!r} is outside the {len(names)} class "
                    f"names (expected 0..{len(names) - 1}); the class-name list has the wrong length."
                )
            indices.append(label)
        else:
            raise EvaluationInputError(
                f"Row {row} of {loaded.name}: label {label!r} in column {column!r} is neither a class index nor a class label."
            )
    warn_unused_top_classes(loaded.name, column, labels, names)
    return indices, names


def warn_unused_top_classes(name: str, column: str, labels: Sequence[Any], names: list[str]) -> None:
    """Plain integer labels carry no class count: when no row reaches the last class names, say so loudly.

    Not an error: a subset of a dataset may lack its highest classes. But class names beyond the dataset's real
    classes (e.g. 1,000 ImageNet names for a 10-class set) compete in the argmax and drive accuracy towards 0%.
    """
    integers = [label for label in labels if isinstance(label, int) and not isinstance(label, bool)]
    if not integers or len(integers) != len(labels):
        return
    highest = max(integers)
    if highest + 1 < len(names):
        warnings.warn(
            f"{name}: the integer labels of column {column!r} reach only class {highest} (at most {highest + 1} "
            f"classes) but {len(names)} class names were given: names {highest + 1}..{len(names) - 1} "
            f"({names[highest + 1]!r}, ...) compete for every image. If the dataset has {highest + 1} classes, pass "
            f"exactly those names; if this is a subset lacking the last classes, ignore this warning.",
            stacklevel=3,
        )


def captions_of(cell: Any, row: int, column: str, split_lines: bool = False) -> list[str]:
    """The captions of one row: a string (several lines in WebDataset `txt` mirrors) or a list of strings."""
    if isinstance(cell, str):
        captions = cell.splitlines() if split_lines else [cell]
    elif isinstance(cell, (list, tuple)) and all(isinstance(c, str) for c in cell):
        captions = list(cell)
    else:
        raise EvaluationInputError(f"Row {row}: column {column!r} holds {type(cell).__name__}, expected a caption string or a list of them.")
    captions = [c for c in captions if c.strip()] if split_lines else captions
    if not captions or not all(c.strip() for c in captions):
        raise EvaluationInputError(f"Row {row}: column {column!r} has an empty caption ({cell!r}); every image needs at least one.")
    return captions
