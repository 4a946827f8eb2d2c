"""Training-view throughput (augmentation replay from JPEG) and storage per sample, ours vs the official layout.

    python -m benchmarks.bench_loader [--samples 256] [--image-size 256] [--num-augmentations 30]
        [--num-synthetic-captions 5] [--embedding-dim 1536] [--workers 0 2] [--rounds 2] [--profile]

Builds a synthetic reinforced dataset (JPEG photos-like images, DataCompDR-12M shapes by default) in a temp
folder, then measures in the same run, per DataLoader setting:
  * ours: `ReinforcedTrainingView` as training runs it (decode JPEG, replay one stored augmentation at the student
    size, pick the drawn float16 target rows; the collator tokenizes GT + synthetic captions once per batch);
  * old replay: the per-sample path before issue 22 (a copy kept here: decode + RGB copy, both (N, D) embedding
    tables materialised, one tokenizer call per sample), same views;
  * peer: the usual fresh-augmentation pipeline (decode JPEG, torchvision RandomResizedCrop + RandAugment at the
    same size, tokenize one caption), the cost a non-reinforced open_clip run pays per sample;
  * options, off by default because their views are not equal to the recorded replay: `fast_resize` (torch
    horizontal resize pass) and `reduce_on_decode` (JPEG DCT scaling);
  * the loader side of `augment_on_device` (views within 1/255): the RandAugment ops torchvision reproduces are
    left to the accelerator (their cost there is not counted here).
Goal (issue 22): ours >= 460 samples/s per core and >= 1.5x the peer at 256 px. Storage compares our Parquet bytes
per sample with Apple's WebDataset layout (npz float32, and the pth.gz bf16 variant) for the same samples.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms.functional import pil_to_tensor

from dataset_scripts.augmentation import AugmentationConfig, AugmentationParams, apply_augmentation
from dataset_scripts.augmentation import sample_augmentation, sample_seed
from dataset_scripts.dr_format import ReinforcementMetadata, TeacherInfo, shard_filename, write_dataset_card
from dataset_scripts.dr_format import write_parquet_shard
from dataset_scripts.official import write_official_shard
from dataset_scripts.training_view import ReinforcedTrainingView, load_reinforced_dataset, tokenize
from modeling_mobileclip import MobileCLIPProcessor
from training.data import Collator


def photo_like_jpeg(rng: np.random.Generator, height: int, width: int) -> bytes:
    # Smooth colour fields plus mild noise compress like photos (random noise would inflate JPEG size).
    coarse = rng.integers(0, 255, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-8, 8, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def build_dataset(root: Path, args) -> tuple[ReinforcementMetadata, list[dict]]:
    half = args.embedding_dim // 2
    metadata = ReinforcementMetadata(
        teachers=[TeacherInfo("open_clip:ViT-L-14:openai", half),
                  TeacherInfo("open_clip:ViT-L-14:datacomp_xl_s13b_b90k", args.embedding_dim - half)],
        num_augmentations=args.num_augmentations, num_synthetic_captions=args.num_synthetic_captions,
        augmentation=AugmentationConfig(), seed=0,
    )
    rng = np.random.default_rng(0)
    samples = []
    for i in range(args.samples):
        height, width = int(rng.integers(360, 640)), int(rng.integers(360, 640))
        generator = torch.Generator().manual_seed(i)
        params = [sample_augmentation(height, width, metadata.augmentation, generator).to_json()
                  for _ in range(args.num_augmentations)]
        def unit_rows(count):  # L2-normalised per teacher, as the format stores them
            rows = rng.standard_normal((count, args.embedding_dim)).astype(np.float32)
            parts = np.split(rows, [half], axis=1)
            return np.concatenate([p / np.linalg.norm(p, axis=1, keepdims=True) for p in parts], 1).astype(np.float16)
        samples.append({
            "uid": f"{i:012x}", "image": photo_like_jpeg(rng, height, width),
            "caption": f"a photo of an object number {i} on a table next to a window",
            "syn_captions": [f"a blurry picture of thing {i} variant {j}" for j in range(args.num_synthetic_captions)],
            "aug_params": params, "image_emb": unit_rows(args.num_augmentations),
            "text_emb": unit_rows(1 + args.num_synthetic_captions), "url": f"https://example.com/{i}.jpg",
        })
    write_parquet_shard([{k: v for k, v in s.items() if k != "url"} for s in samples], metadata,
                        root / shard_filename("train", 0, 0))
    write_dataset_card(root, metadata, {"train": len(samples)})
    return metadata, samples


def storage_report(root: Path, samples: list[dict]) -> None:
    count = len(samples)
    image_bytes = sum(len(s["image"]) for s in samples)
    ours = sum(p.stat().st_size for p in (root / "data").glob("*.parquet"))
    print(f"\nstorage per sample ({count} samples, images {image_bytes / count / 1024:.1f} KiB/sample included):")
    print(f"  ours (Parquet, float16)         {ours / count / 1024:8.1f} KiB  "
          f"(without images {(ours - image_bytes) / count / 1024:.1f} KiB)")
    for embedding_format in ("npz", "pth.gz"):
        path = root / f"official-{embedding_format}.tar"
        write_official_shard(str(path), samples, embedding_format)
        size = path.stat().st_size
        print(f"  official tar ({embedding_format:6s})          {size / count / 1024:8.1f} KiB  "
              f"(without images {(size - image_bytes) / count / 1024:.1f} KiB)  ours/official = {ours / size:.2f}")


def measure(dataset, batch_size: int, workers: int, max_batches: int, collate_fn=None) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False,
                                         collate_fn=collate_fn)
    iterator = iter(loader)
    next(iterator)  # worker start-up and first-batch costs are excluded
    start, seen = time.perf_counter(), 0
    for index, batch in enumerate(iterator):
        seen += len(batch["views"] if isinstance(batch, dict) else batch[0])
        if index + 1 >= max_batches:
            break
    return seen / (time.perf_counter() - start)


class ReplayedViews(torch.utils.data.Dataset):
    """Ours: the training view of each row at epoch 0 (uint8 views, like the peer's output)."""

    def __init__(self, dataset, view: ReinforcedTrainingView):
        self.rows, self.view = dataset.with_format("arrow"), view

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.view(self.rows[int(index)], 0)


class OldReplay(torch.utils.data.Dataset):
    """The per-sample training view before issue 22 ("both" mode), for the same-run comparison."""

    def __init__(self, dataset, tokenizer, size: int, reference_size: int):
        self.rows, self.tokenizer, self.size, self.reference_size = dataset.with_format("arrow"), tokenizer, size, \
            reference_size

    def __len__(self):
        return len(self.rows)

    @staticmethod
    def _embeddings(column) -> np.ndarray:
        array = column.combine_chunks().storage
        rows = array.flatten()
        return rows.flatten().to_numpy(zero_copy_only=False).reshape(len(rows), -1)

    def __getitem__(self, index):
        row = self.rows[int(index)]
        uid = row.column("uid")[0].as_py()
        rng = np.random.default_rng(sample_seed(0, f"0/{uid}"))
        augmentations, synthetic = row.column("aug_params")[0].values, row.column("syn_captions")[0].values
        aug_index, syn_index = int(rng.integers(len(augmentations))), int(rng.integers(len(synthetic)))
        params = AugmentationParams.from_json(augmentations[aug_index].as_py())
        image_emb, text_emb = self._embeddings(row.column("image_emb")), self._embeddings(row.column("text_emb"))
        image = Image.open(io.BytesIO(row.column("image")[0].as_py()["bytes"]))
        image.load()
        view = apply_augmentation(image.convert("RGB"), params, self.size, "bilinear", self.reference_size)
        caption = row.column("caption")[0].as_py()
        tokens = tokenize(self.tokenizer, [caption, synthetic[syn_index].as_py()])
        return {"views": pil_to_tensor(view), "image_emb": torch.from_numpy(image_emb[aug_index].copy()),
                "input_ids": tokens[0], "syn_input_ids": tokens[1], "caption": caption,
                "text_emb": torch.from_numpy(text_emb[0].copy()),
                "syn_text_emb": torch.from_numpy(text_emb[1 + syn_index].copy())}


class FreshAugmentationPeer(torch.utils.data.Dataset):
    """What a non-reinforced run does per sample: decode, RandomResizedCrop + RandAugment, tokenize."""

    def __init__(self, dataset, tokenizer, size: int):
        self.rows, self.tokenizer = dataset.with_format("arrow"), tokenizer
        self.transform = T.Compose([T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BILINEAR),
                                    T.RandAugment(), T.PILToTensor()])

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row = self.rows[int(index)]
        image = Image.open(io.BytesIO(row.column("image")[0].as_py()["bytes"])).convert("RGB")
        return self.transform(image), tokenize(self.tokenizer, [row.column("caption")[0].as_py()])[0]


def student_tokenizer():
    try:
        return MobileCLIPProcessor.from_variant("mobileclip-s0").tokenizer, "MobileCLIPProcessor.tokenizer"
    except Exception:
        import open_clip

        return open_clip.get_tokenizer("ViT-B-16"), "open_clip ViT-B-16 tokenizer"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--num-augmentations", type=int, default=30)
    parser.add_argument("--num-synthetic-captions", type=int, default=5)
    parser.add_argument("--embedding-dim", type=int, default=1536)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--rounds", type=int, default=2, help="alternating measurement rounds; best kept")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top entries of ours and old replay")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    tokenizer, tokenizer_name = student_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, samples = build_dataset(root, args)
        dataset, metadata = load_reinforced_dataset(str(root))
        reference = metadata.augmentation.size
        settings = dict(image_size=args.image_size, reference_size=reference, tokenize_captions=False)
        sets = {
            "ours": ReplayedViews(dataset, ReinforcedTrainingView(tokenizer, **settings)),
            "old replay": OldReplay(dataset, tokenizer, args.image_size, reference),
            "peer": FreshAugmentationPeer(dataset, tokenizer, args.image_size),
            "option fast_resize": ReplayedViews(
                dataset, ReinforcedTrainingView(tokenizer, fast_resize=True, **settings)),
            "option reduce_on_decode": ReplayedViews(
                dataset, ReinforcedTrainingView(tokenizer, reduce_on_decode=True, **settings)),
            "augment_on_device loader": ReplayedViews(
                dataset, ReinforcedTrainingView(tokenizer, defer_ops=True, **settings)),
        }
        collators = {name: Collator(tokenizer) for name in sets if name != "peer"}
        max_batches = max(1, args.samples // args.batch_size - 1)
        print(f"training view at {args.image_size}px, N={args.num_augmentations} K={args.num_synthetic_captions} "
              f"D={args.embedding_dim}, tokenizer: {tokenizer_name}, cpu cores: {os.cpu_count()}")
        for workers in args.workers:
            cores = max(1, workers)
            # Rounds alternate the pipelines so that load from other jobs on shared cores hits all of them alike.
            rates = {name: 0.0 for name in sets}
            for _ in range(args.rounds):
                for name, data in sets.items():
                    rates[name] = max(rates[name], measure(data, args.batch_size, workers, max_batches,
                                                           collators.get(name)))
            print(f"  workers={workers} (best of {args.rounds} alternating rounds), samples/s (per core):")
            for name, rate in rates.items():
                print(f"    {name:24s} {rate:7.1f} ({rate / cores:6.1f})   /peer {rate / rates['peer']:.2f}"
                      f"   /old replay {rate / rates['old replay']:.2f}")
        if args.profile:
            for name in ("old replay", "ours"):
                profiler = cProfile.Profile()
                profiler.runcall(measure, sets[name], args.batch_size, 0, max_batches, collators[name])
                print(f"\nprofile of {name} (0 workers, {max_batches} batches), top entries by own time:")
                pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
        storage_report(root, samples)


if __name__ == "__main__":
    main()
