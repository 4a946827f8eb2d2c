"""Evaluation with the fused form vs the train-time form, in the same run: zero-shot classification end to end.

    python -m benchmarks.bench_fused_inference [--variant mobileclip-s0] [--images 256] [--rounds 3] [--batch-size 64]

A random-weight model of `--variant` (BatchNorm statistics moved off their init, so every fused branch matters) is
saved as a folder; `evaluation.zero_shot`'s pipeline (`run_zero_shot`: class prompts, image preprocessing,
encoding, logits) classifies the first `--images` bundled Noto emoji among the bundled categories twice per round,
alternating: ours = the model as `load_evaluated_model` loads it (fused, what evaluation runs since issue 22), peer
= the same folder in its train-time form (`MobileCLIPModel.from_pretrained`, what evaluation ran before). Prints
the median images/s of each, the ratio, and the largest logit difference between the two.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from evaluation.common import load_evaluated_model, make_accelerator
from evaluation.datasets_io import load_eval_dataset
from evaluation.model_zoo import randomize_statistics_
from evaluation.zero_shot import prepare_zero_shot, run_zero_shot
from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel, MobileCLIPProcessor
from modeling_mobileclip.model_folder import write_model_folder
from training.quickstart.settings import EMOJI_DIR

CLASSNAMES_KEY = "category_prompt_names"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="mobileclip-s0")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    accelerator = make_accelerator(cpu=True)
    loaded = load_eval_dataset(str(EMOJI_DIR), f"train[:{args.images}]", "google")
    classnames = json.loads((EMOJI_DIR / "classnames.json").read_text())[CLASSNAMES_KEY]
    task = prepare_zero_shot(loaded, "image", "category", classnames, ["an emoji of {c}."])
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        model = randomize_statistics_(MobileCLIPModel(MobileCLIPConfig.from_variant(args.variant)), 0).eval()
        write_model_folder(model, Path(folder), MobileCLIPProcessor.from_variant(args.variant))
        fused, processor = load_evaluated_model(folder, accelerator)
        train_time = MobileCLIPModel.from_pretrained(folder).eval()
        seconds: dict[str, list[float]] = {"fused": [], "train-time": []}
        logits = {}
        for _ in range(args.rounds):
            for name, candidate in (("fused", fused), ("train-time", train_time)):
                start = time.perf_counter()
                logits[name] = run_zero_shot(candidate, processor, task, accelerator, args.batch_size).logits
                seconds[name].append(time.perf_counter() - start)
    rates = {name: args.images / statistics.median(values) for name, values in seconds.items()}
    difference = float((logits["fused"] - logits["train-time"]).abs().max())
    print(f"{args.variant}, {args.images} Noto emoji x {len(task.classnames)} categories, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} alternating rounds")
    print(f"ours (fused, as evaluation loads it): {rates['fused']:7.1f} images/s")
    print(f"peer (train-time form, before):       {rates['train-time']:7.1f} images/s")
    ratio = rates["fused"] / rates["train-time"]
    print(f"fused / train-time = {ratio:.2f}   max |logit difference| = {difference:.2e}")
    return {"rates": rates, "max_logit_difference": difference}


if __name__ == "__main__":
    main()
