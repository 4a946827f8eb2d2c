"""Convert official MobileCLIP checkpoints (Apple, open_clip, timm) into a Hugging Face folder.

    python -m modeling_mobileclip.convert --checkpoint apple/MobileCLIP-S0 --output mobileclip-s0-hf
    python -m modeling_mobileclip.convert --checkpoint mobileclip_s0.pt --output mobileclip-s0-hf [--reparameterize]
    python -m modeling_mobileclip.convert --all [FOLDER] --output converted/   # every official checkpoint found
    python -m modeling_mobileclip.convert --checkpoint timm/MobileCLIP2-S4-OpenCLIP --output out \
        --push-to-hub me/MobileCLIP2-S4-hf [--push-reparameterized]

`--checkpoint` is a local file, a folder or a Hub repo id: an official repo (:data:`OFFICIAL_CHECKPOINTS`) resolves
through `huggingface_hub` (the local cache first; `HF_HUB_OFFLINE=1` uses only the cache) to the file that repo
holds. `--source` and `--variant` are detected from the checkpoint's keys and shapes when omitted (architecturally
identical variants, e.g. MobileCLIP-S3 / MobileCLIP2-S3, are told apart by the repo id or Apple's file name, else the
error names the candidates). Every output folder gets a model card (`model_card.build_model_card`).

The output folder holds `config.json` (with `auto_map`), `model.safetensors`, the remote-code files and the processor
files, so `AutoModel.from_pretrained(DIR, trust_remote_code=True)` works anywhere. Sources:

- `apple`: Apple's `mobileclip_*.pt` / `mobileclip2_*.pt` (`image_encoder.model.*`, `text_encoder.*`).
- `open_clip`: `open_clip_model.safetensors` / `open_clip_pytorch_model.bin` (`visual.trunk.*`, `text.*`).
- `timm`: a timm image tower (`apple/mobileclip_*_timm`); the text tower comes from `--text-checkpoint`
  (an Apple or open_clip checkpoint of the same variant).

The image-tower key mappings from Apple's layout are timm's own `checkpoint_filter_fn`s; the text mappings are ours.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..model_folder import push_folder
from .checkpoint import SOURCES
from .conversion import PUSH_MESSAGE, convert, write_converted
from .official import OFFICIAL_CHECKPOINTS, find_official_checkpoints


def main(argv: list[str] | None = None) -> Path | list[Path]:
    parser = argparse.ArgumentParser(prog="python -m modeling_mobileclip.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a file, a folder or a Hub repo id (e.g. apple/MobileCLIP-S0)")
    parser.add_argument("--all", nargs="?", const="", default=None, metavar="FOLDER",
                        help="convert every official checkpoint in FOLDER (default: the Hugging Face cache) into "
                             "OUTPUT/<name>")
    parser.add_argument("--source", default=None, choices=SOURCES, help="detected from the keys when omitted")
    parser.add_argument("--variant", default=None, help="e.g. mobileclip-s0, mobileclip2-s4; detected when omitted")
    parser.add_argument("--filename", default=None, help="the file inside a Hub repo (default: the repo's known file)")
    parser.add_argument("--text-checkpoint", default=None, help="text-tower weights for --source timm (file or repo)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an --output folder that holds anything but an earlier MobileCLIP folder")
    parser.add_argument("--reparameterize", action="store_true", help="fuse train-time branches before saving")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="upload the folder to this model repo")
    parser.add_argument("--push-reparameterized", action="store_true",
                        help="also write (and push) the fused copy in the subfolder reparameterized/")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.all is None):
        parser.error("pass exactly one of --checkpoint and --all")
    if args.all is not None:
        if args.push_to_hub or args.variant or args.source:
            parser.error("--all converts each checkpoint as its repo or file names it: no --push-to-hub, --variant "
                         "or --source")
        found = find_official_checkpoints(args.all or None)
        if not found:
            raise FileNotFoundError(
                f"--all found no official MobileCLIP checkpoint in {args.all or 'the Hugging Face cache'}; looked for "
                f"the repos {', '.join(c.repo_id for c in OFFICIAL_CHECKPOINTS)} or files named like mobileclip_s0.pt.")
        outputs = []
        for spec, label in found:
            output = Path(args.output) / label
            write_converted(convert(spec), output, reparameterize=args.reparameterize, overwrite=args.overwrite,
                            reparameterized_subfolder=args.push_reparameterized)
            print(f"Converted {spec} -> {output}")
            outputs.append(output)
        return outputs
    conversion = convert(args.checkpoint, args.source, args.variant, args.text_checkpoint, args.filename)
    output = write_converted(conversion, args.output, args.push_to_hub, args.reparameterize, args.push_reparameterized,
                             args.overwrite)
    print(f"Wrote {conversion.variant} ({conversion.source}) to {output}")
    if args.push_to_hub:
        print(f"Pushed to {push_folder(output, args.push_to_hub, args.private or None, PUSH_MESSAGE)}")
    return output
