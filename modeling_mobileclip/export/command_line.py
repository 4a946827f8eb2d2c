"""Export MobileCLIP's encoders for on-device inference: ONNX (onnxruntime) or Core ML (ML program), fp32 / fp16 /
int8, always from the reparameterized model, with the fidelity measured.

    python -m modeling_mobileclip.export --model DIR_OR_ID --format {onnx,coreml} --output DIR \
        [--dtype float32|float16] [--quantize int8 [--int8-mode dynamic|static] [--calibration DIR_OR_DATASET]] \
        [--component image|text|both] [--batch dynamic|N] [--fidelity-samples 200]

Steps: load the checkpoint with this package's classes (no remote code runs), measure the fp32 PyTorch embeddings
of the fidelity set, fuse every train-time branch (`reparameterize()`, then fold any BatchNorm left, e.g.
MobileCLIP-B's convolutional stem), export each encoder as its own graph whose output is the L2-normalised
embedding, run the exported graphs on the same inputs and write, into a staging folder renamed into place at the end
(a failure leaves no half-written output):

- `image_encoder.onnx` / `text_encoder.onnx` (`.mlpackage` for Core ML). Image input `pixel_values` (batch, 3, S, S)
  float32, exactly the processor's output; text input `input_ids` (batch, 77), int64 for ONNX (int32 for Core ML,
  which has no int64 inputs), padded exactly as the processor pads (open_clip ids, pad id 0). Outputs
  `image_embeds` / `text_embeds` (batch, D) float32, unit norm. `--batch N` fixes the batch size instead.
- the processor's files (`processor_config.json`, `tokenizer.json`, ...), so the folder is self-contained;
- `manifest.json`: inputs and outputs with shapes and dtypes (read back from the exported files), the preprocessing
  (resize, crop, mean/std, tokenizer pad id and context length), the opset or Core ML deployment target, the
  quantization (with every layer kept in float and why), the logit scale and the source config's SHA-256;
- `fidelity.json` (also printed): cosine similarity of every embedding to fp32 PyTorch (min / mean) and zero-shot
  top-1 agreement with fp32 PyTorch on the bundled emoji set (images classified among their names).

Exporters: `torch.onnx.export(dynamo=True)` (torch.export based; opset 20 by default, for its native Gelu),
onnxruntime's fp16 converter and quantization tools (`quantization.py`), and coremltools' `ct.convert` of a
`torch.export` program (coremltools' TorchScript frontend fails on timm's FastViT attention with this torch: "only
0-dimensional arrays can be converted to Python scalars" in its `int` op). Core ML programs cannot run on Linux: their
fidelity is measured only on macOS and reported as not measured elsewhere.
"""

from __future__ import annotations

import argparse
from typing import Any

from .calibration import load_calibration_data
from .coreml_export import DEFAULT_COREML_TARGET
from .onnx_export import DEFAULT_OPSET, MIN_OPSET
from .pipeline import COMPONENTS, DTYPES, FORMATS, check_request, export
from .preparation import load_exportable
from .quantization import CALIBRATION_METHODS, QUANTIZE_MODES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m modeling_mobileclip.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved MobileCLIP folder (with its processor) or Hub id")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--output", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an --output folder that is not an earlier export")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--quantize", default=None, choices=["int8"], help="int8 quantization (ONNX)")
    parser.add_argument("--int8-mode", default=None, choices=QUANTIZE_MODES,
                        help="default: static with --calibration, else dynamic")
    parser.add_argument("--calibration", default=None, help="folder of images or a dataset (load_dataset spec)")
    parser.add_argument("--calibration-config", default=None, help="dataset configuration (e.g. twitter)")
    parser.add_argument("--calibration-split", default="train")
    parser.add_argument("--calibration-image-column", default="image")
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--calibration-method", default="minmax", choices=CALIBRATION_METHODS)
    parser.add_argument("--int8-target-cosine", type=float, default=None,
                        help="static int8: keep the most sensitive layers in float until the embeddings' mean cosine "
                             "to fp32 on held-out calibration inputs reaches this (default 0.99995)")
    parser.add_argument("--component", default="both", choices=COMPONENTS)
    parser.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size N")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    parser.add_argument("--coreml-target", default=DEFAULT_COREML_TARGET, help="e.g. iOS16, iOS17, macOS13")
    parser.add_argument("--fidelity-samples", type=int, default=200, help="emoji images/names measured (0: skip)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; returns the manifest."""
    args = parse_args(argv)
    check_request(args.format, args.component, args.dtype, args.quantize, args.int8_mode, args.calibration, args.batch,
                  args.opset, args.output, args.model, args.overwrite)
    model, processor = load_exportable(args.model)
    calibration = None
    if args.calibration is not None:
        calibration = load_calibration_data(args.calibration, args.calibration_samples, args.calibration_config,
                                            args.calibration_split, args.calibration_image_column)
    return export(model, processor, args.output, args.format, args.component, args.dtype, args.quantize,
                  args.int8_mode, calibration, args.batch, args.opset, args.coreml_target, args.fidelity_samples,
                  args.calibration_method, args.int8_target_cosine, source=args.model, overwrite=args.overwrite)
