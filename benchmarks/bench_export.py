"""Exported encoders on onnxruntime (CPU) vs PyTorch eager: ours reparameterized and the open_clip / timm peers, in one
process, runs alternated so that load changes on a shared machine hit every contender alike.

    python benchmarks/bench_export.py --variants mobileclip-s0[,mobileclip-s2] [--batch-sizes 1,8] [--runs 20] \
        [--warmup 3] [--threads 1] [--output results.json]

Models come from `evaluation.latency.build_models` (random weights: ours receives the peer's, so both compute the
same function): the peer is open_clip's model of the variant, or for MobileCLIP-S0 (absent from open_clip) timm's
`fastvit_mci0` image tower and transformers' MCt text tower (`Sam3LiteTextTextModel`, its own random weights). Both
PyTorch models are fused (ours with `reparameterize()`, the peer with timm's `reparameterize_model`). Ours is then
exported with `modeling_mobileclip.export` to ONNX fp32, int8 static (calibrated on 64 Noto emoji images and
captions of the bundled set) and int8 dynamic, and each graph runs in its own onnxruntime session (CPU provider, the
same number of threads as PyTorch). Reported: median ms per batch and ratios (above 1: the export is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation import latency  # noqa: E402

EMOJI = Path(__file__).resolve().parents[1] / "dataset_scripts" / "data" / "emoji"
ONNX_SETTINGS = {  # name -> export() keywords
    "onnx fp32": {},
    "onnx int8-static": {"quantize": "int8", "int8_mode": "static"},
    "onnx int8-dynamic": {"quantize": "int8", "int8_mode": "dynamic"},
}


def export_settings(ours, variant: str, folder: Path) -> dict[str, Path]:
    """Exports `ours` once per ONNX setting; returns setting -> export folder."""
    from modeling_mobileclip import MobileCLIPProcessor
    from modeling_mobileclip.export import export, load_calibration_data

    processor = MobileCLIPProcessor.from_variant(variant)
    calibration = load_calibration_data(str(EMOJI), 64, "google")
    folders = {}
    for name, keywords in ONNX_SETTINGS.items():
        folders[name] = folder / name.replace(" ", "_")
        static = keywords.get("int8_mode") == "static"
        export(ours, processor, folders[name], fidelity_samples=0, calibration=calibration if static else None,
               verbose=False, **keywords)
    return folders


@torch.inference_mode()
def measure(contenders: dict, runs: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each contender, calls interleaved round-robin."""
    for _ in range(warmup):
        for function in contenders.values():
            function()
    times = {name: [] for name in contenders}
    for _ in range(runs):
        for name, function in contenders.items():
            times[name].append(latency.seconds_per_call(torch.device("cpu"), function))
    return {name: statistics.median(values) for name, values in times.items()}


def bench_variant(variant: str, batch_sizes: list[int], runs: int, warmup: int, threads: int) -> list[dict]:
    from timm.utils import reparameterize_model

    from modeling_mobileclip.export import onnx_session

    ours, peer = latency.build_models(variant, None)
    with tempfile.TemporaryDirectory(prefix="bench_export_") as scratch:
        folders = export_settings(ours, variant, Path(scratch))
        ours.reparameterize()
        reparameterize_model(peer.module, inplace=True)
        sessions = {name: {c: onnx_session(folders[name] / f"{c}_encoder.onnx", threads) for c in ("image", "text")}
                    for name in ONNX_SETTINGS}
        rows = []
        for batch in batch_sizes:
            pixel_values, input_ids = latency.example_inputs(ours, batch, torch.device("cpu"), torch.float32)
            for encoder, tensor, ours_fn, peer_fn in (("image", pixel_values, ours.encode_image, peer.encode_image),
                                                      ("text", input_ids, ours.encode_text, peer.encode_text)):
                array = tensor.numpy()
                contenders = {"torch ours": lambda f=ours_fn, t=tensor: f(t)}
                if peer_fn is not None:
                    contenders["torch peer"] = lambda f=peer_fn, t=tensor: f(t)
                for name in ONNX_SETTINGS:
                    session = sessions[name][encoder]
                    input_name = session.get_inputs()[0].name
                    contenders[name] = lambda s=session, n=input_name, a=array: s.run(None, {n: a})
                with torch.inference_mode():  # the exported fp32 graph computes our normalised embeddings
                    reference = torch.nn.functional.normalize(ours_fn(tensor), dim=-1).numpy()
                    exported = contenders["onnx fp32"]()[0]
                medians = measure(contenders, runs, warmup)
                fastest_torch = min(medians[n] for n in ("torch ours", "torch peer") if n in medians)
                row = {"variant": variant, "encoder": encoder, "batch": batch, "peer": peer.name,
                       "ms": {name: 1000 * seconds for name, seconds in medians.items()},
                       "fp32_max_abs_diff": float(np.abs(exported - reference).max()),
                       "torch_ours_over_fp32": medians["torch ours"] / medians["onnx fp32"],
                       "fastest_torch_over_fp32": fastest_torch / medians["onnx fp32"],
                       "fp32_over_int8_static": medians["onnx fp32"] / medians["onnx int8-static"],
                       "fp32_over_int8_dynamic": medians["onnx fp32"] / medians["onnx int8-dynamic"]}
                rows.append(row)
                print(format_row(row), flush=True)
    return rows


HEADER = (f"{'variant':<15}{'enc':>6}{'b':>3} | {'torch ours':>10}{'torch peer':>11}{'ort fp32':>9}{'ort int8s':>10}"
          f"{'ort int8d':>10} | {'ours/fp32':>9}{'fastest/fp32':>13}{'fp32/int8s':>11}{'fp32/int8d':>11}"
          f"{'max|diff|':>10}")


def format_row(row: dict) -> str:
    ms = row["ms"]
    return (f"{row['variant']:<15}{row['encoder']:>6}{row['batch']:>3} | {ms['torch ours']:>10.1f}"
            f"{ms.get('torch peer', float('nan')):>11.1f}{ms['onnx fp32']:>9.1f}{ms['onnx int8-static']:>10.1f}"
            f"{ms['onnx int8-dynamic']:>10.1f} | {row['torch_ours_over_fp32']:>8.2f}x"
            f"{row['fastest_torch_over_fp32']:>12.2f}x{row['fp32_over_int8_static']:>10.2f}x"
            f"{row['fp32_over_int8_dynamic']:>10.2f}x{row['fp32_max_abs_diff']:>10.1e}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="mobileclip-s0")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch and onnxruntime intra-op threads")
    parser.add_argument("--output", default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime

    print(f"CPU, {args.threads} thread(s), median ms per batch of {args.runs} alternated runs after {args.warmup} "
          f"warm-up; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}. Ratios above 1: the export "
          "is faster (fastest = the faster of torch ours / torch peer).")
    print(HEADER)
    rows = []
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        rows += bench_variant(variant, [int(b) for b in args.batch_sizes.split(",")], args.runs, args.warmup,
                              args.threads)
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
