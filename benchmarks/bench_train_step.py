"""Training-step cost: reinforced vs clip vs online (ours), and ours vs open_clip's training step.

Three questions, each answered by timing two step functions alternately in one process on the same batch:

1. `reinforced / clip`: does distilling from stored teacher embeddings cost anything over CLIP training? Two
   baselines: `clip` on the same two caption batches (ground truth + synthetic, lambda = 0) and `clip-gt` on the
   ground-truth captions only (plain CLIP). Goal: reinforced / clip <= 1.05.
2. `online / reinforced`: what running the teacher ensemble in the loop would cost instead (two teachers).
3. `ours / open_clip`: our training step (model + loss + AdamW, through Accelerate as `training/train.py` runs
   it) vs open_clip's (`open_clip.create_model` + `ClipLoss`) for the same architecture and batch, as throughput
   ratio (goal >= 1.0x; >= 1.3x with `--compile`).

A step = forward of both towers, loss, backward, gradient clipping, AdamW step; the data pipeline is excluded
(batches are built once on the device). Steps are timed alternately (A, B, A, B, ...) so that load changes on a
shared machine hit both sides; medians are reported.

    python benchmarks/bench_train_step.py --variant mobileclip2-s0 --batch-size 8 --device cpu
    python benchmarks/bench_train_step.py --variant mobileclip2-s0 --batch-size 256 --device cuda --precision bf16 \
        --teachers open_clip:ViT-L-14:none,open_clip:ViT-L-14:none [--compile] [--json results.json]
"""

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate import Accelerator  # noqa: E402

from evaluation.latency import OPEN_CLIP_PEERS, seconds_per_call  # noqa: E402
from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel  # noqa: E402
from training.losses import ReinforcedCLIPLoss  # noqa: E402
from training.step import OnlineTeachers, compute_features, compute_losses, normalize_views  # noqa: E402
from training.train import parameter_groups  # noqa: E402


CAPTIONS = ["a photo of a dog playing in the snow", "an emoji of a smiling face with sunglasses",
            "two people riding bicycles along a river at sunset", "a bowl of ramen with an egg"]


def make_batch(config: MobileCLIPConfig, batch_size: int, teacher_dims: list[int], device: torch.device,
               generator: torch.Generator) -> dict:
    """A reinforced batch as the DataLoader delivers it: uint8 views, 77-token ids (0-padded), float16 targets."""
    size = config.image_size
    lengths = torch.randint(5, 30, (2, batch_size), generator=generator)

    def tokens(row_lengths):
        ids = torch.zeros(batch_size, 77, dtype=torch.long)
        for i, length in enumerate(row_lengths.tolist()):
            ids[i, 0] = 49406
            ids[i, 1:length] = torch.randint(1, 49000, (length - 1,), generator=generator)
            ids[i, length] = 49407
        return ids

    def teacher(count):
        parts = [torch.randn(count, d, generator=generator) for d in teacher_dims]
        parts = [torch.nn.functional.normalize(part, dim=-1) for part in parts]
        return torch.cat(parts, dim=-1).half()

    batch = {
        "views": torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=generator),
        "input_ids": tokens(lengths[0]), "syn_input_ids": tokens(lengths[1]),
        "image_emb": teacher(batch_size), "text_emb": teacher(batch_size), "syn_text_emb": teacher(batch_size),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["captions"] = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch_size)]
    batch["syn_captions"] = [CAPTIONS[(i + 1) % len(CAPTIONS)] for i in range(batch_size)]
    return batch


class TrainingStep:
    """What both sides of a comparison share, so that only the model and loss differ: AdamW over
    `training/train.py`'s parameter groups, Accelerate, optional channels-last and torch.compile, and the update."""

    def _prepare(self, model: torch.nn.Module, accelerator: Accelerator, channels_last: bool, compile_model: bool):
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(parameter_groups(model, 0.2), lr=1e-4, betas=(0.9, 0.95), eps=1e-6)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        if compile_model:
            self.model = torch.compile(self.model)
        self.accelerator, self.unwrapped = accelerator, accelerator.unwrap_model(self.model)

    def _update(self, loss: torch.Tensor) -> float:
        """Backward, gradient clipping, AdamW step, logit-scale clamp (as `training/train.py`); returns the loss."""
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.unwrapped.logit_scale.clamp_(0, math.log(100))
        return loss.item()


class OurStep(TrainingStep):
    """One step of `training/train.py`'s loop (same functions), in mode `reinforced`, `clip`, `clip-gt` or `online`."""

    def __init__(self, variant: str, mode: str, accelerator: Accelerator, batch: dict, teacher_dims: list[int],
                 teachers: OnlineTeachers | None, channels_last: bool, compile_model: bool, seed: int = 0):
        torch.manual_seed(seed)
        self._prepare(MobileCLIPModel(MobileCLIPConfig.from_variant(variant)), accelerator, channels_last,
                      compile_model)
        kd_weight = 0.0 if mode.startswith("clip") else 1.0
        self.loss_fn = ReinforcedCLIPLoss(kd_weight, teacher_dims if kd_weight else (),
                                          [100.0] * len(teacher_dims) if kd_weight else ())
        self.teachers = teachers if mode == "online" else None
        drop = {"clip": ("image_emb", "text_emb", "syn_text_emb"),
                "clip-gt": ("image_emb", "text_emb", "syn_text_emb", "syn_input_ids", "syn_captions"),
                "online": ("image_emb", "text_emb", "syn_text_emb"), "reinforced": ()}[mode]
        self.batch = {k: v for k, v in batch.items() if k not in drop}
        config = self.unwrapped.config
        mean = torch.tensor(config.image_mean, device=accelerator.device).view(1, 3, 1, 1)
        std = torch.tensor(config.image_std, device=accelerator.device).view(1, 3, 1, 1)
        self.normalize = lambda views: normalize_views(views, mean, std, channels_last)

    def __call__(self) -> float:
        features = compute_features(self.model, self.batch, self.normalize, self.teachers)
        losses = compute_losses(self.loss_fn, features, self.unwrapped.logit_scale)
        return self._update(losses["loss"])


class OpenCLIPStep(TrainingStep):
    """open_clip's training step for the same architecture: `model(images, texts)` + `ClipLoss`, AdamW."""

    def __init__(self, variant: str, accelerator: Accelerator, batch: dict, channels_last: bool, compile_model: bool,
                 seed: int = 0):
        import open_clip
        from open_clip.loss import ClipLoss

        torch.manual_seed(seed)
        self._prepare(open_clip.create_model(OPEN_CLIP_PEERS[variant], pretrained=None), accelerator, channels_last,
                      compile_model)
        self.loss_fn = ClipLoss()
        pixels = batch["views"].float() / 255.0
        self.images = pixels.contiguous(memory_format=torch.channels_last) if channels_last else pixels
        self.texts = batch["input_ids"]

    def __call__(self) -> float:
        image_features, text_features, logit_scale = self.model(self.images, self.texts)
        return self._update(self.loss_fn(image_features.float(), text_features.float(), logit_scale))


def timed_pair(first, second, repeats: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Median seconds per step of two step functions, timed alternately."""
    for _ in range(warmup):
        first(), second()
    times_first, times_second = [], []
    for _ in range(repeats):
        times_first.append(seconds_per_call(device, first))
        times_second.append(seconds_per_call(device, second))
    return statistics.median(times_first), statistics.median(times_second)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="mobileclip2-s0", help="student variant (mobileclip-tiny for a smoke run)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["no", "bf16", "fp16"], default="no")
    parser.add_argument("--teachers", default="open_clip:ViT-B-32:none,open_clip:ViT-B-32:none",
                        help="online-mode teacher specs (random weights with ':none'); real runs: two ViT-L-14")
    parser.add_argument("--teacher-dims", default="768,768", help="stored-embedding dims of the reinforced batch")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile both sides")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--skip", default="", help="comma-separated: modes,online,open_clip")
    parser.add_argument("--json", default=None, help="also write the results here")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    accelerator = Accelerator(mixed_precision=args.precision, cpu=args.device == "cpu")
    device = accelerator.device
    skip = {s for s in args.skip.split(",") if s}
    teacher_dims = [int(d) for d in args.teacher_dims.split(",")]
    config = MobileCLIPConfig.from_variant(args.variant)
    batch = make_batch(config, args.batch_size, teacher_dims, device, torch.Generator().manual_seed(0))
    flags = dict(channels_last=args.channels_last, compile_model=args.compile)
    results = {"variant": args.variant, "batch_size": args.batch_size, "device": str(device),
               "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "threads": torch.get_num_threads(), "precision": args.precision, "compile": args.compile,
               "channels_last": args.channels_last, "torch": torch.__version__}
    print(f"{args.variant}, batch {args.batch_size}, {results['device_name']}, precision {args.precision}, "
          f"compile {args.compile}, {results['threads']} threads; median seconds per step over {args.repeats}")

    def report(name, first_name, second_name, first_s, second_s):
        ratio = first_s / second_s
        results[name] = {first_name + "_s": first_s, second_name + "_s": second_s, "ratio": ratio}
        print(f"  {name:28s} {first_name} {1e3 * first_s:9.1f} ms | {second_name} {1e3 * second_s:9.1f} ms | "
              f"ratio {ratio:.3f}")

    if "modes" not in skip:
        reinforced = OurStep(args.variant, "reinforced", accelerator, batch, teacher_dims, None, **flags)
        for baseline in ("clip", "clip-gt"):
            other = OurStep(args.variant, baseline, accelerator, batch, teacher_dims, None, **flags)
            report(f"reinforced/{baseline}", "reinforced", baseline,
                   *timed_pair(reinforced, other, args.repeats, args.warmup, device))
            del other
    if "online" not in skip:
        specs = [s for s in args.teachers.split(",") if s]
        teachers = OnlineTeachers(specs, device, args.precision)
        results["teachers"] = specs
        online = OurStep(args.variant, "online", accelerator, batch, teachers.dims, teachers, **flags)
        reinforced = OurStep(args.variant, "reinforced", accelerator, batch, teacher_dims, None, **flags)
        report("online/reinforced", "online", "reinforced",
               *timed_pair(online, reinforced, args.repeats, args.warmup, device))
        del online, teachers
    if "open_clip" not in skip and args.variant in OPEN_CLIP_PEERS:
        ours = OurStep(args.variant, "clip-gt", accelerator, batch, teacher_dims, None, **flags)
        peer = OpenCLIPStep(args.variant, accelerator, batch, **flags)
        ours_s, peer_s = timed_pair(ours, peer, args.repeats, args.warmup, device)
        results["ours_vs_open_clip"] = {"ours_s": ours_s, "open_clip_s": peer_s,
                                        "ours_samples_per_s": args.batch_size / ours_s,
                                        "open_clip_samples_per_s": args.batch_size / peer_s,
                                        "throughput_ratio": peer_s / ours_s}
        print(f"  {'ours vs open_clip (clip)':28s} ours {args.batch_size / ours_s:9.1f} samples/s | open_clip "
              f"{args.batch_size / peer_s:9.1f} samples/s | ours/open_clip throughput {peer_s / ours_s:.3f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
