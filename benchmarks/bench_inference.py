"""Inference throughput: ours (reparameterized) vs the peer implementation with the same weights, same process.

Peers: open_clip (`MobileCLIP-S1/S2/B`, `MobileCLIP2-*`) for both encoders, fused with timm's
`reparameterize_model` (the peers' own best form); timm `fastvit_mci0` for MobileCLIP-S0's image tower (open_clip
has no S0) and transformers' `Sam3LiteTextTextModel` (an MCt implementation, unfusable) for S0's text tower.

    python benchmarks/bench_inference.py --variants mobileclip-s0,mobileclip-s2 --batch-sizes 1,8 --device cpu
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.model_zoo import randomize_statistics_  # noqa: E402
from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel  # noqa: E402
from modeling_mobileclip.convert import convert_checkpoint  # noqa: E402


OPEN_CLIP_NAMES = {
    "mobileclip-s1": "MobileCLIP-S1",
    "mobileclip-s2": "MobileCLIP-S2",
    "mobileclip-b": "MobileCLIP-B",
    "mobileclip2-s0": "MobileCLIP2-S0",
    "mobileclip2-s2": "MobileCLIP2-S2",
    "mobileclip2-b": "MobileCLIP2-B",
    "mobileclip2-s3": "MobileCLIP2-S3",
    "mobileclip2-s4": "MobileCLIP2-S4",
    "mobileclip2-l-14": "MobileCLIP2-L-14",
}


def timed_pair(ours_fn, peer_fn, repeats: int, warmup: int, device: str) -> tuple[float, float]:
    """Median seconds per call of two functions, timed alternately so that load changes hit both equally."""

    def once(function) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(warmup):
        ours_fn(), peer_fn()
    ours, peer = [], []
    for _ in range(repeats):
        ours.append(once(ours_fn))
        peer.append(once(peer_fn))
    return statistics.median(ours), statistics.median(peer)


def build_pair(variant: str, workdir: Path, device: torch.device):
    """Returns (ours, peer_image_fn, peer_text_fn, peer_name) sharing the same weights."""
    import open_clip
    from timm.utils import reparameterize_model

    torch.manual_seed(0)
    if variant in OPEN_CLIP_NAMES:
        peer = randomize_statistics_(open_clip.create_model(OPEN_CLIP_NAMES[variant], pretrained=None)).eval()
        from safetensors.torch import save_file

        path = workdir / f"{variant}.safetensors"
        save_file({k: v.contiguous() for k, v in peer.state_dict().items()}, str(path))
        overrides = {"vision_config": {"apple_vit_stem": False}} if variant == "mobileclip-b" else {}
        config = MobileCLIPConfig.from_variant(variant, **overrides)
        ours = convert_checkpoint("open_clip", variant, path, config=config)
        peer.visual.trunk = reparameterize_model(peer.visual.trunk)
        peer.to(device)
        return ours.reparameterize().to(device), peer.encode_image, peer.encode_text, f"open_clip {OPEN_CLIP_NAMES[variant]}"
    if variant == "mobileclip-s0":
        ours = randomize_statistics_(MobileCLIPModel(MobileCLIPConfig.from_variant(variant))).eval()
        peer_image = reparameterize_model(ours.vision_model.backbone).to(device)  # deep copy: timm's fused FastViT
        peer_text = _sam3_lite_text_peer(device)
        return ours.reparameterize().to(device), peer_image, peer_text, "timm fastvit_mci0 + transformers Sam3LiteText (MCt)"
    raise SystemExit(f"No peer wired for {variant}; choose from mobileclip-s0 and {', '.join(OPEN_CLIP_NAMES)}.")


def _sam3_lite_text_peer(device: torch.device):
    """transformers' MCt text encoder (EfficientSAM3 LiteText), same shapes as ours; random weights suffice for timing
    (its RepMixer blocks cannot fuse, which is exactly the difference measured)."""
    from transformers.models.sam3_lite_text.modeling_sam3_lite_text import (
        Sam3LiteTextTextConfig,
        Sam3LiteTextTextModel,
    )

    model = Sam3LiteTextTextModel(Sam3LiteTextTextConfig(num_hidden_layers=6, use_repmixer_blocks=True)).eval()
    model.to(device)
    return lambda input_ids: model(input_ids=input_ids).pooler_output


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="mobileclip-s0,mobileclip-s2,mobileclip-b")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    device = torch.device(args.device)
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'variant':<16}{'encoder':>8}{'batch':>6}{'ours items/s':>14}{'peer items/s':>14}{'ratio':>8}  peer")
    with tempfile.TemporaryDirectory() as workdir, torch.inference_mode():
        for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
            ours, peer_image, peer_text, peer_name = build_pair(variant, Path(workdir), device)
            size = ours.config.vision_config.image_size
            for batch in batch_sizes:
                images = torch.rand(batch, 3, size, size, device=device)
                tokens = torch.zeros(batch, 77, dtype=torch.long, device=device)
                tokens[:, :8] = torch.tensor([49406, 320, 1125, 539, 320, 2368, 269, 49407])
                for encoder, ours_fn, peer_fn, inputs in (
                    ("image", ours.encode_image, peer_image, images),
                    ("text", ours.encode_text, peer_text, tokens),
                ):
                    ours_s, peer_s = timed_pair(
                        lambda: ours_fn(inputs), lambda: peer_fn(inputs), args.repeats, args.warmup, args.device
                    )
                    print(
                        f"{variant:<16}{encoder:>8}{batch:>6}{batch / ours_s:>14.1f}{batch / peer_s:>14.1f}"
                        f"{peer_s / ours_s:>7.2f}x  {peer_name}"
                    )


if __name__ == "__main__":
    main()
