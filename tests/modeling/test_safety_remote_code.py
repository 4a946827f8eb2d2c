"""Code shipped with a model runs only when the user asks for it (`--trust-remote-code`, `hf+remote:` teachers).

Two folders hold Python that creates a marker file when imported:
- `remote`: config.json names an unknown model_type whose classes live in the folder's `evil.py` (MobileCLIP
  subclasses, so that with trust the whole evaluation runs and must give the same numbers as plain MobileCLIP);
- `ours`: a saved MobileCLIP folder whose copied `modeling_mobileclip.py` got the marker line. This package loads
  such folders with its own classes, so that line never runs, with or without the flag.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from evaluation import retrieval
from evaluation.common import evaluation_parser, load_evaluated_model
from modeling_mobileclip.loading import RemoteCodeError


EVIL_CODE = """
open({marker!r}, "w").close()  # what any code could do: it runs on import

from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel


class EvilConfig(MobileCLIPConfig):
    model_type = "evil_clip"


class EvilModel(MobileCLIPModel):
    config_class = EvilConfig
"""


@pytest.fixture
def folders(tmp_path, tiny_model_dir):
    marker = tmp_path / "code_ran"
    ours = shutil.copytree(tiny_model_dir, tmp_path / "ours")
    code = ours / "modeling_mobileclip.py"
    assert code.is_file()  # the remote-code copy that AutoModel(..., trust_remote_code=True) would import
    code.write_text(f"open({str(marker)!r}, 'w').close()\n" + code.read_text())

    remote = shutil.copytree(tiny_model_dir, tmp_path / "remote")
    (remote / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    config = json.loads((remote / "config.json").read_text())
    config["model_type"] = "evil_clip"
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(config))
    return ours, remote, marker


def _retrieval(model: Path, dataset: Path, *extra: str) -> dict:
    return retrieval.main(["--model", str(model), "--dataset", str(dataset), "--caption-column", "captions",
                           "--batch-size", "8", "--num-workers", "0", "--cpu", *extra])


def test_remote_code_does_not_run_without_the_flag(folders, emoji_subset):
    ours, remote, marker = folders
    with pytest.raises(RemoteCodeError, match=r"names custom code .*evil\.EvilModel.*rerun with --trust-remote-code"):
        _retrieval(remote, emoji_subset)
    assert not marker.exists()


@pytest.mark.slow
def test_mobileclip_folders_load_with_our_classes_never_their_copied_code(folders, emoji_subset):
    from modeling_mobileclip import MobileCLIPModel

    ours, remote, marker = folders
    plain = _retrieval(ours, emoji_subset)
    assert not marker.exists()
    assert _retrieval(ours, emoji_subset, "--trust-remote-code") == plain  # trusting changes nothing for ours
    assert not marker.exists()

    # With the flag the folder's own code runs (the marker appears) and, being MobileCLIP underneath, gives the
    # same numbers as the plain folder.
    trusted = _retrieval(remote, emoji_subset, "--trust-remote-code")
    assert marker.exists()
    assert trusted == plain

    model, _ = load_evaluated_model(str(ours), Accelerator(cpu=True))
    assert type(model) is MobileCLIPModel


def test_every_evaluation_cli_takes_the_flag_and_defaults_to_off():
    from evaluation import aro

    assert evaluation_parser("").parse_args(["--model", "m"]).trust_remote_code is False
    assert evaluation_parser("").parse_args(["--model", "m", "--trust-remote-code"]).trust_remote_code is True
    common = ["--model", "m", "--task", "vg_relation", "--root", "r"]
    assert aro.parse_args(common).trust_remote_code is False
    assert aro.parse_args([*common, "--trust-remote-code"]).trust_remote_code is True


def test_latency_refuses_non_mobileclip_folders_without_running_their_code(folders):
    from evaluation.common import EvaluationInputError
    from evaluation.latency import build_models

    _, remote, marker = folders
    with pytest.raises(EvaluationInputError, match="model_type 'evil_clip', not a MobileCLIP checkpoint"):
        build_models(None, str(remote))
    assert not marker.exists()


@pytest.mark.slow
def test_hf_teachers_run_remote_code_only_with_hf_plus_remote(folders):
    from dataset_scripts.teachers import load_teacher, parse_model_spec

    ours, remote, marker = folders
    assert parse_model_spec(f"hf:{remote}").trust_remote_code is False
    assert parse_model_spec(f"hf+remote:{remote}").trust_remote_code is True
    with pytest.raises(ValueError, match="Expected a captioner spec"):  # captioners never take remote code
        parse_model_spec(f"hf+remote:{remote}", role="captioner")

    with pytest.raises(ValueError, match=rf"use the teacher spec 'hf\+remote:{remote}'"):
        load_teacher(f"hf:{remote}", torch.device("cpu"), torch.float32)
    assert not marker.exists()

    plain = load_teacher(f"hf:{ours}", torch.device("cpu"), torch.float32)
    assert not marker.exists()
    views = torch.randint(0, 256, (2, 3, plain.image_size, plain.image_size), dtype=torch.uint8)

    trusted = load_teacher(f"hf+remote:{remote}", torch.device("cpu"), torch.float32)
    assert marker.exists() and type(trusted.model).__name__ == "EvilModel"
    torch.testing.assert_close(trusted.encode_images(views), plain.encode_images(views), atol=0, rtol=0)
