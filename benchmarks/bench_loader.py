"""Training-view throughput (augmentation replay from JPEG) and storage per sample, ours vs the official layout.

    python -m benchmarks.bench_loader [--samples 256] [--image-size 256] [--num-augmentations 30]
        [--num-synthetic-captions 5] [--embedding-dim 1536] [--workers 0 2]

Builds a synthetic reinforced dataset (JPEG photos-like images, DataCompDR-12M shapes by default) in a temp
folder, then measures in the same run:
  * ours: `ReinforcedTrainingView` (decode JPEG, replay one stored augmentation at the student size, tokenize GT +
    synthetic caption, pick float16 targets), per DataLoader setting;
  * peer: the usual fresh-augmentation pipeline (decode JPEG, torchvision RandomResizedCrop + RandAugment at the
    same size, tokenize one caption), the cost a non-reinforced open_clip run pays per sample.
Goal: >= 150 samples/s per CPU core at 256 px. Storage compares our Parquet bytes per sample with Apple's
WebDataset layout (npz float32, and the pth.gz bf16 variant) for the same samples.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from dataset_scripts.augmentation import AugmentationConfig, sample_augmentation
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
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    tokenizer, tokenizer_name = student_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, samples = build_dataset(root, args)
        dataset, metadata = load_reinforced_dataset(str(root))
        view = ReinforcedTrainingView(tokenizer, image_size=args.image_size, reference_size=metadata.augmentation.size)
        ours_set, peer_set = ReplayedViews(dataset, view), FreshAugmentationPeer(dataset, tokenizer, args.image_size)
        max_batches = max(1, args.samples // args.batch_size - 1)
        print(f"training view at {args.image_size}px, N={args.num_augmentations} K={args.num_synthetic_captions} "
              f"D={args.embedding_dim}, tokenizer: {tokenizer_name}, cpu cores: {os.cpu_count()}")
        for workers in args.workers:
            cores = max(1, workers)
            ours = measure(ours_set, args.batch_size, workers, max_batches, Collator(tokenizer))
            peer = measure(peer_set, args.batch_size, workers, max_batches)
            print(f"  workers={workers}: ours {ours:7.1f} samples/s ({ours / cores:6.1f} per core) | peer fresh "
                  f"RRC+RandAugment {peer:7.1f} samples/s | ours/peer = {ours / peer:.2f}")
        storage_report(root, samples)


if __name__ == "__main__":
    main()
