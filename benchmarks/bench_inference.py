"""Inference throughput of ours (reparameterized) vs the peer implementation of the same variant, same process.

Peers (from `evaluation.latency`): open_clip (`MobileCLIP-S1/S2/B`, `MobileCLIP2-*`) with the same weights, fused
with timm's `reparameterize_model` (the peer's own best form); timm `fastvit_mci0` for MobileCLIP-S0's image tower
(open_clip has no S0) and transformers' `Sam3LiteTextTextModel` (an MCt implementation) for S0's text tower. Ours and
the peer are timed alternately, median of `--runs`.

    python benchmarks/bench_inference.py --variants mobileclip-s0,mobileclip-s2,mobileclip-b --batch-sizes 1,8
    python benchmarks/bench_inference.py --device cuda --dtype bfloat16 --batch-sizes 1,256 --compile
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation import latency  # noqa: E402


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="mobileclip-s0,mobileclip-s2,mobileclip-b,mobileclip2-s4")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    results = []
    print(f"device={args.device} dtype={args.dtype} threads={args.threads or torch.get_num_threads()} "
          f"torch={torch.__version__} (ratio = peer time / our time; > 1 means ours is faster)")
    print(f"{'variant':<17}{'encoder':>8}{'batch':>6}{'ours /s':>10}{'peer /s':>10}{'ratio':>8}{'max|diff|':>11}  peer")
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        latency_args = [
            "--variant", variant, "--reparameterize", "--batch-sizes", args.batch_sizes, "--device", args.device,
            "--dtype", args.dtype, "--runs", str(args.runs), "--warmup", str(args.warmup),
        ]
        latency_args += ["--threads", str(args.threads)] if args.threads else []
        latency_args += ["--compile"] if args.compile else []
        rows, peer_name = latency.run(latency.parse_args(latency_args))
        for row in rows:
            ratio = row["peer_over_ours"]
            diff = row["max_abs_diff"]
            print(
                f"{variant:<17}{row['encoder']:>8}{row['batch_size']:>6}{row['ours_items_per_s']:>10.1f}"
                f"{row['peer_items_per_s'] or float('nan'):>10.1f}{ratio or float('nan'):>7.2f}x"
                f"{diff if diff is not None else float('nan'):>11.1e}  {peer_name}"
            )
            results.append({"variant": variant, "peer": peer_name, **row})
    return results


if __name__ == "__main__":
    main()
