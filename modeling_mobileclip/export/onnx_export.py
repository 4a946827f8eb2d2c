"""ONNX graphs: `torch.onnx.export(dynamo=True)` of an encoder, onnxruntime's fp16 conversion, the description read
back for the manifest, and the onnxruntime session that runs them (CPU).

`onnx` / `onnxruntime` are imported where used: they are the optional `export` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .preparation import INPUT_NAMES, OUTPUT_NAMES, dynamic_shapes

# Opset 20 has a native Gelu: MobileCLIP-S0's image encoder ran ~10% faster on onnxruntime CPU than with opset 18,
# where Gelu is four element-wise ops (measured).
DEFAULT_OPSET = 20
MIN_OPSET = 18  # torch.onnx's dynamo exporter (onnxscript's torchlib) writes no older opset: asked for 17, it gives 18


def export_onnx(encoder: nn.Module, example: torch.Tensor, path: Path, component: str, batch: int | None,
                opset: int, metadata: dict[str, str]) -> None:
    """`torch.onnx.export` (dynamo) of one encoder; weights inline unless the graph passes protobuf's 2 GB."""
    import onnx

    program = torch.onnx.export(
        encoder, (example,), dynamo=True, input_names=[INPUT_NAMES[component]],
        output_names=[OUTPUT_NAMES[component]], opset_version=opset,
        dynamic_shapes=dynamic_shapes(component, batch), verbose=False, optimize=True,
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


def describe_onnx(path: Path) -> dict[str, Any]:
    """Inputs/outputs (name, shape with symbolic dims, dtype) and opset read back from an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def values(items):
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in items]

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {"inputs": values(model.graph.input), "outputs": values(model.graph.output), "opset": opset}


def onnx_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, values: np.ndarray, batch: int | None = None, chunk: int = 32) -> np.ndarray:
    """Runs `values` through a session in chunks (exactly `batch` rows each for a static-batch graph)."""
    name = session.get_inputs()[0].name
    size = batch or chunk
    outputs = []
    for i in range(0, len(values), size):
        part = values[i:i + size]
        pad = size - len(part) if batch else 0
        padded = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)]) if pad else part
        outputs.append(session.run(None, {name: padded})[0][:len(part)])
    return np.concatenate(outputs)
