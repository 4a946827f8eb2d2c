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
onnxruntime's fp16 converter and quantization tools (`export_quantize.py`), and coremltools' `ct.convert` of a
`torch.export` program (coremltools' TorchScript frontend fails on timm's FastViT attention with this torch: "only
0-dimensional arrays can be converted to Python scalars" in its `int` op). Core ML programs cannot run on Linux: their
fidelity is measured only on macOS and reported as not measured elsewhere.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import loading
from .loading import is_mobileclip_config, read_config
from .export_quantize import (  # noqa: F401  (fidelity_rows re-exported with the other fidelity helpers)
    ExportInputError, fidelity_metrics, fidelity_rows, fidelity_set, format_fidelity, onnx_session, run_onnx
)

FORMATS = ("onnx", "coreml")
COMPONENTS = ("image", "text", "both")
DTYPES = ("float32", "float16")
# Opset 20 has a native Gelu: MobileCLIP-S0's image encoder ran ~10% faster on onnxruntime CPU than with opset 18,
# where Gelu is four element-wise ops (measured).
DEFAULT_OPSET = 20
MIN_OPSET = 18  # torch.onnx's dynamo exporter (onnxscript's torchlib) writes no older opset: asked for 17, it gives 18
DEFAULT_COREML_TARGET = "iOS16"
# MIL ops of the final L2 normalisation, kept float32 in FLOAT16 programs (elsewhere these ops only do shape math).
COREML_FP32_OPS = ("reduce_l2_norm", "maximum", "real_div", "tile")
MAX_DYNAMIC_BATCH = 256  # upper bound of Core ML's batch range (ONNX records a free "batch" dimension)
FILE_STEMS = {"image": "image_encoder", "text": "text_encoder"}
INPUT_NAMES = {"image": "pixel_values", "text": "input_ids"}
OUTPUT_NAMES = {"image": "image_embeds", "text": "text_embeds"}
FIDELITY_TEMPLATE = "an emoji of a {}"  # the quickstart's name prompt
# Checkpoint folders must carry the processor: one of these and a tokenizer (tokenizer.json or vocab.json + merges.txt).
PROCESSOR_CONFIGS = ("processor_config.json", "preprocessor_config.json")
# Keys of a config that say where, with what or in which dtype it was saved or loaded, not which model it is.
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "name_or_path", "_commit_hash", "dtype",
                         "torch_dtype")
# timm blocks whose forward is conv -> bn (-> act): their BatchNorm folds into the conv.
_CONV_THEN_NORM = ("ConvNormAct", "ConvNormActAa", "ConvBnAct")


class MobileCLIPImageEncoder(nn.Module):
    """`pixel_values` -> L2-normalised image embeddings (the exported image graph)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.vision_model = model.vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_model(pixel_values).image_embeds, dim=-1)


class MobileCLIPTextEncoder(nn.Module):
    """`input_ids` (batch, 77, padded by the processor) -> L2-normalised text embeddings (the exported text graph).

    All 77 positions are computed (no `pooled_only` cut, whose length depends on the data): the causal towers give
    the same embedding, the bidirectional ones need the padding anyway.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.text_model = model.text_model
        self.text_projection = model.text_projection

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(self.text_model(input_ids).pooler_output), dim=-1)


ENCODERS = {"image": MobileCLIPImageEncoder, "text": MobileCLIPTextEncoder}


# ------------------------------------------------------------------------------------------------ model preparation


@torch.no_grad()
def fold_remaining_batchnorm_(model: nn.Module) -> list[str]:
    """Folds every BatchNorm that `reparameterize()` leaves (timm conv-norm-act blocks such as MobileCLIP-B's stem,
    `nn.Sequential(conv, bn)` pairs) into its convolution, in place; returns the folded modules' names.

    Export only: the fused layout is not a checkpoint layout (a `reparameterized: true` config rebuilds these blocks
    with their BatchNorm), so the model classes keep them.
    """
    folded = []
    for name, module in model.named_modules():
        pairs = []
        if type(module).__name__ in _CONV_THEN_NORM:
            pairs.append(("conv", "bn"))
        elif isinstance(module, nn.Sequential):
            keys = list(module._modules)
            pairs += [(a, b) for a, b in zip(keys, keys[1:])]
        for conv_key, bn_key in pairs:
            conv, bn = module._modules.get(conv_key), module._modules.get(bn_key)
            if not (isinstance(conv, nn.modules.conv._ConvNd) and isinstance(bn, nn.modules.batchnorm._BatchNorm)):
                continue
            scale = bn.weight / (bn.running_var + bn.eps).sqrt()
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.copy_(conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
            # timm's BatchNormAct2d applies dropout (identity in eval) and its activation after normalising.
            after = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
            module._modules[bn_key] = nn.Sequential(*after) if after else nn.Identity()
            folded.append(f"{name}.{bn_key}".lstrip("."))
    return folded


def reparameterize_for_export(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A fused eval-mode copy of `model` (the caller's model is untouched) and the BatchNorms folded beyond
    `reparameterize()`; raises if any BatchNorm is left."""
    fused = copy.deepcopy(model).eval().float()
    fused.reparameterize()
    folded = fold_remaining_batchnorm_(fused)
    left = [name for name, m in fused.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise ExportInputError(f"BatchNorm layers left after reparameterization that no fold handles: {left}.")
    return fused, folded


def config_sha256(config) -> str:
    """SHA-256 of the config as canonical JSON (sorted keys), without the keys (at any depth) that only say where,
    with what or in which dtype it was saved or loaded: the same checkpoint hashes the same however it is loaded."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in _VOLATILE_CONFIG_KEYS}
        return value

    return hashlib.sha256(json.dumps(strip(config.to_dict()), sort_keys=True, default=str).encode()).hexdigest()


def load_exportable(model_id: str):
    """(MobileCLIPModel in fp32 eval mode, MobileCLIPProcessor) of a saved folder or Hub id, through the project's one
    loader; a folder without the processor's files raises ExportInputError naming what is missing."""
    folder = Path(model_id)
    if folder.is_dir():
        present = {p.name for p in folder.iterdir()}
        missing = []
        if "config.json" not in present:
            missing.append("config.json")
        if not present & set(PROCESSOR_CONFIGS):
            missing.append(" or ".join(PROCESSOR_CONFIGS))
        if "tokenizer.json" not in present and not {"vocab.json", "merges.txt"} <= present:
            missing.append("tokenizer.json (or vocab.json + merges.txt)")
        if missing:
            raise ExportInputError(
                f"{model_id} is not a complete MobileCLIP folder: missing {', '.join(missing)}. The export copies the "
                "processor's files beside the graphs and records its preprocessing; save the processor there first "
                "(`MobileCLIPProcessor.from_variant(VARIANT).save_pretrained(DIR)`)."
            )
    try:
        config = read_config(model_id)
    except OSError as error:
        raise ExportInputError(f"Cannot read the config of {model_id!r}: {error}") from error
    if not is_mobileclip_config(config):
        raise ExportInputError(f"{model_id} is model_type {config.get('model_type')!r}, not a MobileCLIP checkpoint.")
    try:
        return loading.load_model_and_processor(model_id, dtype=torch.float32)
    except (OSError, ValueError, TypeError) as error:
        raise ExportInputError(f"{model_id} has no loadable processor or weights ({error}); the export needs its "
                               "files.") from error


def preprocessing_manifest(processor) -> dict[str, Any]:
    """What a deployment must do before the graphs: the image processor's and tokenizer's settings."""
    from transformers.image_utils import PILImageResampling

    image, tokenizer = processor.image_processor, processor.tokenizer
    crop = image.crop_size
    return {
        "image": {
            "convert_rgb": bool(image.do_convert_rgb),
            "resize": {"shortest_edge": image.size.shortest_edge,
                       "resample": PILImageResampling(image.resample).name.lower(),
                       "library": "PIL (antialiased)", "long_edge": "int(shortest_edge * long / short)"}
            if image.do_resize else None,
            "center_crop": {"height": crop.height, "width": crop.width,
                            "offsets": "round((resized - crop) / 2) (torchvision)"} if image.do_center_crop else None,
            "rescale_factor": image.rescale_factor,
            "normalize": bool(image.do_normalize),
            "mean": list(image.image_mean) if image.do_normalize else [0.0, 0.0, 0.0],
            "std": list(image.image_std) if image.do_normalize else [1.0, 1.0, 1.0],
            "layout": "NCHW, RGB, float32",
        },
        "text": {
            "tokenizer_file": "tokenizer.json",
            "context_length": tokenizer.model_max_length,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "cleaning": "open_clip's: ftfy.fix_text, HTML unescaped twice, whitespace collapsed, lower-cased",
            "truncation": "at context_length, eos kept last",
            "padding": "to context_length with pad_token_id, after eos",
        },
    }


# ------------------------------------------------------------------------------------------------ exporters


def _dynamic_shapes(component: str, batch: int | None):
    if batch is not None:
        return None
    return {INPUT_NAMES[component]: {0: torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)}}


def example_input(model: nn.Module, component: str, batch: int | None) -> torch.Tensor:
    """A tracing input; a dynamic batch is traced at 2 (torch.export specialises a batch of 1 to a constant)."""
    n = batch or 2
    if component == "image":
        size = model.config.vision_config.image_size
        return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    ids = torch.zeros(n, model.config.text_config.max_position_embeddings, dtype=torch.long)
    ids[:, 0], ids[:, 1:4], ids[:, 4] = 49406, 320, 49407
    return ids


def export_onnx(encoder: nn.Module, example: torch.Tensor, path: Path, component: str, batch: int | None,
                opset: int, metadata: dict[str, str]) -> None:
    """`torch.onnx.export` (dynamo) of one encoder; weights inline unless the graph passes protobuf's 2 GB."""
    import onnx

    program = torch.onnx.export(
        encoder, (example,), dynamo=True, input_names=[INPUT_NAMES[component]],
        output_names=[OUTPUT_NAMES[component]], opset_version=opset,
        dynamic_shapes=_dynamic_shapes(component, batch), verbose=False, optimize=True,
    )
    proto = program.model_proto
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    large = sum(p.numel() * p.element_size() for p in encoder.parameters()) > 1_800_000_000
    onnx.save_model(proto, str(path), save_as_external_data=large, location=f"{path.name}.data" if large else None)


def convert_onnx_float16(source: Path, destination: Path) -> None:
    """fp16 weights and activations (onnxruntime's converter), float32 inputs/outputs kept so the processor's
    arrays feed it unchanged. onnxruntime's CPU provider computes ops lacking fp16 kernels in fp32.

    The L2 normalisation after the projection stays float32: computed in fp16 (or with its norm rounded to fp16)
    the outputs' norms were off by up to 5e-4 (measured on MobileCLIP-S0), so their dot products were not cosines.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    projection = [node for node in model.graph.node if node.op_type in ("MatMul", "Gemm")][-1]
    downstream, tail = set(projection.output), []
    for node in model.graph.node:  # topological order: everything computed from the projection's output
        if downstream & set(node.input):
            downstream.update(node.output)
            tail.append(node.name)
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=tail)
    onnx.save_model(_drop_float16_round_trips(converted), str(destination))


def _drop_float16_round_trips(model):
    """Short-circuits Cast(fp16) -> Cast(fp32) pairs, which the converter puts between consecutive float32 nodes
    (here it would round the norm to fp16 before the division): the second Cast becomes an Identity of the first's
    input, and the first goes once nothing else reads it."""
    import onnx

    graph = model.graph

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    producers = {output: node for node in graph.node for output in node.output}
    for node in graph.node:
        source = producers.get(node.input[0]) if node.input else None
        if (cast_to(node) == onnx.TensorProto.FLOAT and source is not None
                and cast_to(source) == onnx.TensorProto.FLOAT16):
            node.op_type, node.input[0] = "Identity", source.input[0]
            del node.attribute[:]
    used = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
    kept = [node for node in graph.node if node.op_type != "Cast" or any(o in used for o in node.output)]
    del graph.node[:]
    graph.node.extend(kept)
    return model


def export_coreml(encoder: nn.Module, example: torch.Tensor, path: Path, component: str, batch: int | None,
                  dtype: str, target: str, metadata: dict[str, str]) -> None:
    """coremltools conversion of a `torch.export` program to an ML program (`.mlpackage`)."""
    import coremltools as ct

    program = torch.export.export(encoder, (example,), dynamic_shapes=_dynamic_shapes(component, batch))
    mlmodel = ct.convert(
        program.run_decompositions({}),
        inputs=[ct.TensorType(name=INPUT_NAMES[component], dtype=np.int32 if component == "text" else np.float32)],
        outputs=[ct.TensorType(name=OUTPUT_NAMES[component], dtype=np.float32)],
        convert_to="mlprogram",
        # FLOAT16, except the final L2 normalisation (an fp16 norm is off by up to 5e-4, as measured for ONNX).
        compute_precision=ct.transform.FP16ComputePrecision(op_selector=lambda op: op.op_type not in COREML_FP32_OPS)
        if dtype == "float16" else ct.precision.FLOAT32,
        minimum_deployment_target=getattr(ct.target, target),
        skip_model_load=sys.platform != "darwin",  # Core ML can only compile/run a program on Apple platforms
    )
    mlmodel.short_description = f"MobileCLIP {component} encoder: L2-normalised {OUTPUT_NAMES[component]}"
    mlmodel.user_defined_metadata.update(metadata)
    mlmodel.save(str(path))


def describe_onnx(path: Path) -> dict[str, Any]:
    """Inputs/outputs (name, shape with symbolic dims, dtype) and opset read back from an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def values(items):
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in items]

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {"inputs": values(model.graph.input), "outputs": values(model.graph.output), "opset": opset}


def coreml_program_summary(spec) -> dict[str, Any]:
    """The ML program's opset, and the dtypes its ops compute in (FLOAT16 compute precision makes the convolutions,
    linear layers and matmuls float16), read from the spec."""
    import collections

    from coremltools.proto import MIL_pb2

    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    dtypes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    outputs = {}
    for op in block.operations:
        for value in op.outputs:
            dtypes[op.type][MIL_pb2.DataType.Name(value.type.tensorType.dataType).lower()] += 1
            if value.name in block.outputs:
                outputs[value.name] = ["batch" if d.HasField("unknown") else d.constant.size
                                       for d in value.type.tensorType.dimensions]
    compute = {op: dict(dtypes[op]) for op in ("conv", "linear", "matmul", "reduce_l2_norm") if op in dtypes}
    return {"opset": function.opset, "operations": len(block.operations), "compute_dtypes": compute,
            "output_shapes": outputs}


def describe_coreml(path: Path) -> dict[str, Any]:
    """Inputs/outputs (name, shape, batch range, dtype) and a summary of the program read back from an `.mlpackage`."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    program = coreml_program_summary(spec)

    def values(items):
        rows = []
        for feature in items:
            array = feature.type.multiArrayType
            dtype = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType).lower()
            ranges = [[r.lowerBound, r.upperBound] for r in array.shapeRange.sizeRanges]
            padded = ranges + [None] * len(array.shape)
            shape = program["output_shapes"].get(feature.name) or [
                "batch" if r and r[0] != r[1] else size for size, r in zip(array.shape, padded)]
            rows.append({"name": feature.name, "dtype": dtype, "shape": shape, "shape_range": ranges})
        return rows

    return {"inputs": values(spec.description.input), "outputs": values(spec.description.output),
            "specification_version": spec.specificationVersion, "program": program}


def folder_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------------ fidelity


def fidelity_inputs(processor, count: int) -> dict[str, np.ndarray]:
    images, names = fidelity_set(count)
    return {"image": processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32),
            "text": processor(text=[FIDELITY_TEMPLATE.format(n) for n in names], return_tensors="np")["input_ids"]}


@torch.no_grad()
def pytorch_embeddings(model: nn.Module, inputs: dict[str, np.ndarray], batch: int = 32) -> dict[str, np.ndarray]:
    """fp32 PyTorch's normalised embeddings of the fidelity inputs (the reference)."""
    encoders = {"image": MobileCLIPImageEncoder(model).eval(), "text": MobileCLIPTextEncoder(model).eval()}
    return {c: np.concatenate([encoders[c](torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])
            for c, x in inputs.items()}


def run_coreml(path: Path, component: str, values: np.ndarray) -> np.ndarray:
    import coremltools as ct

    model = ct.models.MLModel(str(path))
    values = values.astype(np.int32) if component == "text" else values
    return np.concatenate([model.predict({INPUT_NAMES[component]: values[i:i + 1]})[OUTPUT_NAMES[component]]
                           for i in range(len(values))])


# ------------------------------------------------------------------------------------------------ the export


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
    from .export_quantize import QUANTIZE_MODES

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


def check_output(output: Path, model_id: str | None) -> None:
    """Refuses to replace a folder that is not an earlier export (e.g. the model folder itself)."""
    if model_id and Path(model_id).exists() and output.resolve() == Path(model_id).resolve():
        raise ExportInputError(f"--output {output} is the model folder itself; choose another folder.")
    earlier_export = output.is_dir() and (not any(output.iterdir()) or (output / "manifest.json").is_file())
    if output.exists() and not earlier_export:
        raise ExportInputError(f"--output {output} exists and is not an earlier export (no manifest.json); "
                               "choose a new folder or remove it.")


def export(model: nn.Module, processor, output: str | Path, format: str = "onnx", component: str = "both",
           dtype: str = "float32", quantize: str | None = None, int8_mode: str | None = None, calibration=None,
           batch: str | int | None = "dynamic", opset: int = DEFAULT_OPSET, coreml_target: str = DEFAULT_COREML_TARGET,
           fidelity_samples: int = 200, calibration_method: str = "minmax", int8_target_cosine: float | None = None,
           source: str | None = None, verbose: bool = True) -> dict[str, Any]:
    """Exports `model` (a MobileCLIPModel, left untouched) with `processor` into the folder `output`; returns the
    manifest. `calibration` is a `CalibrationData` (see `export_quantize.load_calibration_data`). The folder appears
    complete or not at all (`dataset_scripts.atomic.atomic_folder`)."""
    from .atomic import atomic_folder

    from .export_quantize import DEFAULT_TARGET_COSINE, calibration_inputs, quantize_onnx

    mode = check_options(format, component, dtype, quantize, int8_mode, calibration)
    if format == "onnx" and opset < MIN_OPSET:
        raise ExportInputError(f"--opset {opset}: torch.onnx's dynamo exporter writes opset {MIN_OPSET} or newer.")
    batch = parse_batch(batch)
    output = Path(output)
    check_output(output, source)
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
    import importlib.metadata as metadata

    packages = ["torch", "transformers", "timm"] + (["onnx", "onnxruntime", "onnxscript"] if format == "onnx"
                                                     else ["coremltools"])
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from .export_quantize import CALIBRATION_METHODS, QUANTIZE_MODES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved MobileCLIP folder (with its processor) or Hub id")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--output", required=True, help="output folder (replaced atomically)")
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
    from .export_quantize import load_calibration_data

    args = parse_args(argv)
    check_options(args.format, args.component, args.dtype, args.quantize, args.int8_mode, args.calibration)
    if args.format == "onnx" and args.opset < MIN_OPSET:
        raise ExportInputError(f"--opset {args.opset}: torch.onnx's dynamo exporter writes opset {MIN_OPSET} or newer.")
    parse_batch(args.batch)
    check_output(Path(args.output), args.model)
    model, processor = load_exportable(args.model)
    calibration = None
    if args.calibration is not None:
        calibration = load_calibration_data(args.calibration, args.calibration_samples, args.calibration_config,
                                            args.calibration_split, args.calibration_image_column)
    return export(model, processor, args.output, args.format, args.component, args.dtype, args.quantize,
                  args.int8_mode, calibration, args.batch, args.opset, args.coreml_target, args.fidelity_samples,
                  args.calibration_method, args.int8_target_cosine, source=args.model)


if __name__ == "__main__":
    from modeling_mobileclip.cli import run_main

    run_main(main)
