"""The reinforced (DataCompDR-style) dataset format: schema, metadata, the writing builder and the dataset card.

A reinforced dataset is a folder (or Hub dataset repo) of Parquet shards plus a README.md dataset card:

    README.md                         YAML `configs:` (data files per split), `dataset_info`, `datacompdr:` metadata
    data/<split>-UUUUU-PPPP.parquet   shards
    reinforce_report.json             what was processed and skipped (written by the pipeline / converter)

Columns (one row per source image):

    uid           string
    image         Image (the original encoded bytes, not re-encoded)
    caption       string, the ground-truth caption
    syn_captions  list of up to K strings (synthetic captions)
    aug_params    list of N strings, each one augmentation in DataCompDR's compressed JSON form
    image_emb     float16 (N, D): teachers' embeddings of each augmented view
    text_emb      float16 (1 + K, D): row 0 the ground-truth caption, rows 1..len(syn_captions) the synthetic
                  captions in order; rows beyond 1 + len(syn_captions) are zero

D is the concatenation of the teachers' L2-normalised embeddings, in the order recorded in the card. A row has
fewer than K synthetic captions when its source had fewer (the `column:NAME` captioner reuses a dataset's own
extra captions, and images have 1 to many of them); the shape of `text_emb` stays fixed so that Arrow can store it
as a fixed-shape array, hence the zero rows.
Read with `datasets.load_dataset(DIR_OR_REPO)` (optionally `streaming=True`); `datasets` 5 runs no loading
scripts, so the builder below is only the writing side.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import datasets
import numpy as np
import pyarrow.parquet as pq
import yaml
from datasets import Array2D, Features, Image, List, Value
from huggingface_hub import DatasetCard

from modeling_mobileclip.atomic import SCRATCH_PREFIX, atomic_path
from .augmentation import AugmentationConfig


FORMAT_VERSION = 1
METADATA_KEY = "datacompdr"
REPORT_FILENAME = "reinforce_report.json"
CARD_FILENAME = "README.md"
DATA_DIR = "data"


@dataclass(frozen=True)
class TeacherInfo:
    """One teacher of the ensemble: its spec (e.g. `open_clip:ViT-L-14:openai`), embedding dimension and learned
    logit scale exp(logit_scale) (None when unknown: converted data, models without one, cards written before the
    scale was recorded)."""

    spec: str
    dim: int
    logit_scale: float | None = None


@dataclass
class ReinforcementMetadata:
    """Everything the card records about how a reinforced dataset was made.

    Args:
        teachers: Teachers in embedding order; `image_emb[:, offset:offset + dim]` belongs to each in turn.
        num_augmentations: N, stored augmentations (and image embeddings) per sample.
        num_synthetic_captions: K, the most synthetic captions a sample has (and `text_emb` has 1 + K rows).
        augmentation: How views were sampled; replay uses `augmentation.size` as the reference size.
        captioner: Captioner spec (`column:NAME` for a dataset's own extra captions), or "none".
        seed: Run seed (None when unknown, e.g. for converted official data).
        source: What was reinforced (dataset id/path, split).
        shard_size: Source rows per output shard (part of the resume contract).
        extra: Free-form additional facts.
    """

    teachers: list[TeacherInfo]
    num_augmentations: int
    num_synthetic_captions: int
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    captioner: str = "none"
    seed: int | None = None
    source: str | None = None
    shard_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.teachers:
            raise ValueError("A reinforced dataset needs at least one teacher.")
        if self.num_augmentations < 1:
            raise ValueError(f"num_augmentations must be >= 1, got {self.num_augmentations}.")
        if self.num_synthetic_captions < 0:
            raise ValueError(f"num_synthetic_captions must be >= 0, got {self.num_synthetic_captions}.")

    @property
    def embedding_dim(self) -> int:
        return sum(t.dim for t in self.teachers)

    @property
    def teacher_dims(self) -> list[int]:
        return [t.dim for t in self.teachers]

    @property
    def teacher_logit_scales(self) -> list[float] | None:
        """Each teacher's recorded learned logit scale, in teacher order; None unless every teacher has one."""
        scales = [t.logit_scale for t in self.teachers]
        return None if any(scale is None for scale in scales) else [float(scale) for scale in scales]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "teachers": [{"spec": t.spec, "dim": t.dim, "logit_scale": t.logit_scale} for t in self.teachers],
            "embedding_dim": self.embedding_dim,
            "num_augmentations": self.num_augmentations,
            "num_synthetic_captions": self.num_synthetic_captions,
            "augmentation": self.augmentation.to_dict(),
            "captioner": self.captioner,
            "seed": self.seed,
            "source": self.source,
            "shard_size": self.shard_size,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ReinforcementMetadata":
        version = values.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(f"Dataset format version {version} is newer than this code supports ({FORMAT_VERSION}).")
        return cls(
            teachers=[TeacherInfo(spec=t["spec"], dim=int(t["dim"]), logit_scale=_optional_float(t.get("logit_scale")))
                      for t in values["teachers"]],
            num_augmentations=int(values["num_augmentations"]),
            num_synthetic_captions=int(values["num_synthetic_captions"]),
            augmentation=AugmentationConfig.from_dict(values.get("augmentation", {})),
            captioner=values.get("captioner", "none"),
            seed=values.get("seed"),
            source=values.get("source"),
            shard_size=values.get("shard_size"),
            extra=dict(values.get("extra") or {}),
        )

    def resume_mismatches(self, other: "ReinforcementMetadata") -> list[str]:
        """Settings that differ from `other` and would make appending to an existing output inconsistent.

        Teachers compare by spec and dim, and by logit scale only when both sides recorded one: outputs started
        before the scale was recorded (no `logit_scale` in their metadata) must still resume, while two different
        recorded scales mean the weights behind a spec changed (an overwritten folder, a new Hub revision). The
        tolerance absorbs last-digit differences of exp() across devices and versions.
        """
        mine, theirs = self.to_dict(), other.to_dict()
        keys = ("num_augmentations", "num_synthetic_captions", "augmentation", "captioner", "seed", "shard_size")
        mismatches = [f"{k}: existing {theirs[k]!r}, requested {mine[k]!r}" for k in keys if mine[k] != theirs[k]]
        same_teachers = len(self.teachers) == len(other.teachers) and all(
            (a.spec, a.dim) == (b.spec, b.dim)
            and (a.logit_scale is None or b.logit_scale is None or math.isclose(a.logit_scale, b.logit_scale,
                                                                                  rel_tol=1e-5))
            for a, b in zip(self.teachers, other.teachers)
        )
        if not same_teachers:
            mismatches.insert(0, f"teachers: existing {theirs['teachers']!r}, requested {mine['teachers']!r}")
        return mismatches


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def reinforced_features(metadata: ReinforcementMetadata) -> Features:
    """The `datasets` schema of a reinforced dataset (fixed-shape float16 embeddings, Arrow `Array2D`)."""
    dim = metadata.embedding_dim
    return Features(
        {
            "uid": Value("string"),
            "image": Image(),
            "caption": Value("string"),
            "syn_captions": List(Value("string")),
            "aug_params": List(Value("string")),
            "image_emb": Array2D(shape=(metadata.num_augmentations, dim), dtype="float16"),
            "text_emb": Array2D(shape=(1 + metadata.num_synthetic_captions, dim), dtype="float16"),
        }
    )


def validate_example(example: dict[str, Any], metadata: ReinforcementMetadata) -> dict[str, Any]:
    """Check one sample against the declared shapes; return it with float16 arrays and encoded image bytes."""
    uid = example.get("uid", "<no uid>")
    missing = [k for k in ("uid", "image", "caption", "syn_captions", "aug_params", "image_emb", "text_emb")
               if k not in example]
    if missing:
        raise ValueError(f"Sample {uid!r} lacks keys {missing}.")
    n, k, dim = metadata.num_augmentations, metadata.num_synthetic_captions, metadata.embedding_dim
    image_emb = np.asarray(example["image_emb"], dtype=np.float16)
    text_emb = np.asarray(example["text_emb"], dtype=np.float16)
    checks = [
        ("image_emb", image_emb.shape, (n, dim)),
        ("text_emb", text_emb.shape, (1 + k, dim)),
        ("aug_params", (len(example["aug_params"]),), (n,)),
    ]
    for key, got, expected in checks:
        if tuple(got) != expected:
            raise ValueError(f"Sample {uid!r}: {key} has shape {tuple(got)}, expected {expected}.")
    num_synthetic = len(example["syn_captions"])
    if num_synthetic > k:
        raise ValueError(f"Sample {uid!r}: syn_captions has {num_synthetic} captions, more than K = {k}.")
    if text_emb[1 + num_synthetic:].any():
        # Readers tell real rows from padding by len(syn_captions) only; nonzero padding means misaligned rows.
        raise ValueError(f"Sample {uid!r}: text_emb rows {1 + num_synthetic}..{k} must be zero (the sample has "
                         f"{num_synthetic} of K = {k} synthetic captions).")
    image = example["image"]
    if isinstance(image, (bytes, bytearray)):
        image = {"bytes": bytes(image), "path": None}
    return {**example, "image": image, "image_emb": image_emb, "text_emb": text_emb}


def pack_text_embeddings(flat: np.ndarray, rows_per_sample: Sequence[int], num_synthetic: int) -> np.ndarray:
    """(samples, 1 + K, D) `text_emb` from the caption embeddings of consecutive samples stacked as (rows, D):
    sample i owns the next `rows_per_sample[i]` rows (its caption and synthetic captions); the rest are zero."""
    packed = np.zeros((len(rows_per_sample), 1 + num_synthetic, flat.shape[-1]), dtype=flat.dtype)
    offsets = np.cumsum([0, *rows_per_sample])
    if offsets[-1] != len(flat) or max(rows_per_sample, default=1) > 1 + num_synthetic:
        raise ValueError(f"Cannot pack {len(flat)} caption embeddings as rows {list(rows_per_sample)} of at most "
                         f"1 + K = {1 + num_synthetic}.")
    for i, count in enumerate(rows_per_sample):
        packed[i, :count] = flat[offsets[i]: offsets[i + 1]]
    return packed


@dataclass
class DataCompDRConfig(datasets.BuilderConfig):
    """Builder configuration: the dataset metadata and a callable producing the samples of one shard.

    Example:

        builder = DataCompDRBuilder(cache_dir=tmp, metadata=metadata, examples=lambda: samples, config_id="shard")
        builder.download_and_prepare(output_dir=tmp_out, file_format="parquet")
    """

    metadata: ReinforcementMetadata | None = None
    examples: Callable[[], Iterable[dict[str, Any]]] | None = None
    split: str = "train"


class DataCompDRBuilder(datasets.GeneratorBasedBuilder):
    """Writes reinforced samples (dicts with the columns of :func:`reinforced_features`) as a `datasets` split."""

    BUILDER_CONFIG_CLASS = DataCompDRConfig

    def _info(self) -> datasets.DatasetInfo:
        if self.config.metadata is None:
            raise ValueError("DataCompDRBuilder needs `metadata` (a ReinforcementMetadata).")
        return datasets.DatasetInfo(
            description="Reinforced image-text dataset (DataCompDR format).",
            features=reinforced_features(self.config.metadata),
        )

    def _split_generators(self, dl_manager):
        return [datasets.SplitGenerator(name=self.config.split)]

    def _generate_examples(self):
        if self.config.examples is None:
            raise ValueError("DataCompDRBuilder needs `examples` (a callable returning the samples).")
        for index, example in enumerate(self.config.examples()):
            yield index, validate_example(example, self.config.metadata)


def shard_filename(split: str, unit: int, part: int) -> str:
    return f"{DATA_DIR}/{split}-{unit:05d}-{part:04d}.parquet"


def write_parquet_shard(
    examples: Sequence[dict[str, Any]], metadata: ReinforcementMetadata, path: str | os.PathLike
) -> int:
    """Write samples to one Parquet file through :class:`DataCompDRBuilder`, atomically (`atomic.atomic_path`): a
    crash leaves either the complete shard or none. Returns the number of rows written.

    The builder picks its own file name inside a folder it fills, so it writes into a scratch folder next to `path`
    (same file system: moving its file is a rename) whose one Parquet file is then moved to the staged path.
    """
    path = Path(path)
    with atomic_path(path) as staged, tempfile.TemporaryDirectory(dir=path.parent, prefix=SCRATCH_PREFIX) as scratch:
        builder = DataCompDRBuilder(
            cache_dir=os.path.join(scratch, "cache"), metadata=metadata, examples=lambda: examples,
            config_id="shard",
        )
        builder.download_and_prepare(output_dir=os.path.join(scratch, "out"), file_format="parquet")
        written = sorted(Path(scratch, "out").glob("*.parquet"))
        if len(written) != 1:
            raise RuntimeError(f"Expected the builder to write one Parquet file, got {written}.")
        _write_plain_encoded(written[0], staged)
    return len(examples)


# Columns that stay dictionary-encoded. The builder dictionary-encodes every column; for the float16 embeddings that
# makes reading 4x slower (6.1 vs 1.6 ms per DataCompDR-12M-shaped row, +3% size for plain) and reading is what a
# streaming training run does every epoch, so they are re-encoded plain.
DICTIONARY_COLUMNS = ("uid", "caption")


def _write_plain_encoded(source: Path, destination: Path) -> None:
    """Copies a Parquet file row group by row group (same schema, metadata and row groups), with only
    DICTIONARY_COLUMNS dictionary-encoded."""
    reader = pq.ParquetFile(source)
    with pq.ParquetWriter(destination, reader.schema_arrow, use_dictionary=list(DICTIONARY_COLUMNS)) as writer:
        for index in range(reader.num_row_groups):
            writer.write_table(reader.read_row_group(index))


def _card_body(metadata: ReinforcementMetadata) -> str:
    teachers = "\n".join(
        f"| {i} | `{t.spec}` | {t.dim} | {'-' if t.logit_scale is None else f'{t.logit_scale:.6g}'} |"
        for i, t in enumerate(metadata.teachers)
    )
    return f"""
# Reinforced image-text dataset (DataCompDR format)

Every image comes with up to {metadata.num_synthetic_captions} synthetic captions (captioner
`{metadata.captioner}`), {metadata.num_augmentations} recorded augmentations and the float16 embeddings of a
teacher ensemble for each augmented view and for each caption, as in MobileCLIP's multi-modal reinforced training
(arXiv 2311.17049).

| # | teacher | dim | learned logit scale |
|---|---|---|---|
{teachers}

`image_emb` is (N={metadata.num_augmentations}, D={metadata.embedding_dim}); `text_emb` is
(1+K={1 + metadata.num_synthetic_captions}, D), row 0 for `caption`, rows 1..len(`syn_captions`) for the synthetic
captions, zero rows beyond (a sample with fewer than K). D concatenates the teachers' L2-normalised embeddings in
the order above; the learned logit scale is each teacher's exp(logit_scale), which training uses as the teacher's
distillation temperature unless told otherwise. `aug_params[i]` is DataCompDR's compressed
`[[top, left, h, w], [[op_index, magnitude], ...]]`.

```python
from datasets import load_dataset
ds = load_dataset("PATH_OR_REPO", split="train")            # or streaming=True
from dataset_scripts.augmentation import AugmentationParams, apply_augmentation
view = apply_augmentation(ds[0]["image"], AugmentationParams.from_json(ds[0]["aug_params"][0]), size=224)
```
"""


def write_dataset_card(
    output_dir: str | os.PathLike, metadata: ReinforcementMetadata, split_sizes: dict[str, int]
) -> Path:
    """Write README.md: `configs` (one glob per split), `dataset_info` (features, split sizes) and metadata."""
    features = reinforced_features(metadata)
    split_bytes = {
        split: sum(f.stat().st_size for f in Path(output_dir, DATA_DIR).glob(f"{split}-*.parquet"))
        for split in split_sizes
    }
    front_matter = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [
                    {"split": split, "path": f"{DATA_DIR}/{split}-*.parquet"} for split in sorted(split_sizes)
                ],
            }
        ],
        "dataset_info": {
            "features": features._to_yaml_list(),
            "splits": [
                {"name": s, "num_bytes": split_bytes[s], "num_examples": int(n)} for s, n in sorted(split_sizes.items())
            ],
        },
        "tags": ["datacompdr", "reinforced", "mobileclip", "image-text"],
        METADATA_KEY: metadata.to_dict(),
    }
    content = "---\n" + yaml.safe_dump(front_matter, sort_keys=False) + "---\n" + _card_body(metadata)
    path = Path(output_dir) / CARD_FILENAME
    with atomic_path(path) as staged:
        DatasetCard(content).save(staged)
    return path


def read_card_front_matter(path_or_repo: str | os.PathLike) -> dict[str, Any]:
    """The YAML front matter of a reinforced dataset's card (local folder, or Hub dataset repo id)."""
    local = Path(path_or_repo) / CARD_FILENAME
    card = DatasetCard.load(local if local.exists() else str(path_or_repo), repo_type="dataset")
    return card.data.to_dict()


def load_reinforcement_metadata(path_or_repo: str | os.PathLike) -> ReinforcementMetadata:
    """Read the :class:`ReinforcementMetadata` recorded in a reinforced dataset's card."""
    front_matter = read_card_front_matter(path_or_repo)
    if METADATA_KEY not in front_matter:
        raise ValueError(f"{path_or_repo}: the dataset card has no '{METADATA_KEY}' metadata; is it reinforced?")
    return ReinforcementMetadata.from_dict(front_matter[METADATA_KEY])


def card_split_sizes(path: str | os.PathLike) -> dict[str, int]:
    """Split sizes recorded in an existing card (empty when there is none)."""
    if not (Path(path) / CARD_FILENAME).exists():
        return {}
    info = read_card_front_matter(path).get("dataset_info") or {}
    return {s["name"]: int(s["num_examples"]) for s in info.get("splits", [])}


__all__ = [
    "FORMAT_VERSION",
    "DataCompDRBuilder",
    "DataCompDRConfig",
    "ReinforcementMetadata",
    "TeacherInfo",
    "card_split_sizes",
    "load_reinforcement_metadata",
    "pack_text_embeddings",
    "reinforced_features",
    "shard_filename",
    "validate_example",
    "write_dataset_card",
    "write_parquet_shard",
]
