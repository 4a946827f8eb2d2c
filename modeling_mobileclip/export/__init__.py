"""Export MobileCLIP's encoders for on-device inference (ONNX or Core ML), always from the reparameterized model,
with the fidelity measured: `python -m modeling_mobileclip.export --help` (the command line: `command_line.py`).

One job per file: `preparation.py` (the encoder graphs and the fused model), `onnx_export.py`, `coreml_export.py`,
`quantization.py` (int8, ONNX) with `calibration.py` (its data), `fidelity.py` (exported vs fp32 PyTorch) and
`pipeline.py` (the export end to end, written atomically).
"""

from .calibration import CalibrationData, calibration_inputs, load_calibration_data
from .command_line import main, parse_args
from .coreml_export import COREML_FP32_OPS, DEFAULT_COREML_TARGET, describe_coreml, export_coreml, run_coreml
from .errors import CalibrationError, ExportInputError
from .fidelity import (
    FIDELITY_DATA,
    FIDELITY_TEMPLATE,
    fidelity_inputs,
    fidelity_metrics,
    fidelity_rows,
    fidelity_set,
    format_fidelity,
    pytorch_embeddings,
)
from .onnx_export import (
    DEFAULT_OPSET, MIN_OPSET, convert_onnx_float16, describe_onnx, export_onnx, onnx_session, run_onnx
)
from .pipeline import COMPONENTS, DTYPES, FORMATS, check_options, check_output, check_request, export, parse_batch
from .preparation import (
    ENCODERS,
    FILE_STEMS,
    INPUT_NAMES,
    OUTPUT_NAMES,
    MobileCLIPImageEncoder,
    MobileCLIPTextEncoder,
    config_sha256,
    example_input,
    fold_remaining_batchnorm_,
    load_exportable,
    preprocessing_manifest,
    reparameterize_for_export,
)
from .quantization import CALIBRATION_METHODS, DEFAULT_TARGET_COSINE, QUANTIZE_MODES, float_kept_nodes, quantize_onnx

__all__ = [
    "CALIBRATION_METHODS", "COMPONENTS", "COREML_FP32_OPS", "DEFAULT_COREML_TARGET", "DEFAULT_OPSET",
    "DEFAULT_TARGET_COSINE", "DTYPES", "ENCODERS", "FIDELITY_DATA", "FIDELITY_TEMPLATE", "FILE_STEMS", "FORMATS",
    "INPUT_NAMES", "MIN_OPSET", "OUTPUT_NAMES", "QUANTIZE_MODES", "CalibrationData", "CalibrationError",
    "ExportInputError", "MobileCLIPImageEncoder", "MobileCLIPTextEncoder", "calibration_inputs", "check_options",
    "check_output", "check_request", "config_sha256", "convert_onnx_float16", "describe_coreml", "describe_onnx", "example_input",
    "export", "export_coreml", "export_onnx", "fidelity_inputs", "fidelity_metrics", "fidelity_rows", "fidelity_set",
    "float_kept_nodes", "fold_remaining_batchnorm_", "format_fidelity", "load_calibration_data", "load_exportable",
    "main", "onnx_session", "parse_args", "parse_batch", "preprocessing_manifest", "pytorch_embeddings",
    "quantize_onnx", "reparameterize_for_export", "run_coreml", "run_onnx",
]
