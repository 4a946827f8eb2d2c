"""The export itself: validate the request, measure the fp32 reference, fuse, export each encoder, measure the
exported graphs and write the folder (graphs, processor files, manifest.json, fidelity.json) atomically."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_folder
from ..output_guard import guard_output_folder
from .calibration import calibration_inputs
from .coreml_export import COREML_FP32_OPS, DEFAULT_COREML_TARGET, describe_coreml, export_coreml, run_coreml
from .errors import ExportInputError
from .fidelity import FIDELITY_TEMPLATE, fidelity_inputs, fidelity_metrics, format_fidelity, pytorch_embeddings
from .onnx_export import (
    DEFAULT_OPSET, MIN_OPSET, convert_onnx_float16, describe_onnx, export_onnx, onnx_session, run_onnx
)
from .preparation import (
    ENCODERS, FILE_STEMS, INPUT_NAMES, config_sha256, example_input, preprocessing_manifest, reparameterize_for_export
)
from .quantization import DEFAULT_TARGET_COSINE, QUANTIZE_MODES, quantize_onnx

FORMATS = ("onnx", "coreml")
COMPONENTS = ("image", "text", "both")
DTYPES = ("float32", "float16")


def parse_batch(value: str | int | None) -> int | None:
    """`dynamic` (None) or a positive static batch size."""
    if value in (None, "dynamic"):
        return None
    try:
        batch = int(value)
    except (TypeError, ValueError):
        batch = 0
    if batch < 1:
        raise ExportInputError(f"--batch must be 'dynamic' or a positive integer, got {value!r}.")
    return batch


def check_options(format: str, component: str, dtype: str, quantize: str | None, int8_mode: str | None,
                  calibration) -> str | None:
    """Validates an export request before any work; returns the int8 mode (static iff calibration data is given,
    unless asked otherwise)."""
    for name, value, valid in (("format", format, FORMATS), ("component", component, COMPONENTS),
                               ("dtype", dtype, DTYPES), ("quantize", quantize, (None, "int8"))):
        if value not in valid:
            raise ExportInputError(f"Unknown {name} {value!r}; expected one of {[v for v in valid if v]}.")
    if quantize is None:
        if int8_mode or calibration is not None:
            raise ExportInputError("--int8-mode / --calibration only apply with --quantize int8.")
        return None
    if format != "onnx":
        raise ExportInputError("int8 quantization is implemented for ONNX (onnxruntime); for Core ML use --dtype "
                               "float16.")
    if dtype != "float32":
        raise ExportInputError("--quantize int8 starts from the float32 graph: leave --dtype at float32.")
    mode = int8_mode or ("static" if calibration is not None else "dynamic")
    if mode not in QUANTIZE_MODES:
        raise ExportInputError(f"Unknown --int8-mode {mode!r}; expected one of {QUANTIZE_MODES}.")
    if mode == "static" and calibration is None:
        raise ExportInputError("Static int8 quantization needs calibration images: pass --calibration with a folder of "
                               "images or a dataset (e.g. dataset_scripts/data/emoji), or use --int8-mode dynamic.")
    return mode


def check_output(output: Path, model_id: str | None, overwrite: bool = False) -> None:
    """Refuses to replace a folder that is not an earlier export (the project's output-folder guard; `overwrite`
    clears it), and the model folder itself whatever `overwrite` says."""
    if model_id and Path(model_id).exists() and output.resolve() == Path(model_id).resolve():
        raise ExportInputError(f"--output {output} is the model folder itself; choose another folder.")
    earlier_export = output.is_dir() and (not any(output.iterdir()) or (output / "manifest.json").is_file())
    reasons = ["it exists and is not an earlier export (no manifest.json)"] if output.exists() and not earlier_export \
        else []
    guard_output_folder(output, reasons, overwrite=overwrite,
                        how_to_proceed="Choose a new folder, remove it, or pass --overwrite to replace it.",
                        error=lambda message: ExportInputError(f"--output {message}"))


def check_request(format: str, component: str, dtype: str, quantize: str | None, int8_mode: str | None, calibration,
                  batch: str | int | None, opset: int, output: str | Path,
                  source: str | None, overwrite: bool = False) -> tuple[str | None, int | None]:
    """Every check of an export request that needs no model (the command line runs it before loading one); returns
    the int8 mode and the static batch size (None: dynamic)."""
    mode = check_options(format, component, dtype, quantize, int8_mode, calibration)
    if format == "onnx" and opset < MIN_OPSET:
        raise ExportInputError(f"--opset {opset}: torch.onnx's dynamo exporter writes opset {MIN_OPSET} or newer.")
    batch = parse_batch(batch)
    check_output(Path(output), source, overwrite)
    return mode, batch


def export(model: nn.Module, processor, output: str | Path, format: str = "onnx", component: str = "both",
           dtype: str = "float32", quantize: str | None = None, int8_mode: str | None = None, calibration=None,
           batch: str | int | None = "dynamic", opset: int = DEFAULT_OPSET, coreml_target: str = DEFAULT_COREML_TARGET,
           fidelity_samples: int = 200, calibration_method: str = "minmax", int8_target_cosine: float | None = None,
           source: str | None = None, verbose: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Exports `model` (a MobileCLIPModel, left untouched) with `processor` into the folder `output`; returns the
    manifest. `calibration` is a `CalibrationData` (see `calibration.load_calibration_data`). The folder appears
    complete or not at all (`modeling_mobileclip.atomic.atomic_folder`)."""
    mode, batch = check_request(format, component, dtype, quantize, int8_mode, calibration, batch, opset, output,
                                source, overwrite)
    output = Path(output)
    say = print if verbose else (lambda *args, **kwargs: None)
    components = ["image", "text"] if component == "both" else [component]
    if any(parameter.dtype != torch.float32 for parameter in model.parameters()):
        model = copy.deepcopy(model).float()  # the reference and the export start from fp32 weights
    inputs = fidelity_inputs(processor, fidelity_samples) if fidelity_samples else None
    reference = pytorch_embeddings(model.eval(), inputs) if inputs else None
    fused, folded = reparameterize_for_export(model)
    metadata = {"mobileclip.variant": str(fused.config.variant or ""),
                "mobileclip.config_sha256": config_sha256(model.config), "mobileclip.normalized_embeddings": "true"}
    setting = f"{format} {dtype}" + (f" int8-{mode}" if mode else "") + f", batch {batch or 'dynamic'}"
    manifest: dict[str, Any] = {
        "format": format, "dtype": dtype, "quantization": None, "batch": batch or "dynamic",
        "source": {"model": source, "variant": fused.config.variant,
                   "config_sha256": metadata["mobileclip.config_sha256"], "reparameterized": True,
                   "batchnorm_folded_by_export": folded},
        "logit_scale": float(model.logit_scale.detach().exp().clamp(max=model.config.logit_scale_max)),
        "embedding_dim": model.config.projection_dim,
        "preprocessing": preprocessing_manifest(processor), "components": {},
        "versions": _versions(format),
    }
    if format == "onnx":
        manifest["opset"] = opset
    else:
        manifest["coreml"] = {"deployment_target": coreml_target, "program": "mlprogram",
                              "compute_precision": "FLOAT16" if dtype == "float16" else "FLOAT32"}
        if dtype == "float16":
            manifest["coreml"]["float32_ops"] = list(COREML_FP32_OPS)
    exported: dict[str, np.ndarray] = {}
    quantization: dict[str, Any] = {}
    with atomic_folder(output) as staging:
        processor.save_pretrained(staging)
        for name in components:
            encoder = ENCODERS[name](fused).eval()
            example = example_input(fused, name, batch)
            info = {**metadata, "mobileclip.component": name}
            say(f"Exporting the {name} encoder ({setting}) ...")
            if format == "onnx":
                path = staging / f"{FILE_STEMS[name]}.onnx"
                if dtype == "float32" and not mode:
                    export_onnx(encoder, example, path, name, batch, opset, info)
                else:
                    with tempfile.TemporaryDirectory(prefix=".tmp-fp32-", dir=staging) as scratch:
                        fp32 = Path(scratch) / path.name
                        export_onnx(encoder, example, fp32, name, batch, opset, info)
                        if mode:
                            values = calibration_inputs(calibration, processor, name) if mode == "static" else None
                            quantization[name] = quantize_onnx(
                                fp32, path, name, "static" if values is not None else "dynamic",
                                INPUT_NAMES[name], values, calibration_method, batch,
                                int8_target_cosine or DEFAULT_TARGET_COSINE)
                            if mode == "static" and values is None:
                                quantization[name]["note"] = ("dynamic: the calibration data has no captions to "
                                                              "calibrate the text encoder's activations")
                        else:
                            convert_onnx_float16(fp32, path)
                description = describe_onnx(path)
                if inputs is not None:
                    exported[name] = run_onnx(onnx_session(path), inputs[name], batch)
            else:
                path = staging / f"{FILE_STEMS[name]}.mlpackage"
                export_coreml(encoder, example, path, name, batch, dtype, coreml_target, info)
                description = describe_coreml(path)
                if inputs is not None and sys.platform == "darwin":
                    exported[name] = run_coreml(path, name, inputs[name])
            manifest["components"][name] = {"file": path.name, "bytes": folder_bytes(path), **description}
        if mode:
            manifest["quantization"] = {"type": "int8", "mode": mode, "per_component": quantization,
                                        "calibration": getattr(calibration, "source", None)}
        fidelity: dict[str, Any] = {"setting": setting, "samples": fidelity_samples, "template": FIDELITY_TEMPLATE,
                                    "reference": "fp32 PyTorch, the source model before reparameterization"}
        if not fidelity_samples:
            fidelity["not_measured"] = "--fidelity-samples 0"
        elif not exported:
            fidelity["not_measured"] = "Core ML programs only run on macOS (coremltools cannot predict on Linux)"
        else:
            fidelity.update(fidelity_metrics(exported, reference))
        manifest["fidelity"] = "fidelity.json"
        (staging / "fidelity.json").write_text(json.dumps(fidelity, indent=1))
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
    say(format_fidelity(fidelity))
    say(f"Wrote {', '.join(m['file'] for m in manifest['components'].values())}, manifest.json, fidelity.json and the "
        f"processor files to {output}")
    return manifest


def _versions(format: str) -> dict[str, str]:
    packages = ["torch", "transformers", "timm"] + (["onnx", "onnxruntime", "onnxscript"] if format == "onnx"
                                                     else ["coremltools"])
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def folder_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
