"""`python -m modeling_mobileclip.export`: ONNX graphs that reproduce PyTorch's normalised embeddings from the
reparameterized model (dynamic batch, the processor's token ids), fp16 and int8 fidelity, Core ML programs whose
spec has the expected inputs, outputs, shapes and compute precision, the manifest, and bad requests that fail clearly
and leave no output.

Random weights with BatchNorm statistics and layer scales perturbed (`perturb_`), so fusing is a real change. The
fast loop keeps one export of the dev variant through the CLI, the bad requests and the atomic output; the other
dev-variant exports (fp16, int8, Core ML: 10-25 s each) and the full-size variants (the issue's 1e-4 criterion on
mobileclip-s0/-s2/-b and mobileclip2-s0) are `slow`. Zero-shot agreement needs a model whose answers mean
something: tests/modeling/test_export_deploy.py trains one.
"""

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import EMOJI
from model_helpers import perturb_
from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel, MobileCLIPProcessor
from modeling_mobileclip.export import pipeline as export_module
from modeling_mobileclip.export import (
    ExportInputError, MobileCLIPImageEncoder, MobileCLIPTextEncoder, calibration_inputs, config_sha256,
    convert_onnx_float16, export, fidelity_inputs, fold_remaining_batchnorm_, load_calibration_data, main,
    onnx_session, pytorch_embeddings, quantize_onnx, run_onnx
)
from torch_threads import single_torch_thread  # noqa: F401

EMOJI_SET = str(EMOJI)
CAPTIONS = ["an emoji of a grinning face", "a red apple", "flag: japan, a white flag with a red circle"]


def _build(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    model = perturb_(MobileCLIPModel(MobileCLIPConfig.from_variant(variant)), seed).eval()
    return model, MobileCLIPProcessor.from_variant(variant)


@pytest.fixture(scope="module")
def tiny():
    return _build("mobileclip-tiny")


@pytest.fixture(scope="module")
def tiny_folder(tiny, tmp_path_factory):
    """The perturbed tiny model saved with its processor: what the CLI exports."""
    model, processor = tiny
    folder = tmp_path_factory.mktemp("tiny_perturbed")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def real_inputs(tiny):
    """Processor outputs of real emoji images and captions (5 rows: odd, so dynamic batching is exercised)."""
    _, processor = tiny
    inputs = fidelity_inputs(processor, 5)
    inputs["text"] = np.concatenate([inputs["text"], processor(text=CAPTIONS, return_tensors="np")["input_ids"]])
    return inputs


def _cosine(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _leftovers(path):
    """Anything an export at `path` may have left: the folder or its staging/temporary siblings."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))


# ------------------------------------------------------------------------------------------------ ONNX


def test_onnx_cli_export_matches_pytorch_and_writes_a_complete_manifest(tiny, tiny_folder, real_inputs, tmp_path):
    model, processor = tiny
    output = tmp_path / "onnx"
    manifest = main(["--model", str(tiny_folder), "--format", "onnx", "--output", str(output),
                     "--fidelity-samples", "16"])
    names = {p.name for p in output.iterdir()}
    assert {"image_encoder.onnx", "text_encoder.onnx", "manifest.json", "fidelity.json", "tokenizer.json",
            "processor_config.json"} <= names
    assert json.loads((output / "manifest.json").read_text()) == manifest

    # The graphs: dynamic batch, the processor's dtypes, normalised outputs, equal to unfused fp32 PyTorch.
    image, text = manifest["components"]["image"], manifest["components"]["text"]
    assert image["inputs"] == [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 64, 64]}]
    assert text["inputs"] == [{"name": "input_ids", "dtype": "int64", "shape": ["batch", 77]}]
    assert image["outputs"][0]["name"] == "image_embeds" and image["outputs"][0]["shape"][1] == 32
    assert text["outputs"][0]["name"] == "text_embeds" and text["outputs"][0]["dtype"] == "float32"
    assert manifest["opset"] >= 17 and image["opset"] == manifest["opset"]
    reference = pytorch_embeddings(model, real_inputs)
    for component, values in real_inputs.items():
        session = onnx_session(output / manifest["components"][component]["file"], threads=1)
        for rows in (values[:1], values):  # batch 1 and the whole (odd) batch through the same graph
            ours = run_onnx(session, rows)
            np.testing.assert_allclose(ours, reference[component][:len(rows)], atol=1e-4, rtol=0)
            np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)

    # What a deployment needs to reproduce the processor, and where the model came from.
    image_prep, text_prep = manifest["preprocessing"]["image"], manifest["preprocessing"]["text"]
    assert image_prep["resize"]["shortest_edge"] == 64 and image_prep["resize"]["resample"] == "bilinear"
    assert image_prep["center_crop"]["height"] == image_prep["center_crop"]["width"] == 64
    assert image_prep["mean"] == [0.0, 0.0, 0.0] and image_prep["std"] == [1.0, 1.0, 1.0]
    assert (text_prep["context_length"], text_prep["pad_token_id"], text_prep["eos_token_id"]) == (77, 0, 49407)
    ids = processor(text=CAPTIONS, return_tensors="np")["input_ids"]
    assert ids.shape == (3, 77) and (ids[:, -1] == text_prep["pad_token_id"]).all()
    assert manifest["source"]["config_sha256"] == config_sha256(MobileCLIPConfig.from_pretrained(tiny_folder))
    assert manifest["source"]["reparameterized"] is True and manifest["quantization"] is None
    assert manifest["logit_scale"] == pytest.approx(float(model.logit_scale.detach().exp()))
    reloaded = MobileCLIPProcessor.from_pretrained(output)  # the copied processor files load
    assert (reloaded(text=CAPTIONS, return_tensors="np")["input_ids"] == ids).all()

    fidelity = json.loads((output / "fidelity.json").read_text())
    assert fidelity["image"]["max_abs_diff"] <= 1e-4 and fidelity["text"]["max_abs_diff"] <= 1e-4
    assert fidelity["zero_shot"]["top1_agreement"] == 1.0 and fidelity["zero_shot"]["classes"] == 16


@pytest.mark.slow
def test_onnx_float16_and_static_batch(tiny, real_inputs, tmp_path):
    model, processor = tiny
    reference = pytorch_embeddings(model, real_inputs)
    manifest = export(model, processor, tmp_path / "fp16", dtype="float16", fidelity_samples=8, verbose=False)
    for component in ("image", "text"):
        expected_dtype = "float32" if component == "image" else "int64"
        assert manifest["components"][component]["inputs"][0]["dtype"] == expected_dtype
        ours = run_onnx(onnx_session(tmp_path / "fp16" / f"{component}_encoder.onnx", 1), real_inputs[component])
        assert _cosine(ours, reference[component]).min() >= 0.999
        np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)  # normalised in float32
    fidelity = json.loads((tmp_path / "fp16" / "fidelity.json").read_text())
    assert min(fidelity["image"]["cosine_min"], fidelity["text"]["cosine_min"]) >= 0.999

    manifest = export(model, processor, tmp_path / "static", component="image", batch=2, fidelity_samples=5,
                      verbose=False)
    assert list(manifest["components"]) == ["image"] and manifest["batch"] == 2
    assert manifest["components"]["image"]["inputs"][0]["shape"] == [2, 3, 64, 64]
    assert not (tmp_path / "static" / "text_encoder.onnx").exists()
    ours = run_onnx(onnx_session(tmp_path / "static" / "image_encoder.onnx", 1), real_inputs["image"], batch=2)
    np.testing.assert_allclose(ours, reference["image"], atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_onnx_int8_keeps_listed_layers_in_float_and_holds_cosine(tiny, real_inputs, tmp_path, mode):
    model, processor = tiny
    calibration = load_calibration_data(EMOJI_SET, 16, "google") if mode == "static" else None
    manifest = export(model, processor, tmp_path / mode, quantize="int8", int8_mode=mode, calibration=calibration,
                      fidelity_samples=16, verbose=False)
    quantization = manifest["quantization"]
    assert (quantization["type"], quantization["mode"]) == ("int8", mode)
    reference = pytorch_embeddings(model, real_inputs)
    for component in ("image", "text"):
        described = quantization["per_component"][component]
        assert described["mode"] == mode  # the emoji dataset has captions: the text encoder is calibrated too
        kept = {(entry["reason"].split(":")[0].split(" (")[0], entry["module"]) for entry in described["kept_in_float"]}
        projection = "text_projection" if component == "text" else "vision_model.backbone.head.fc"
        assert (f"{component} projection into the embedding space", projection) in kept
        assert any(reason == "attention scores Q.K^T" for reason, _ in kept)
        assert any(reason == "attention output softmax.V" for reason, _ in kept)
        if component == "image":
            assert ("first convolution", "vision_model.backbone.stem.0.reparam_conv") in kept
        assert any(count for op, count in described["int8_ops"].items())  # something was quantized
        ours = run_onnx(onnx_session(tmp_path / mode / f"{component}_encoder.onnx", 1), real_inputs[component])
        assert _cosine(ours, reference[component]).min() >= 0.99
    fidelity = json.loads((tmp_path / mode / "fidelity.json").read_text())
    assert min(fidelity["image"]["cosine_min"], fidelity["text"]["cosine_min"]) >= 0.99


def test_fold_remaining_batchnorm_folds_timm_conv_norm_act():
    """MobileCLIP-B's convolutional stem keeps BatchNorms after `reparameterize()`; the export folds them."""
    from timm.layers import ConvNormAct

    block = perturb_(torch.nn.Sequential(ConvNormAct(3, 8, 3, stride=2), ConvNormAct(8, 8, 1, apply_act=False))).eval()
    pixels = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        before = block(pixels)
        assert fold_remaining_batchnorm_(block) == ["0.bn", "1.bn"]
        after = block(pixels)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in block.modules())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ Core ML


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_coreml_programs_have_the_expected_spec(tiny, tmp_path, dtype):
    import coremltools as ct

    model, processor = tiny
    manifest = export(model, processor, tmp_path / "coreml", format="coreml", dtype=dtype, fidelity_samples=4,
                      verbose=False)
    precision = "float16" if dtype == "float16" else "float32"
    assert {k: v for k, v in manifest["coreml"].items() if k != "float32_ops"} == {
        "deployment_target": "iOS16", "program": "mlprogram", "compute_precision": precision.upper()}
    expected = {"image": ("pixel_values", "FLOAT32", [3, 64, 64]), "text": ("input_ids", "INT32", [77])}
    for component, (input_name, input_type, rest) in expected.items():
        spec = ct.utils.load_spec(str(tmp_path / "coreml" / f"{component}_encoder.mlpackage"))
        assert spec.WhichOneof("Type") == "mlProgram"
        (feature,) = spec.description.input
        array = feature.type.multiArrayType
        assert feature.name == input_name
        assert ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType) == input_type
        ranges = [[r.lowerBound, r.upperBound] for r in array.shapeRange.sizeRanges]
        assert ranges == [[1, 256]] + [[n, n] for n in rest]  # a dynamic batch of 1..256
        (output,) = spec.description.output
        assert output.name == f"{component}_embeds"
        assert output.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
        described = manifest["components"][component]
        assert described["outputs"][0]["shape"] == ["batch", 32]
        # Compute precision is what the program's compute ops run in.
        compute = described["program"]["compute_dtypes"]
        assert compute.pop("reduce_l2_norm") == {"float32": 1}  # the output normalisation stays float32
        assert compute and all(set(dtypes) == {precision} for dtypes in compute.values()), compute
        assert spec.description.metadata.userDefined["mobileclip.component"] == component
    fidelity = json.loads((tmp_path / "coreml" / "fidelity.json").read_text())
    if export_module.sys.platform != "darwin":
        assert "macOS" in fidelity["not_measured"]


# ------------------------------------------------------------------------------------------------ bad requests


def test_unknown_component_fails_clearly_and_writes_nothing(tiny, tiny_folder, tmp_path, capsys):
    output = tmp_path / "out"
    with pytest.raises(SystemExit):
        main(["--model", str(tiny_folder), "--format", "onnx", "--output", str(output), "--component", "audio"])
    assert "invalid choice: 'audio'" in capsys.readouterr().err
    with pytest.raises(ExportInputError, match="Unknown component 'audio'"):
        export(*tiny, output, component="audio", verbose=False)
    with pytest.raises(ExportInputError, match="opset 18 or newer"):
        export(*tiny, output, opset=17, verbose=False)
    assert _leftovers(output) == []


def test_static_int8_without_calibration_fails_clearly_and_writes_nothing(tiny_folder, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(ExportInputError, match="Static int8 quantization needs calibration images"):
        main(["--model", str(tiny_folder), "--format", "onnx", "--output", str(output), "--quantize", "int8",
              "--int8-mode", "static"])
    assert _leftovers(output) == []


def test_model_folder_without_processor_fails_clearly_and_writes_nothing(tiny_folder, tmp_path):
    folder = tmp_path / "model_only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_folder / name, folder / name)
    output = tmp_path / "out"
    with pytest.raises(ExportInputError, match="missing processor_config.json or preprocessor_config.json, "
                                               r"tokenizer.json \(or vocab.json \+ merges.txt\)"):
        main(["--model", str(folder), "--format", "onnx", "--output", str(output)])
    assert _leftovers(output) == []
    with pytest.raises(ExportInputError, match="is the model folder itself"):
        main(["--model", str(tiny_folder), "--format", "onnx", "--output", str(tiny_folder)])


def test_failure_half_way_leaves_no_output_and_keeps_an_earlier_export(tiny, tmp_path, monkeypatch):
    model, processor = tiny
    output = tmp_path / "out"
    export(model, processor, output, component="image", fidelity_samples=0, verbose=False)
    earlier = sorted(p.name for p in output.iterdir())
    real_export_onnx = export_module.export_onnx

    def fail_on_text(encoder, *args, **kwargs):
        if isinstance(encoder, MobileCLIPTextEncoder):
            raise RuntimeError("exporter crashed")
        assert isinstance(encoder, MobileCLIPImageEncoder)
        return real_export_onnx(encoder, *args, **kwargs)

    monkeypatch.setattr(export_module, "export_onnx", fail_on_text)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export(model, processor, output, fidelity_samples=0, verbose=False)
    assert _leftovers(output) == ["out"] and sorted(p.name for p in output.iterdir()) == earlier
    assert list(json.loads((output / "manifest.json").read_text())["components"]) == ["image"]
    with pytest.raises(RuntimeError):
        export(model, processor, tmp_path / "new", component="text", fidelity_samples=0, verbose=False)
    assert _leftovers(tmp_path / "new") == []


# ------------------------------------------------------------------------------------------------ full size (slow)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mobileclip-s0", "mobileclip-s2", "mobileclip-b", "mobileclip2-s0"])
def test_full_size_onnx_fp32_equals_pytorch_fp16_and_int8_hold_cosine(variant, tmp_path):
    """The issue's criteria on the published architectures: fp32 within 1e-4 (max abs, normalised embeddings), fp16
    cosine >= 0.999; int8 (dynamic and static, from the same exported graph) cosine >= 0.99 on mobileclip-s0."""
    model, processor = _build(variant)
    inputs = fidelity_inputs(processor, 6)
    inputs["text"] = np.concatenate([inputs["text"], processor(text=CAPTIONS, return_tensors="np")["input_ids"]])
    reference = pytorch_embeddings(model, inputs)
    manifest = export(model, processor, tmp_path / "fp32", fidelity_samples=0, verbose=False)
    if variant == "mobileclip-b":  # its convolutional stem's BatchNorms are folded by the export
        assert len(manifest["source"]["batchnorm_folded_by_export"]) == 2
    calibration = load_calibration_data(EMOJI_SET, 24, "google") if variant == "mobileclip-s0" else None
    for component in ("image", "text"):
        path = tmp_path / "fp32" / f"{component}_encoder.onnx"
        fp32 = run_onnx(onnx_session(path, 1), inputs[component])
        assert np.abs(fp32 - reference[component]).max() <= 1e-4, (variant, component)
        convert_onnx_float16(path, tmp_path / f"{component}_fp16.onnx")
        fp16 = run_onnx(onnx_session(tmp_path / f"{component}_fp16.onnx", 1), inputs[component])
        assert _cosine(fp16, reference[component]).min() >= 0.999, (variant, component)
        np.testing.assert_allclose(np.linalg.norm(fp16, axis=-1), 1.0, atol=1e-5)
        if calibration is None:
            continue
        for mode in ("dynamic", "static"):
            quantized = tmp_path / f"{component}_{mode}.onnx"
            values = calibration_inputs(calibration, processor, component)
            described = quantize_onnx(path, quantized, component, mode, export_module.INPUT_NAMES[component], values)
            assert described["kept_in_float"]
            int8 = run_onnx(onnx_session(quantized, 1), inputs[component])
            assert _cosine(int8, reference[component]).min() >= 0.99, (variant, component, mode)


@pytest.mark.slow
def test_full_size_coreml_conversion(tmp_path):
    model, processor = _build("mobileclip-s0")
    manifest = export(model, processor, tmp_path / "coreml", format="coreml", dtype="float16", fidelity_samples=0,
                      verbose=False)
    for component, described in manifest["components"].items():
        assert described["outputs"][0]["shape"] == ["batch", 512]
        compute = described["program"]["compute_dtypes"]
        assert compute.pop("reduce_l2_norm") == {"float32": 1}
        assert all(set(d) == {"float16"} for d in compute.values())
