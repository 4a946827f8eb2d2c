"""Reinforcement pipeline throughput and the share of wall time spent inside teacher forward passes.

    python -m benchmarks.bench_reinforce [--teachers SPEC[,SPEC]] [--captioner SPEC|none] [--samples 64]
        [--num-augmentations 2] [--num-synthetic-captions 0] [--batch-size 16] [--num-workers N] [--dtype bfloat16]

Builds a synthetic image-text source (photo-like JPEGs, 360-640 px) and measures in the same run:
  * ours: the full pipeline (`dataset_scripts.reinforce`: decode, record + replay N augmentations, captioner,
    teachers, float16 Parquet writing), with its own timing of teacher and captioner forward passes;
  * peer: the same teachers alone on ready-made uint8 views and captions of the same batch shapes, i.e. the
    throughput of a pipeline with zero data-handling overhead;
  * the teachers alone in their train-time form (`load_teachers(..., fuse=False)`), what the pipeline ran before
    teachers were fused: the fused/train-time ratio is the gain of fusing (about 1 for a ViT, which has nothing to
    fuse; a MobileCLIP teacher such as `open_clip:MobileCLIP2-S0:none` gains its image tower's ratio).
Goal on a GPU: teacher share >= 85% (ours/peer close to 1): the pipeline must not be the bottleneck.
GPU example (random weights cost the same as released ones):
    python -m benchmarks.bench_reinforce --teachers open_clip:ViT-L-14:none,open_clip:ViT-L-14:none \
        --samples 2048 --num-augmentations 10 --batch-size 64 --num-workers 12
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_loader import photo_like_jpeg
from dataset_scripts import reinforce
from dataset_scripts.teachers import load_teachers


def build_source(path: Path, samples: int) -> None:
    import datasets

    rng = np.random.default_rng(0)
    rows = []
    for i in range(samples):
        height, width = int(rng.integers(360, 640)), int(rng.integers(360, 640))
        rows.append({"uid": f"{i:08d}", "image": {"bytes": photo_like_jpeg(rng, height, width), "path": None},
                     "caption": f"a photo of a red bicycle number {i} parked next to a wooden bench"})
    features = datasets.Features({"uid": datasets.Value("string"), "image": datasets.Image(),
                                  "caption": datasets.Value("string")})
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))


def teachers_alone(specs: list[str], args, device: torch.device, fuse: bool = True) -> float:
    """Samples/s of the teachers on prepared inputs with the pipeline's batch shapes."""
    teachers = load_teachers(specs, device, reinforce.DTYPES[args.dtype], fuse=fuse)
    views = torch.randint(0, 256, (args.batch_size * args.num_augmentations, 3, args.image_size, args.image_size),
                          dtype=torch.uint8)
    texts = [f"a photo of a red bicycle number {i} parked next to a wooden bench"
             for i in range(args.batch_size * (1 + args.num_synthetic_captions))]

    def step():
        for teacher in teachers:
            teacher.encode_images(views).cpu()
            teacher.encode_texts(texts).cpu()

    step()  # warm-up (kernel selection, allocator)
    steps = max(1, args.samples // args.batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * args.batch_size / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teachers", default="open_clip:ViT-B-32:none")
    parser.add_argument("--captioner", default="none")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--num-augmentations", type=int, default=2)
    parser.add_argument("--num-synthetic-captions", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(reinforce.DTYPES))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source.parquet"
        build_source(source, args.samples)
        config = reinforce.ReinforceConfig(
            source=str(source), output=str(Path(tmp) / "out"), teachers=args.teachers, captioner=args.captioner,
            num_augmentations=args.num_augmentations, num_synthetic_captions=args.num_synthetic_captions,
            batch_size=args.batch_size, shard_size=args.samples, dtype=args.dtype, image_size=args.image_size,
            no_progress=True, num_workers=args.num_workers,
        )
        start = time.perf_counter()
        entry = reinforce.reinforce(config)
        end_to_end = time.perf_counter() - start
        timing = entry["timing"]
        specs = [s for s in args.teachers.split(",") if s]
        peer = teachers_alone(specs, args, device)
        train_time = teachers_alone(specs, args, device, fuse=False)
    ours = timing["samples_per_s"]
    print(json.dumps({"device": str(device), "teachers": args.teachers, "captioner": args.captioner,
                      "N": args.num_augmentations, "K": args.num_synthetic_captions, "batch": args.batch_size,
                      "dtype": args.dtype}))
    print(f"ours (pipeline loop): {ours:8.1f} samples/s  ({end_to_end:.1f} s end to end incl. model loading)")
    print(f"  teacher forward share of wall time: {timing['teacher_share']:.1%}   "
          f"teachers+captioner: {timing['model_share']:.1%}")
    print(f"peer (teachers alone, same shapes): {peer:8.1f} samples/s   ours/peer = {ours / peer:.2f}")
    print(f"teachers alone in the train-time form: {train_time:8.1f} samples/s   fused/train-time = "
          f"{peer / train_time:.2f}")


if __name__ == "__main__":
    main()
