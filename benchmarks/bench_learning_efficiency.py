"""The main job over several seeds: learning-efficiency factor and final scores, mean and spread, one plot.

    python benchmarks/bench_learning_efficiency.py [--seeds 0 1 2] [--output-root runs/learning-efficiency]
        [--scale default] [--parallel 2] [-- extra quickstart flags]

Runs `python -m training.quickstart --seed S --output-dir ROOT/seed_S` for each seed that has no finished
`learning_curves.json` yet (`--parallel N` runs N seeds at once, one thread each), then prints a Markdown table
(per seed and mean +- sample standard deviation) of the factor on the primary metric (names mean reciprocal rank on
the reported Noto images) with its bootstrap 90% interval, the factor on names top-5, and the final held-out scores
of the plain and the reinforced student, and writes `ROOT/learning_curves_seeds.png` (every seed's primary-metric
curves).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [("unseen_style", "names/mrr"), ("unseen_style", "names/acc5"), ("unseen_style", "names/acc1"),
           ("unseen_style", "retrieval/image_retrieval_recall@5"), ("val", "retrieval/image_retrieval_recall@5"),
           ("val", "retrieval/text_retrieval_recall@5")]
PRIMARY, SECONDARY = "names/mrr", "names/acc5"


def run_seed(seed: int, root: Path, scale: str, threads: int, extra: list[str]) -> Path:
    output = root / f"seed_{seed}"
    if not (output / "learning_curves.json").is_file():
        command = [sys.executable, "-m", "training.quickstart", "--scale", scale, "--seed", str(seed),
                   "--output-dir", str(output), "--num-threads", str(threads), *extra]
        with open(root / f"seed_{seed}.log", "w") as log:
            subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    return output / "learning_curves.json"


def _spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} +- {std:.{digits}f}"


def summarize(curves_by_seed: dict[int, dict]) -> str:
    header = (["seed", f"factor ({PRIMARY})", "90% interval", f"factor ({SECONDARY})"]
              + [f"{s} {m} clip / reinforced" for s, m in COLUMNS] + [f"teacher unseen {PRIMARY}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    factors = {seed: curves["factors"][PRIMARY]["factor"] for seed, curves in curves_by_seed.items()}
    secondary = {seed: curves["factors"][SECONDARY]["factor"] for seed, curves in curves_by_seed.items()}
    for seed, curves in curves_by_seed.items():
        low, high = curves["factors"][PRIMARY]["interval_90"]
        cells = [str(seed), f"{factors[seed]:.2f}x", f"{low:.2f}-{high:.2f}x", f"{secondary[seed]:.2f}x"]
        for set_name, metric in COLUMNS:
            plain, reinforced = (100 * curves["students"][mode][-1][set_name][metric] for mode in ("clip", "reinforced"))
            cells.append(f"{plain:.2f} / {reinforced:.2f}")
        cells.append(f"{100 * curves['teacher']['unseen_style'][PRIMARY]:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    mean = ["mean +- std", _spread(list(factors.values())) + "x", "", _spread(list(secondary.values())) + "x"]
    for set_name, metric in COLUMNS:
        finals = {mode: [c["students"][mode][-1][set_name][metric] for c in curves_by_seed.values()]
                  for mode in ("clip", "reinforced")}
        mean.append(f"{_spread(finals['clip'], 100)} / {_spread(finals['reinforced'], 100)}")
    mean.append(_spread([c["teacher"]["unseen_style"][PRIMARY] for c in curves_by_seed.values()], 100))
    lines.append("| " + " | ".join(mean) + " |")
    return "\n".join(lines)


def plot_seeds(curves_by_seed: dict[int, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for seed, curves in curves_by_seed.items():
        for mode, color in (("clip", "tab:blue"), ("reinforced", "tab:orange")):
            points = curves["students"][mode]
            axis.plot([p["step"] for p in points], [100 * p["unseen_style"][PRIMARY] for p in points],
                      color=color, alpha=0.75, marker="o", markersize=2,
                      label=f"{mode} student" if seed == min(curves_by_seed) else None)
        axis.axhline(100 * curves["teacher"]["unseen_style"][PRIMARY], color="tab:green", linestyle="--",
                     alpha=0.5, label="teacher" if seed == min(curves_by_seed) else None)
    axis.set_xlabel("training step")
    axis.set_ylabel("mean reciprocal rank of the name among 1,906, unseen style (%)")
    axis.set_title(f"Plain CLIP vs reinforced training, seeds {sorted(curves_by_seed)}", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output-root", default="runs/learning-efficiency")
    parser.add_argument("--scale", default="default")
    parser.add_argument("--parallel", type=int, default=1, help="seeds run at once (each with 1 thread if > 1)")
    args, extra = parser.parse_known_args(argv)
    extra = [flag for flag in extra if flag != "--"]
    root = Path(args.output_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    threads = 1 if args.parallel > 1 else 2
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        paths = dict(zip(args.seeds, pool.map(lambda s: run_seed(s, root, args.scale, threads, extra), args.seeds)))
    curves = {seed: json.loads(path.read_text()) for seed, path in paths.items()}
    table = summarize(curves)
    print(table)
    print(f"\nplot: {plot_seeds(curves, root / 'learning_curves_seeds.png')}")
    return table


if __name__ == "__main__":
    main()
