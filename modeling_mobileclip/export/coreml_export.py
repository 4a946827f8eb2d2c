"""Core ML ML programs: coremltools' `ct.convert` of a `torch.export` program (its TorchScript frontend fails on
timm's FastViT attention with this torch), the description read back for the manifest, and prediction (macOS only).

`coremltools` is imported where used: it is the optional `export` extra.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .preparation import INPUT_NAMES, OUTPUT_NAMES, dynamic_shapes

DEFAULT_COREML_TARGET = "iOS16"
# MIL ops of the final L2 normalisation, kept float32 in FLOAT16 programs (elsewhere these ops only do shape math).
COREML_FP32_OPS = ("reduce_l2_norm", "maximum", "real_div", "tile")


def export_coreml(encoder: nn.Module, example: torch.Tensor, path: Path, component: str, batch: int | None,
                  dtype: str, target: str, metadata: dict[str, str]) -> None:
    """coremltools conversion of a `torch.export` program to an ML program (`.mlpackage`)."""
    import coremltools as ct

    program = torch.export.export(encoder, (example,), dynamic_shapes=dynamic_shapes(component, batch))
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


def coreml_program_summary(spec) -> dict[str, Any]:
    """The ML program's opset, and the dtypes its ops compute in (FLOAT16 compute precision makes the convolutions,
    linear layers and matmuls float16), read from the spec."""
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


def run_coreml(path: Path, component: str, values: np.ndarray) -> np.ndarray:
    import coremltools as ct

    model = ct.models.MLModel(str(path))
    values = values.astype(np.int32) if component == "text" else values
    return np.concatenate([model.predict({INPUT_NAMES[component]: values[i:i + 1]})[OUTPUT_NAMES[component]]
                           for i in range(len(values))])
