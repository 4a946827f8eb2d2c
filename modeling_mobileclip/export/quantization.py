"""int8 quantization of the exported ONNX encoders (onnxruntime's quantization tools); the calibration data it reads is
`calibration.py`'s.

`python -m modeling_mobileclip.export --quantize int8` calls :func:`quantize_onnx` on each fp32 graph:

* `dynamic`: `onnxruntime.quantization.quantize_dynamic`; int8 weights of the MatMul/Gemm layers, activations
  quantized at run time per batch. Convolutions stay float: onnxruntime runs dynamically quantized convolutions as
  `ConvInteger`, which measured 6-9x *slower* than fp32 on CPU for MobileCLIP-S0, so for the convolutional FastViT
  image towers `dynamic` only quantizes the linear layers of their attention stage.
* `static`: `onnxruntime.quantization.quantize_static` (QDQ format, per-channel int8 weights, uint8 activations)
  with activation ranges calibrated on real images (and, for the text encoder, on real captions). Needs
  calibration data.

Both keep layers in float where int8 costs fidelity for little speed (:func:`float_kept_nodes`): the first
convolution (it sees raw pixels), depthwise/grouped convolutions (onnxruntime's int8 kernels for them were slower than
fp32 on CPU and cost fidelity), the attention matmuls next to the softmax (Q.K^T and softmax.V: activation x
activation products, whose int8 ranges the softmax distorts) and the final projection (its error goes straight into
the embedding). Static mode then measures the result on calibration inputs and, below its target cosine, keeps the
layers whose int8 costs the most in float too (measured one by one). Every node kept in float is listed, with its
module and the reason, in the export manifest.
"""

from __future__ import annotations

import collections
import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CalibrationError
from .onnx_export import onnx_session, run_onnx

QUANTIZE_MODES = ("dynamic", "static")
# Static quantization keeps more layers in float (by measured sensitivity) while the mean cosine of its embeddings
# to fp32 on the calibration inputs stays below this.
DEFAULT_TARGET_COSINE = 0.99995
# At most this many layers are measured one by one (each is one more quantization and model run).
MAX_MEASURED_LAYERS = 16
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# Static quantization covers the compute-heavy ops only: quantizing the element-wise ops between them (GELU's
# Erf/Mul/Add, residual adds, LayerNorm) added Q/DQ pairs that made MobileCLIP-S0's image encoder slower than fp32 and
# less faithful (measured; see the module docstring).
STATIC_OP_TYPES = ("Conv", "MatMul", "Gemm")
_SOFTMAX_NEIGHBOURS = ("Mul", "Div", "Add", "Where", "Cast", "Reshape", "Transpose")


def _module_of(node, initializers: set[str]) -> str:
    """The PyTorch module a node came from: its weight's name (torch.onnx names initializers after the parameters),
    else the innermost non-aten scope of the `namespace` metadata the dynamo exporter records, else the node name."""
    if len(node.input) > 1 and node.input[1] in initializers and node.input[1].endswith(".weight"):
        return node.input[1].removesuffix(".weight")
    for props in node.metadata_props:
        if props.key == "namespace":
            scopes = [scope.split(": ", 1) for scope in props.value.split("/") if ": " in scope]
            modules = [name for name, kind in scopes if name and not kind.startswith("aten.")]
            if modules:
                return modules[-1]
    return node.name


def float_kept_nodes(model, component: str, names_from=None) -> list[dict[str, str]]:
    """The nodes of an fp32 encoder graph kept in float by int8 quantization, each `{node, op_type, module, reason}`.

    Found by structure, not by name, so they survive exporter changes: the Conv reading the graph input; depthwise
    (grouped) convolutions; convolutions on a 1x1 map (squeeze-excitation, shapes from onnxruntime's preparation);
    the MatMuls producing the softmax's input (Q.K^T, through scale/mask ops) and consuming
    its output (softmax.V); and the last MatMul/Gemm (the projection into the embedding space). `names_from` is the
    exported graph `model` was prepared from (onnxruntime's preparation drops the metadata naming the modules).
    """
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    inputs = {value.name for value in graph.input}
    shapes = {value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
              for value in [*graph.value_info, *graph.output]}
    kept: dict[str, tuple[Any, str]] = {}
    for node in graph.node:
        if node.op_type == "Conv" and node.input[0] in inputs:
            kept.setdefault(node.name, (node, "first convolution: reads the raw pixels"))
        elif node.op_type == "Conv" and shapes.get(node.output[0], [])[2:] == [1, 1]:
            kept.setdefault(node.name, (node, "convolution on a 1x1 map (squeeze-excitation): no compute to save, "
                                              "and its int8 ranges were among the least faithful (measured)"))
        elif node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute):
            kept.setdefault(node.name, (node, "depthwise/grouped convolution: little compute, and onnxruntime's int8 "
                                              "kernels for it were slower than fp32 and cost fidelity (measured)"))
        if node.op_type != "Softmax":
            continue
        source, hops = producers.get(node.input[0]), 0
        while source is not None and source.op_type in _SOFTMAX_NEIGHBOURS and hops < 4:
            source, hops = producers.get(source.input[0]), hops + 1
        if source is not None and source.op_type == "MatMul":
            kept.setdefault(source.name, (source, "attention scores Q.K^T (feeds the softmax)"))
        frontier = list(consumers[node.output[0]])
        for _ in range(3):
            matmuls = [c for c in frontier if c.op_type == "MatMul"]
            for consumer in matmuls:
                kept.setdefault(consumer.name, (consumer, "attention output softmax.V (reads the softmax)"))
            if matmuls:
                break
            frontier = [c for n in frontier if n.op_type in _SOFTMAX_NEIGHBOURS for c in consumers[n.output[0]]]
    projections = [node for node in graph.node if node.op_type in ("MatMul", "Gemm")]
    if projections:
        kept.setdefault(projections[-1].name, (projections[-1], f"{component} projection into the embedding space"))
    named = {node.name: node for node in (names_from or model).graph.node}
    initializers = {tensor.name for tensor in (names_from or model).graph.initializer}
    return [{"node": name, "op_type": node.op_type, "module": _module_of(named.get(name, node), initializers),
             "reason": reason} for name, (node, reason) in kept.items()]


class _Batches:
    """An onnxruntime `CalibrationDataReader` over prepared input arrays, `batch_size` rows at a time."""

    def __init__(self, input_name: str, values: np.ndarray, batch_size: int = 8):
        self.batches = iter([{input_name: values[i:i + batch_size]} for i in range(0, len(values), batch_size)])

    def get_next(self):
        return next(self.batches, None)


def _embedding_error(session_or_path, values: np.ndarray, reference: np.ndarray, batch: int | None) -> float:
    """1 - mean cosine of a graph's (normalised) embeddings of `values` to `reference`."""
    session = onnx_session(session_or_path) if isinstance(session_or_path, (str, Path)) else session_or_path
    ours = run_onnx(session, values, batch)
    return float(1 - (ours * reference).sum(-1).mean())


def quantize_onnx(source: Path, destination: Path, component: str, mode: str, input_name: str,
                  calibration: np.ndarray | None = None, method: str = "minmax", batch: int | None = None,
                  target_cosine: float = DEFAULT_TARGET_COSINE) -> dict[str, Any]:
    """Quantizes the fp32 graph `source` to int8 at `destination`; returns the manifest's description of it.

    `calibration` holds the prepared inputs (pixel values or token ids) of static quantization; with a static
    batch size `batch` they are fed in batches of exactly that size (the last one padded by repetition).

    Static mode then checks the result on calibration inputs held out from the ranges (never on the fidelity set):
    if the mean cosine of its embeddings to the fp32 graph's is below `target_cosine`, the remaining quantized layers
    with the largest estimated int8 noise (at most `MAX_MEASURED_LAYERS`) are quantized one at a time (activation
    ranges calibrated once: onnxruntime's calibration cache) to measure what each costs, and the most costly are
    kept in float until the sum of the others' costs fits the target (at most a quarter of the layers).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in QUANTIZE_MODES:
        raise ValueError(f"Unknown int8 mode {mode!r}; expected one of {QUANTIZE_MODES}.")
    with tempfile.TemporaryDirectory(prefix=".tmp-quantize-", dir=destination.parent) as scratch:
        # onnxruntime's recommended preparation: shape inference and graph simplifications, so that the quantizer
        # sees fused ops (its node names are the ones quantized / excluded below).
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        prepared_model = onnx.load(str(prepared))
        kept = float_kept_nodes(prepared_model, component, onnx.load(str(source), load_external_data=False))
        excluded = [entry["node"] for entry in kept]
        if mode == "dynamic":
            quantize_dynamic(str(prepared), str(destination), weight_type=QuantType.QInt8, per_channel=False,
                             op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=excluded)
            description = {"mode": "dynamic", "weights": "int8 (per tensor)",
                           "activations": "uint8, range computed per batch at run time",
                           "op_types": ["MatMul", "Gemm"], "calibration": None}
        else:
            if calibration is None or len(calibration) == 0:
                raise CalibrationError(f"Static int8 quantization of the {component} encoder needs calibration data.")
            size = batch or 8
            # A quarter of the samples (at most 16) is held out from the ranges to judge the result on.
            held_out = min(16, len(calibration) // 4)
            probe, calibration = calibration[len(calibration) - held_out:], calibration[:len(calibration) - held_out]
            if batch and len(calibration) % batch:
                pad = batch - len(calibration) % batch
                calibration = np.concatenate([calibration, calibration[:pad]])

            class Reader(_Batches, CalibrationDataReader):
                pass

            cache = Path(scratch) / "calibration.json"

            def quantize(output: Path, exclude: list[str], only: list[str] | None = None) -> None:
                quantize_static(
                    str(prepared), str(output), Reader(input_name, calibration, size), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude, nodes_to_quantize=only, op_types_to_quantize=list(STATIC_OP_TYPES),
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                                      "entropy": CalibrationMethod.Entropy}[method],
                    calibration_cache_path=str(cache),  # calibrate once, reuse for every variant below
                )

            quantize(destination, excluded)
            if not len(probe):  # too few samples to hold any out: judge on the calibration samples themselves
                probe = calibration[:16]
            reference = _run(prepared, probe, batch)
            error = _embedding_error(destination, probe, reference, batch)
            budget, sensitivity = 1 - target_cosine, []
            if error > budget:
                candidates = [node.name for node in prepared_model.graph.node
                              if node.op_type in STATIC_OP_TYPES and node.name not in excluded]
                # Measuring a layer means quantizing and running the model once more (seconds for a full-size
                # tower), so only the layers an estimate of their int8 noise ranks highest are measured.
                noise = _quantization_noise(prepared_model, candidates, probe[:8], input_name, Path(scratch))
                single = Path(scratch) / "single.onnx"
                for name in sorted(candidates, key=noise.get, reverse=True)[:MAX_MEASURED_LAYERS]:
                    quantize(single, [], [name])
                    sensitivity.append((_embedding_error(single, probe, reference, batch), name))
                sensitivity.sort(reverse=True)
                remaining, extra = sum(cost for cost, _ in sensitivity), []
                for cost, name in sensitivity[:len(candidates) // 4]:
                    if remaining <= budget:
                        break
                    extra.append((cost, name))
                    remaining -= cost
                named = {node.name: node for node in onnx.load(str(source), load_external_data=False).graph.node}
                initializers = {t.name for t in prepared_model.graph.initializer}
                by_name = {node.name: node for node in prepared_model.graph.node}
                for cost, name in extra:
                    kept.append({"node": name, "op_type": by_name[name].op_type,
                                 "module": _module_of(named.get(name, by_name[name]), initializers),
                                 "reason": f"sensitivity: int8 on this layer alone cost 1-cos = {cost:.1e} on "
                                           "held-out calibration inputs (among the largest)"})
                if extra:
                    quantize(destination, excluded + [name for _, name in extra])
                    error = _embedding_error(destination, probe, reference, batch)
            description = {"mode": "static", "format": "QDQ", "weights": "int8 (per channel)",
                           "op_types": list(STATIC_OP_TYPES),
                           "activations": f"uint8, ranges calibrated ({method}) on {len(calibration)} samples",
                           "calibration": {"method": method, "samples": int(len(calibration))},
                           "target_cosine": target_cosine,
                           "calibration_probe": {"samples": int(len(probe)), "cosine_mean": 1 - error,
                                                 "layers_measured_alone": len(sensitivity)}}
    quantized = onnx.load(str(destination), load_external_data=False)
    counts = collections.Counter(node.op_type for node in quantized.graph.node)
    description["int8_ops"] = {op: n for op, n in sorted(counts.items())
                               if op in ("QuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger",
                                         "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul")}
    description["kept_in_float"] = kept
    return description


def _quantization_noise(model, candidates: list[str], values: np.ndarray, input_name: str,
                        scratch: Path) -> dict[str, float]:
    """Estimated int8 noise-to-signal ratio of each candidate layer: its input activation quantized to uint8 over
    its observed range (noise step^2 / 12 against the mean square) plus its weights quantized per output channel to
    int8. One run of the float model on `values`, which outputs the candidates' inputs."""
    import onnx

    nodes = {node.name: node for node in model.graph.node if node.name in candidates}
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    probed = copy.deepcopy(model)
    activations = sorted({node.input[0] for node in nodes.values()} - {o.name for o in probed.graph.output})
    for name in activations:
        probed.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    path = scratch / "probed.onnx"
    onnx.save_model(probed, str(path))
    session = onnx_session(path)
    outputs = [o.name for o in session.get_outputs()]
    observed = dict(zip(outputs, session.run(outputs, {input_name: values})))
    noise = {}
    for name, node in nodes.items():
        x = observed.get(node.input[0])
        ratio = 0.0
        if x is not None and x.size:
            step = (float(x.max()) - float(min(x.min(), 0.0))) / 255
            ratio += step**2 / 12 / max(float(np.mean(x.astype(np.float64) ** 2)), 1e-30)
        if len(node.input) > 1 and node.input[1] in weights:
            w = onnx.numpy_helper.to_array(weights[node.input[1]]).astype(np.float64)
            w = w.reshape(w.shape[0], -1) if node.op_type == "Conv" else w.reshape(-1, w.shape[-1]).T
            scale = np.abs(w).max(axis=1, keepdims=True) / 127
            ratio += float(np.sum(scale**2 / 12 * np.ones_like(w)) / max(np.sum(w**2), 1e-30))
        noise[name] = ratio
    return noise


def _run(path: Path, values: np.ndarray, batch: int | None) -> np.ndarray:
    return run_onnx(onnx_session(path), values, batch)
