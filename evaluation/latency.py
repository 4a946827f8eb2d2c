"""Image- and text-encoder latency and throughput of a MobileCLIP model next to its reference implementation.

    python -m evaluation.latency (--model DIR_OR_ID | --variant NAME) [--device cpu|cuda] [--batch-sizes 1,8,256] \
        [--reparameterize] [--compile] [--dtype float32|float16|bfloat16] [--runs 20] [--warmup 3] [--threads N]

The peer is measured in the same process, interleaved run by run with ours: open_clip's model of the same variant
(MobileCLIP-S1/S2/B, MobileCLIP2-*; v1 S3/S4/L-14 share MobileCLIP2's architectures) or, where open_clip has none
(MobileCLIP-S0, the dev preset), timm's image tower (`fastvit_mci0`). With `--variant` our model receives the
peer's random weights through `modeling_mobileclip.convert`, so both compute the same function (the printed
max |ours - peer| shows it); with `--model` the peer keeps random weights. Reported per encoder and batch size:
median milliseconds per batch over `--runs` runs after `--warmup` runs, items per second, and peer/ours
(above 1: ours is faster). `--reparameterize` fuses both models' train-time branches.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import timm
import torch
from timm.utils import reparameterize_model
from transformers.models.sam3_lite_text.modeling_sam3_lite_text import Sam3LiteTextTextConfig, Sam3LiteTextTextModel

from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel
from modeling_mobileclip.cli import run_main
from modeling_mobileclip.configuration_mobileclip import variant_preset
from modeling_mobileclip.convert import convert_state_dict, load_converted
from modeling_mobileclip.loading import is_mobileclip_config, read_config

from .common import EvaluationInputError, write_json


# Our variant name -> open_clip model name (architecture only; weights stay random). Also the peers of
# `benchmarks/bench_train_step.py`.
OPEN_CLIP_PEERS = {
    "mobileclip-s1": "MobileCLIP-S1",
    "mobileclip-s2": "MobileCLIP-S2",
    "mobileclip-b": "MobileCLIP-B",
    "mobileclip-s3": "MobileCLIP2-S3",
    "mobileclip-s4": "MobileCLIP2-S4",
    "mobileclip-l-14": "MobileCLIP2-L-14",
    "mobileclip2-s0": "MobileCLIP2-S0",
    "mobileclip2-s2": "MobileCLIP2-S2",
    "mobileclip2-b": "MobileCLIP2-B",
    "mobileclip2-s3": "MobileCLIP2-S3",
    "mobileclip2-s4": "MobileCLIP2-S4",
    "mobileclip2-l-14": "MobileCLIP2-L-14",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(kw_only=True)
class LatencyConfig:
    """One field per command-line option (`--batch-sizes` is `batch_sizes`), with the same defaults; exactly one of
    `model` (a saved MobileCLIP folder or Hub id) and `variant` (random weights) is set."""

    model: str | None = None
    variant: str | None = None
    device: str = "cpu"
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 256])
    reparameterize: bool = False
    compile: bool = False
    dtype: str = "float32"
    runs: int = 20
    warmup: int = 3
    threads: int | None = None
    output: str | None = None


@dataclass
class Peer:
    """The reference model: a name and its encoders (`encode_text` is None for image-only timm peers)."""

    name: str
    module: torch.nn.Module
    encode_image: Callable[[torch.Tensor], torch.Tensor]
    encode_text: Callable[[torch.Tensor], torch.Tensor] | None
    same_weights: bool = True  # False with --model: the peer keeps random weights, outputs are not comparable
    text_same_weights: bool | None = None  # None: as same_weights; False: a text peer of random weights (MCt)


def build_models(variant: str | None, model_id: str | None) -> tuple[torch.nn.Module, Peer]:
    """(our model, its peer). With `variant`, ours takes the peer's weights so both compute the same function."""
    if model_id is not None:
        # Latency compares MobileCLIP with its peers only, so a MobileCLIP checkpoint is required and loads with this
        # package's classes: the code files saved next to it never run (no --trust-remote-code needed).
        config = read_config(model_id)
        if not is_mobileclip_config(config):
            raise EvaluationInputError(f"{model_id} is model_type {config.get('model_type')!r}, not a MobileCLIP "
                                       "checkpoint; evaluation.latency measures MobileCLIP models against their "
                                       "peers.")
        ours = MobileCLIPModel.from_pretrained(model_id)
        variant = ours.config.variant
    else:
        # open_clip's MobileCLIP-B runs timm's ViT stem: use it too so both compute the same function.
        overrides = {"vision_config": {"apple_vit_stem": False}} if variant in OPEN_CLIP_PEERS else {}
        ours = MobileCLIPModel(MobileCLIPConfig.from_variant(variant, **overrides))
    ours.eval()
    if variant in OPEN_CLIP_PEERS:
        import open_clip  # optional dependency: only the open_clip peers need it

        peer_model = open_clip.create_model(OPEN_CLIP_PEERS[variant], pretrained=None).eval()
        if model_id is None:
            load_converted(ours, convert_state_dict(peer_model.state_dict(), "open_clip", ours), "open_clip peer")
        peer = Peer(f"open_clip {OPEN_CLIP_PEERS[variant]}", peer_model, peer_model.encode_image, peer_model.encode_text,
                    same_weights=model_id is None)
    else:
        vision = ours.config.vision_config
        backbone = timm.create_model(vision.backbone, pretrained=False, num_classes=vision.projection_dim,
                                     **(vision.backbone_kwargs or {})).eval()
        if model_id is None:
            ours.vision_model.backbone.load_state_dict(backbone.state_dict())
        text_peer = _mct_text_peer(ours.config.text_config)
        if text_peer is None:
            peer = Peer(f"timm {vision.backbone} (image tower only)", backbone, backbone, None,
                        same_weights=model_id is None)
        else:
            # The text peer has random weights of the same shapes: speed only, no output check for text.
            modules = torch.nn.ModuleDict({"image": backbone, "text": text_peer})
            peer = Peer(f"timm {vision.backbone} + transformers Sam3LiteText (MCt)", modules, backbone,
                        lambda input_ids: text_peer(input_ids=input_ids).pooler_output,
                        same_weights=model_id is None, text_same_weights=False)
    return ours, peer


def _mct_text_peer(text_config) -> torch.nn.Module | None:
    """transformers' MCt text encoder (EfficientSAM3 LiteText, not fusable) for MobileCLIP-S0's text tower."""
    if not text_config.num_repmixer_blocks:
        return None
    config = Sam3LiteTextTextConfig(
        num_hidden_layers=text_config.num_hidden_layers + text_config.num_repmixer_blocks,
        hidden_size=text_config.hidden_size,
        intermediate_size=text_config.intermediate_size,
        num_attention_heads=text_config.num_attention_heads,
        use_repmixer_blocks=True,
    )
    return Sam3LiteTextTextModel(config).eval()


def example_inputs(model: torch.nn.Module, batch_size: int, device: torch.device, dtype: torch.dtype):
    """Random pixel values and random token ids (SOT ... EOT, zero padded) of the model's sizes."""
    generator = torch.Generator().manual_seed(batch_size)
    size = model.config.vision_config.image_size
    pixel_values = torch.rand(batch_size, 3, size, size, generator=generator)
    context = model.config.text_config.max_position_embeddings
    input_ids = torch.zeros(batch_size, context, dtype=torch.long)
    input_ids[:, 0] = 49406
    input_ids[:, 1:11] = torch.randint(1000, 40000, (batch_size, 10), generator=generator)
    input_ids[:, 11] = 49407
    return pixel_values.to(device, dtype), input_ids.to(device)


def seconds_per_call(device: torch.device, function: Callable, *arguments) -> float:
    """Wall-clock seconds of `function(*arguments)` on `device`."""
    # CUDA runs kernels asynchronously: synchronising before and after times the work, not just its launch.
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    function(*arguments)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@torch.inference_mode()
def measure(ours_fn: Callable, peer_fn: Callable | None, argument: torch.Tensor, device: torch.device,
            runs: int, warmup: int, compare: bool = True) -> tuple[float, float | None, float | None]:
    """(ours median s, peer median s, max |ours - peer| if `compare`): runs interleaved so both see the same
    machine state."""
    max_diff = None
    if peer_fn is not None and compare:
        max_diff = float((ours_fn(argument).float() - peer_fn(argument).float()).abs().max())
    for _ in range(warmup):
        ours_fn(argument)
        if peer_fn is not None:
            peer_fn(argument)
    ours_times, peer_times = [], []
    for _ in range(runs):
        ours_times.append(seconds_per_call(device, ours_fn, argument))
        if peer_fn is not None:
            peer_times.append(seconds_per_call(device, peer_fn, argument))
    return statistics.median(ours_times), statistics.median(peer_times) if peer_times else None, max_diff


def run(config: LatencyConfig) -> tuple[list[dict], str]:
    """Measures every encoder and batch size; returns (one row per measurement, the peer's name)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    dtype = DTYPES[config.dtype]
    ours, peer = build_models(config.variant, config.model)
    if config.reparameterize:
        ours.reparameterize()
        reparameterize_model(peer.module, inplace=True)
    ours.to(device, dtype)
    peer.module.to(device, dtype)
    encoders = {"image": (ours.encode_image, peer.encode_image), "text": (ours.encode_text, peer.encode_text)}
    if config.compile:
        encoders = {k: (torch.compile(o), p and torch.compile(p)) for k, (o, p) in encoders.items()}
    rows = []
    for batch_size in config.batch_sizes:
        pixel_values, input_ids = example_inputs(ours, batch_size, device, dtype)
        for encoder, argument in (("image", pixel_values), ("text", input_ids)):
            ours_fn, peer_fn = encoders[encoder]
            compare = peer.same_weights if encoder == "image" or peer.text_same_weights is None else peer.text_same_weights
            ours_s, peer_s, max_diff = measure(ours_fn, peer_fn, argument, device, config.runs, config.warmup, compare)
            rows.append({
                "encoder": encoder, "batch_size": batch_size, "ours_ms": 1000 * ours_s,
                "peer_ms": None if peer_s is None else 1000 * peer_s,
                "ours_items_per_s": batch_size / ours_s,
                "peer_items_per_s": None if peer_s is None else batch_size / peer_s,
                "peer_over_ours": None if peer_s is None else peer_s / ours_s, "max_abs_diff": max_diff,
            })
    return rows, peer.name


def format_rows(rows: list[dict], ours_name: str, peer_name: str) -> str:
    """The side-by-side table."""
    header = f"{'encoder':<7} {'batch':>5} {'ours ms':>10} {'peer ms':>10} {'peer/ours':>9} {'ours /s':>9} {'peer /s':>9} {'max|diff|':>9}"
    lines = [f"ours: {ours_name}    peer: {peer_name}", header, "-" * len(header)]
    def show(value, spec):
        return format(value, spec) if value is not None else format("-", spec.split(".")[0].rstrip("f").rstrip("e"))

    for r in rows:
        lines.append(f"{r['encoder']:<7} {r['batch_size']:>5} {r['ours_ms']:>10.2f} {show(r['peer_ms'], '>10.2f')} "
                     f"{show(r['peer_over_ours'], '>9.2f')} {r['ours_items_per_s']:>9.1f} "
                     f"{show(r['peer_items_per_s'], '>9.1f')} {show(r['max_abs_diff'], '>9.1e')}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> LatencyConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="saved model folder or Hub id")
    source.add_argument("--variant", help="build this variant with random weights, e.g. mobileclip-s2")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch-sizes", default="1,8,256",
                        type=lambda s: [int(b) for b in s.split(",")], help="comma-separated (default 1,8,256)")
    parser.add_argument("--reparameterize", action="store_true", help="fuse train-time branches (both models)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models' encoders")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--runs", type=int, default=20, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--output", default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.variant:
        args.variant = variant_preset(args.variant)["variant"]  # validates the name, normalises spelling
    return LatencyConfig(**vars(args))


def main(argv: list[str] | None = None) -> list[dict]:
    """Command-line entry point; returns the measured rows."""
    config = parse_args(argv)
    rows, peer_name = run(config)
    ours_name = config.variant or config.model
    setting = f"{config.device}, {config.dtype}, {torch.get_num_threads()} threads, {'fused' if config.reparameterize else 'unfused'}" \
              f"{', compiled' if config.compile else ''}, median of {config.runs} runs after {config.warmup} warm-up"
    print(f"Latency ({setting})")
    print(format_rows(rows, ours_name, peer_name))
    if config.output:
        write_json(config.output, {"model": ours_name, "peer": peer_name, "setting": setting, "rows": rows})
    return rows


if __name__ == "__main__":
    run_main(main)
