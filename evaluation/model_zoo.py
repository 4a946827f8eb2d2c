"""Model-zoo report: builds every MobileCLIP variant, checks that reparameterization keeps the outputs, and prints
parameter counts and CPU latency. Needs no weights or network (random weights with randomised BatchNorm
statistics and layer scales, so every fused branch matters).

    python -m evaluation.model_zoo                      # all 13 variants
    python -m evaluation.model_zoo --variants mobileclip-s0,mobileclip2-s2 --repeats 5
"""

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from modeling_mobileclip import VARIANTS, MobileCLIPConfig, MobileCLIPModel
from modeling_mobileclip.cli import run_main


@torch.no_grad()
def randomize_statistics_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Randomises BatchNorm statistics/affine and layer scales so that fusing is a real check, not a no-op."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    for name, param in model.named_parameters():
        if "layer_scale" in name or name.endswith("gamma"):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model


def median_ms(function, repeats: int, warmup: int = 2) -> float:
    """Median wall time of `function()` in milliseconds after `warmup` untimed calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def count_parameters(module: nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def tower_parameters(model: MobileCLIPModel) -> tuple[float, float]:
    return count_parameters(model.vision_model), count_parameters(model.text_model) + count_parameters(
        model.text_projection
    )


@torch.inference_mode()
def report_variant(name: str, repeats: int) -> dict:
    """Builds one variant, fuses it, and measures the fusion error and batch-1 latency of both encoders."""
    torch.manual_seed(0)
    model = randomize_statistics_(MobileCLIPModel(MobileCLIPConfig.from_variant(name))).eval()
    size = model.config.vision_config.image_size
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    tokens = torch.zeros(1, 77, dtype=torch.long)
    tokens[0, :6] = torch.tensor([49406, 320, 1125, 539, 320, 49407])  # "a photo of a" + EOT

    train_image, train_text = tower_parameters(model)
    image_before, text_before = model.encode_image(image), model.encode_text(tokens)
    unfused_image_ms = median_ms(lambda: model.encode_image(image), repeats)
    model.reparameterize()
    fused_image, fused_text = tower_parameters(model)
    image_error = ((model.encode_image(image) - image_before).abs().max() / image_before.abs().max()).item()
    text_error = ((model.encode_text(tokens) - text_before).abs().max() / text_before.abs().max()).item()
    return dict(
        variant=name,
        image_params=train_image,
        text_params=train_text,
        image_params_fused=fused_image,
        text_params_fused=fused_text,
        image_fuse_error=image_error,
        text_fuse_error=text_error,
        image_ms_unfused=unfused_image_ms,
        image_ms=median_ms(lambda: model.encode_image(image), repeats),
        text_ms=median_ms(lambda: model.encode_text(tokens), repeats),
        resolution=size,
    )


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'variant':<18}{'res':>5}{'image M':>9}{'text M':>8}{'fused img M':>12}{'fuse err img':>13}"
        f"{'fuse err txt':>13}{'img ms':>9}{'img ms unfused':>15}{'txt ms':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['variant']:<18}{r['resolution']:>5}{r['image_params']:>9.1f}{r['text_params']:>8.1f}"
            f"{r['image_params_fused']:>12.2f}{r['image_fuse_error']:>13.1e}{r['text_fuse_error']:>13.1e}"
            f"{r['image_ms']:>9.1f}{r['image_ms_unfused']:>15.1f}{r['text_ms']:>8.1f}"
        )
    return "\n".join(lines)


@dataclass(kw_only=True)
class ModelZooConfig:
    """One field per command-line option, with the same defaults."""

    variants: str = ",".join(VARIANTS)
    """Comma-separated variant names."""
    repeats: int = 5
    tolerance: float = 1e-5


def model_zoo_report(settings: ModelZooConfig) -> list[dict]:
    """Measure every variant, print the table, and fail when reparameterization changes outputs beyond
    `settings.tolerance`; return the rows."""
    names = [n.strip() for n in settings.variants.split(",") if n.strip()]
    rows = [report_variant(name, settings.repeats) for name in tqdm(names, desc="variants", unit="model")]
    print(f"\nMobileCLIP model zoo (CPU, {torch.get_num_threads()} threads, batch 1, fp32, random weights)")
    print(format_table(rows))
    failures = [r["variant"] for r in rows if max(r["image_fuse_error"], r["text_fuse_error"]) > settings.tolerance]
    if failures:
        raise SystemExit(f"Reparameterization changed outputs beyond {settings.tolerance:g} for: {', '.join(failures)}")
    print(f"\nAll {len(rows)} variants: reparameterized outputs within {settings.tolerance:g} (relative) of "
          "train-time form.")
    return rows


def parse_args(argv: list[str] | None = None) -> ModelZooConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="max relative fusion error allowed")
    return ModelZooConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> list[dict]:
    return model_zoo_report(parse_args(argv))


if __name__ == "__main__":
    run_main(main)
