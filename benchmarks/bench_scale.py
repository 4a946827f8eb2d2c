"""Training data at scale: what the map-style order costs as the number of rows grows, ours vs materialising peers.

    python benchmarks/bench_scale.py [--only rss|stream|all] [--rows 10000 1000000] [--ours-only-rows 100000000]
        [--workers 0 2] [--batches 50] [--batch-size 256] [--stream-samples 512] [--stream-shards 8]
        [--stream-batch 32] [--stream-batches 12] [--repeats 2]

Sections, chosen with `--only` (`all` runs every section):

rss  Peak resident memory of "sampler + DataLoader" after `--batches` batches of a dataset of tiny rows (one small
     tensor per row, so the order is the only thing that grows with N). Every configuration runs in a fresh
     subprocess and reads its own `ru_maxrss` (imports included: they cancel out in the growth column); the
     largest DataLoader worker's peak is read after the workers are joined. Candidates, alternated per setting:
       ours      training.order.GlobalBatchSampler: a lazily evaluated Feistel permutation, O(batch) memory;
       randperm  the same global-batch contract with the epoch's order materialised by torch.randperm(N), as
                 training.data's sampler did (8 bytes per row);
       torch     torch.utils.data.RandomSampler + BatchSampler(drop_last=True): randperm(N).tolist(), about 44
                 bytes per row (tensor, list slot, int object).
     `--ours-only-rows` (100M by default) is measured for ours only: the peers would allocate about 0.8 GB
     (randperm) and 4.4 GB (torch) there.
     Goal: ours grows <= 50 MB from 10k to 1M rows (and stays flat at 100M).

stream
     Training-loader throughput, streaming (training/streaming.py) against map-style (training/data.py) on the same
     reinforced data: `--stream-samples` DataCompDR-12M-shaped samples (photo-like JPEGs, N=30 augmentations, K=5
     synthetic captions, 2 x 768 float16 embeddings; benchmarks/bench_loader.py's generator) in `--stream-shards`
     Parquet shards, the full training path (replayed view at 256 px, tokenised captions, collated batch of
     `--stream-batch`), per DataLoader setting, alternating the two readers over `--repeats` rounds (best round
     kept). samples/s per core = samples/s / max(1, workers). Goal: streaming / map-style >= 0.9.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.order import GlobalBatchSampler  # noqa: E402

RSS_GOAL_MB = 50.0
CANDIDATES = ("ours", "randperm", "torch")


class TinyRows(torch.utils.data.Dataset):
    """A row id and a label per row, computed on the fly: nothing here grows with the number of rows."""

    def __init__(self, num_rows: int):
        self.num_rows = num_rows

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, key) -> torch.Tensor:
        row = key[0] if isinstance(key, tuple) else key  # ours yields (row, epoch) pairs
        return torch.tensor([row, row % 1000], dtype=torch.int64)


class RandpermGlobalBatchSampler(torch.utils.data.Sampler):
    """The order as training.data made it before training.order: `torch.randperm(N)` per epoch, sliced per batch."""

    def __init__(self, num_rows: int, global_batch_size: int, seed: int):
        self.num_rows, self.global_batch_size, self.seed = num_rows, global_batch_size, seed
        self.steps_per_epoch = num_rows // global_batch_size

    def __iter__(self):
        epoch = 0
        while True:
            order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(self.seed + epoch))
            for batch in range(self.steps_per_epoch):
                start = batch * self.global_batch_size
                yield [(int(row), epoch) for row in order[start : start + self.global_batch_size]]
            epoch += 1


def batch_sampler(candidate: str, num_rows: int, batch_size: int, batches: int):
    if candidate == "ours":
        return GlobalBatchSampler(num_rows, batch_size, seed=0, rank=0, world_size=1)
    if candidate == "randperm":
        return RandpermGlobalBatchSampler(num_rows, batch_size, seed=0)
    # RandomSampler stops after one epoch unless asked for more samples; it then draws one randperm per epoch.
    rows_wanted = max(num_rows, batches * batch_size)
    sampler = torch.utils.data.RandomSampler(range(num_rows), num_samples=rows_wanted,
                                             generator=torch.Generator().manual_seed(0))
    return torch.utils.data.BatchSampler(sampler, batch_size, drop_last=True)


def peak_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def measure_rss_here(candidate: str, num_rows: int, workers: int, batches: int, batch_size: int) -> dict:
    """Runs in the fresh subprocess: build the loader, take `batches` batches, report peaks in MB."""
    torch.set_num_threads(1)
    loader = torch.utils.data.DataLoader(
        TinyRows(num_rows), batch_sampler=batch_sampler(candidate, num_rows, batch_size, batches), num_workers=workers
    )
    before = peak_rss_mb(resource.RUSAGE_SELF)
    iterator = iter(loader)
    rows_seen = 0
    for _ in range(batches):
        rows_seen += len(next(iterator))
    del iterator  # shuts the workers down and joins them, so RUSAGE_CHILDREN covers them
    gc.collect()
    return {"peak_mb": peak_rss_mb(resource.RUSAGE_SELF), "before_iter_mb": before,
            "worker_peak_mb": peak_rss_mb(resource.RUSAGE_CHILDREN), "rows_seen": rows_seen}


def measure_rss_in_subprocess(candidate: str, num_rows: int, workers: int, args) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--rss-child", candidate, str(num_rows), str(workers),
               "--batches", str(args.batches), "--batch-size", str(args.batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{candidate} rows={num_rows} workers={workers} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["rows_seen"] != args.batches * args.batch_size:
        raise RuntimeError(f"{candidate} served {result['rows_seen']} rows, not {args.batches * args.batch_size}")
    return result


def rss_section(args) -> None:
    print(f"\n== rss: peak resident memory of sampler + DataLoader after {args.batches} batches of {args.batch_size} "
          f"(fresh subprocess each; MB; '+it' = peak increase while iterating)")
    settings = [(rows, CANDIDATES) for rows in args.rows]
    settings += [(rows, ("ours",)) for rows in args.ours_only_rows]
    results: dict[tuple[str, int, int], dict] = {}
    header = f"{'rows':>12} {'workers':>7} | " + " | ".join(f"{name:>8} peak (+it) worker" for name in CANDIDATES)
    print(header)
    print("-" * len(header))
    for rows, candidates in settings:
        for workers in args.workers:
            cells = []
            for candidate in CANDIDATES:
                if candidate not in candidates:
                    cells.append(f"{'(skipped)':>26}")
                    continue
                result = results[candidate, rows, workers] = measure_rss_in_subprocess(candidate, rows, workers, args)
                increase = result["peak_mb"] - result["before_iter_mb"]
                worker = f"{result['worker_peak_mb']:7.0f}" if workers else f"{'-':>7}"
                cells.append(f"{result['peak_mb']:8.0f} ({increase:+7.1f}) {worker}")
            print(f"{rows:>12,} {workers:>7} | " + " | ".join(cells), flush=True)

    small, large = min(args.rows), max(args.rows)
    print(f"\ngrowth of the main process's peak from {small:,} to {large:,} rows (MB; goal for ours <= "
          f"{RSS_GOAL_MB:.0f}):")
    for workers in args.workers:
        growth = {name: results[name, large, workers]["peak_mb"] - results[name, small, workers]["peak_mb"]
                  for name in CANDIDATES}
        peak_ratio = results["ours", large, workers]["peak_mb"] / results["torch", large, workers]["peak_mb"]
        verdict = "met" if growth["ours"] <= RSS_GOAL_MB else "MISSED"
        print(f"  workers={workers}: ours {growth['ours']:+7.1f} ({verdict}) | randperm {growth['randperm']:+7.1f} | "
              f"torch {growth['torch']:+7.1f} | peak at {large:,} rows ours/torch = {peak_ratio:.2f}")
        for rows in args.ours_only_rows:
            ours_growth = results["ours", rows, workers]["peak_mb"] - results["ours", small, workers]["peak_mb"]
            print(f"             ours {small:,} -> {rows:,} rows: {ours_growth:+7.1f} MB "
                  f"(randperm would hold {rows * 8 / 1e6:,.0f} MB, torch about {rows * 44 / 1e6:,.0f} MB)")


def stream_loaders_samples_per_second(root: Path, streaming: bool, workers: int, args) -> float:
    # The stream section's imports stay in its functions: every rss child process runs this file, and a module-level
    # import of the training input (datasets, pyarrow, the teachers' stack) would weigh on every peak it reads.
    import time

    from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor
    from training.config import TrainingConfig
    from training.data import Collator
    from training.inputs import load_training_data

    config = TrainingConfig(variant="mobileclip-s0", train_data=str(root), streaming=streaming, num_workers=workers,
                            mixed_precision="no", report_to="none", per_device_batch_size=args.stream_batch)
    data = load_training_data(config)
    tokenizer = MobileCLIPProcessor.from_variant("mobileclip-s0").tokenizer
    views = data.build_views(config, 256, "bilinear", tokenizer)
    loader = data.loader(views, Collator(tokenizer), config, args.stream_batch, 0, 1, 0, None, log=lambda _: None)
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first batch are excluded
    start, seen = time.perf_counter(), 0
    for _ in range(args.stream_batches):
        seen += len(next(iterator)["views"])
    elapsed = time.perf_counter() - start
    del iterator
    return seen / elapsed


def stream_section(args) -> None:
    # Imported here, not at the top: see `stream_loaders_samples_per_second`.
    import tempfile
    from types import SimpleNamespace

    import pyarrow.parquet as pq

    from benchmarks.bench_loader import build_dataset
    from dataset_scripts.dr_format import DICTIONARY_COLUMNS, shard_filename

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    print(f"\n== stream: training-loader samples/s, streaming vs map-style, {args.stream_samples} samples in "
          f"{args.stream_shards} shards, batch {args.stream_batch}, {args.stream_batches} timed batches")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        os.environ["HF_DATASETS_CACHE"] = str(Path(tmp) / "cache")  # the map-style Arrow copy goes here
        build_dataset(root, SimpleNamespace(samples=args.stream_samples, num_augmentations=30,
                                            num_synthetic_captions=5, embedding_dim=1536))
        single = root / shard_filename("train", 0, 0)
        table = pq.read_table(single)
        single.unlink()
        per_shard = table.num_rows // args.stream_shards
        for index in range(args.stream_shards):
            pq.write_table(table.slice(index * per_shard, per_shard), root / shard_filename("train", index, 0),
                           use_dictionary=list(DICTIONARY_COLUMNS))  # as the format's writer encodes them
        print(f"{'workers':>7} | {'map-style':>10} | {'streaming':>10} | per core map / stream | stream / map")
        for workers in args.workers:
            best = {False: 0.0, True: 0.0}
            for _ in range(args.repeats):
                for streaming in (False, True):
                    rate = stream_loaders_samples_per_second(root, streaming, workers, args)
                    best[streaming] = max(best[streaming], rate)
            cores = max(1, workers)
            ratio = best[True] / best[False]
            print(f"{workers:>7} | {best[False]:10.1f} | {best[True]:10.1f} | {best[False] / cores:8.1f} / "
                  f"{best[True] / cores:6.1f}  | {ratio:5.2f} ({'met' if ratio >= 0.9 else 'MISSED'} >= 0.9)",
                  flush=True)


# Each section is a function of the parsed arguments; `--only` picks one, `all` runs them in this order.
SECTIONS = {"rss": rss_section, "stream": stream_section}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=[*SECTIONS, "all"], default="all")
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--ours-only-rows", type=int, nargs="*", default=[100_000_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--stream-samples", type=int, default=512)
    parser.add_argument("--stream-shards", type=int, default=8)
    parser.add_argument("--stream-batch", type=int, default=32)
    parser.add_argument("--stream-batches", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rss-child", nargs=3, metavar=("CANDIDATE", "ROWS", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        candidate, rows, workers = args.rss_child[0], int(args.rss_child[1]), int(args.rss_child[2])
        print(json.dumps(measure_rss_here(candidate, rows, workers, args.batches, args.batch_size)))
        return
    print(f"torch {torch.__version__}, numpy {np.__version__}, cpu cores: {os.cpu_count()}")
    for name, section in SECTIONS.items():
        if args.only in (name, "all"):
            section(args)


if __name__ == "__main__":
    main()
