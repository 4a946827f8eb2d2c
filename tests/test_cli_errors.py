"""Command lines fail like command lines: every entry point turns a bad input into one `error: ...` line on stderr
and a non-zero exit status, without a traceback (`modeling_mobileclip/cli.py`); `--debug` / `MOBILECLIP_DEBUG=1`
show the traceback; under `accelerate launch` the line appears once.

Each entry point runs in a subprocess, as a user types it, with one realistic bad input that fails before any model
is built or trained."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, free_port, subprocess_env


@pytest.fixture(autouse=True)
def no_debug_or_rank(monkeypatch):
    """The outcome must not depend on the caller's MOBILECLIP_DEBUG or launcher variables (the subprocesses inherit
    this environment too)."""
    for name in ("MOBILECLIP_DEBUG", "RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        # setenv first: delenv of an unset variable records nothing to undo, and run_main(["--debug"]) sets
        # MOBILECLIP_DEBUG for the processes it starts, which would then leak into the following test modules.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def run_command(command: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=subprocess_env(**env), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_clean_error(result: subprocess.CompletedProcess, *names: str) -> str:
    """Non-zero exit, the last stderr line is `error: ...` naming `names`, and no traceback; returns that line."""
    shown = f"exit {result.returncode}\nstdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-4000:]}"
    assert result.returncode != 0, shown
    assert "Traceback" not in result.stderr, shown
    line = last_line(result.stderr)
    assert line.startswith("error: "), shown
    for name in names:
        assert name in line, f"{name!r} not in the error line:\n{shown}"
    return line


# --- the bad inputs, one per entry point ----------------------------------------------------------------------------


def foreign_checkpoint(tmp: Path) -> tuple[list[str], list[str]]:
    """A torch file that is not a MobileCLIP checkpoint."""
    import torch

    torch.save({"classifier.weight": torch.zeros(2, 2)}, tmp / "foreign.pt")
    return ["-m", "modeling_mobileclip.convert", "--checkpoint", "foreign.pt", "--output", "converted"], \
        ["foreign.pt", "is not a MobileCLIP checkpoint"]


def export_into_a_foreign_folder(tmp: Path):
    """`--output` is someone's folder, not an earlier export: refused before the model is loaded."""
    (tmp / "my_folder").mkdir()
    (tmp / "my_folder" / "notes.txt").write_text("mine\n")
    return ["-m", "modeling_mobileclip.export", "--model", "some_model", "--format", "onnx", "--output", "my_folder"], \
        ["my_folder", "is not an earlier export"]


def missing_bpe_file(tmp: Path):
    return ["-m", "modeling_mobileclip.convert_vocab", "--bpe", "missing_bpe.txt.gz", "--out", "vocab"], \
        ["missing_bpe.txt.gz"]


def bad_teacher_spec(tmp: Path):
    return ["-m", "dataset_scripts.reinforce", "--source", "source.parquet", "--output", "reinforced",
            "--teachers", "openclip:ViT-B-32"], ["teacher spec", "'openclip:ViT-B-32'"]


def convert_into_a_foreign_folder(tmp: Path):
    """Official shards converted into a folder holding files no run of ours wrote (ownership refusal)."""
    from test_dataset_official import official_sample, write_tar

    (tmp / "shards").mkdir()
    write_tar(tmp / "shards" / "00000000.tar", [("0a00", official_sample("0a00", 0, "npz")[0])])
    (tmp / "pulled").mkdir()
    (tmp / "pulled" / "README.md").write_text("# my notes\n")
    return ["-m", "dataset_scripts.convert_official", "--shards", "shards/*.tar", "--output", "pulled",
            "--no-progress"], ["Refusing to write into pulled", "README.md"]


def missing_data_folder(module: str):
    def make(tmp: Path):
        return ["-m", module, "--model", "some_model", "--dataset", str(tmp / "missing_data"), "--cpu"], \
            ["missing_data"]
    return make


def data_without_image_column(tmp: Path):
    (tmp / "captions.csv").write_text("caption,label\na cat,0\n")
    return ["-m", "evaluation.retrieval", "--model", "some_model", "--dataset", "captions.csv", "--cpu"], \
        ["captions.csv", "no column 'image'"]


def unknown_suite_task(tmp: Path):
    return ["-m", "evaluation.suite", "--model", "some_model", "--tasks", "imagenet_1k_typo", "--no-hub", "--cpu"], \
        ["imagenet_1k_typo"]


def missing_aro_root(tmp: Path):
    return ["-m", "evaluation.aro", "--model", "some_model", "--task", "vg_relation", "--root", "aro_data", "--cpu"], \
        ["aro_data", "visual_genome_relation.json"]


def unknown_variant(module: str, option: str):
    def make(tmp: Path):
        return ["-m", module, option, "mobileclip-s9"], ["'mobileclip-s9'"]
    return make


def quickstart_bad_teacher(tmp: Path):
    return ["-m", "training.quickstart", "--teacher", "open_clip:ViT-B-32", "--output-dir", "quickstart"], \
        ["teacher spec", "'open_clip:ViT-B-32'"]


def demo_missing_images(tmp: Path):
    return ["-m", "evaluation.demo", "--model", "some_model", "--images", "photos/"], \
        ["--images photos/", "no such folder or file"]


def config_with_a_bad_key(tmp: Path):
    (tmp / "run.yaml").write_text("variant: mobileclip-tiny\nlearning_rat: 0.001\n")
    return ["-m", "training.train", "--config", "run.yaml"], ["run.yaml", "learning_rat", "learning_rate"]


def train_script_missing_data(tmp: Path):
    """`python training/train.py` (the script form `accelerate launch` runs) with a data folder that is not there."""
    return [str(REPO_ROOT / "training" / "train.py"), "--variant", "mobileclip-tiny", "--per_device_batch_size", "2",
            "--mixed_precision", "no", "--report_to", "none", "--num_workers", "0", "--output_dir", "run",
            "--train_data", str(tmp / "missing_data")], ["missing_data"]


CASES = {  # case: (the entry point it drives, the bad input)
    "convert": ("modeling_mobileclip.convert", foreign_checkpoint),
    "export": ("modeling_mobileclip.export", export_into_a_foreign_folder),
    "convert_vocab": ("modeling_mobileclip.convert_vocab", missing_bpe_file),
    "reinforce": ("dataset_scripts.reinforce", bad_teacher_spec),
    "convert_official": ("dataset_scripts.convert_official", convert_into_a_foreign_folder),
    "zero_shot": ("evaluation.zero_shot", missing_data_folder("evaluation.zero_shot")),
    "retrieval": ("evaluation.retrieval", data_without_image_column),
    "suite": ("evaluation.suite", unknown_suite_task),
    "aro": ("evaluation.aro", missing_aro_root),
    "latency": ("evaluation.latency", unknown_variant("evaluation.latency", "--variant")),
    "model_zoo": ("evaluation.model_zoo", unknown_variant("evaluation.model_zoo", "--variants")),
    "demo": ("evaluation.demo", demo_missing_images),
    "quickstart": ("training.quickstart", quickstart_bad_teacher),
    "train_module": ("training.train", config_with_a_bad_key),
    "train_script": ("training.train", train_script_missing_data),
}


@pytest.mark.slow  # a fresh interpreter per entry point: 10-15 s each on a loaded 2-core machine
@pytest.mark.parametrize("case", list(CASES))
def test_entry_point_reports_a_bad_input_as_one_error_line(case, tmp_path):
    args, names = CASES[case][1](tmp_path)
    result = run_command([sys.executable, *args], tmp_path)
    assert_clean_error(result, *names)
    assert result.returncode == 1


def test_every_entry_point_is_driven_and_uses_run_main():
    """The cases above drive every `__main__` block of the packages, and each block goes through `run_main`."""
    found = set()
    for package in ("modeling_mobileclip", "dataset_scripts", "evaluation", "training"):
        for path in (REPO_ROOT / package).rglob("*.py"):
            block = re.split(r'^if __name__ == "__main__":$', path.read_text(), flags=re.M)
            if len(block) > 1:
                # A package's __main__.py is run as `python -m package`.
                found.add(".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__main__"))
                assert "run_main(main)" in block[1], path
    assert found == {module for module, _ in CASES.values()}


# --- --debug, MOBILECLIP_DEBUG, usage errors ------------------------------------------------------------------------


@pytest.mark.slow
def test_debug_flag_shows_the_traceback(tmp_path):
    args, _ = missing_bpe_file(tmp_path)
    result = run_command([sys.executable, *args, "--debug"], tmp_path)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "FileNotFoundError" in result.stderr
    assert "missing_bpe.txt.gz" in result.stderr


@pytest.mark.slow
def test_debug_environment_variable_shows_the_traceback(tmp_path):
    args, _ = config_with_a_bad_key(tmp_path)
    result = run_command([sys.executable, *args], tmp_path, MOBILECLIP_DEBUG="1")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "ConfigError" in result.stderr
    assert "learning_rat" in last_line(result.stderr) and not last_line(result.stderr).startswith("error: ")


@pytest.mark.slow
def test_usage_errors_keep_argparse_status_2(tmp_path):
    result = run_command([sys.executable, "-m", "modeling_mobileclip.convert"], tmp_path)  # --output missing
    assert result.returncode == 2 and "usage:" in result.stderr and "Traceback" not in result.stderr


# --- several processes ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_accelerate_launch_of_two_processes_prints_the_error_once(tmp_path):
    args, names = config_with_a_bad_key(tmp_path)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(REPO_ROOT / "training" / "train.py"), *args[2:]]
    result = run_command(command, tmp_path, timeout=600, ACCELERATE_USE_CPU="true")
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, result.stderr[-4000:]
    assert all(name in error_lines[0] for name in names) and "[rank" not in error_lines[0]


# --- the helper itself, in process ----------------------------------------------------------------------------------


def _raise(error: BaseException):
    def main(argv):
        raise error
    return main


@pytest.mark.parametrize("error, user_facing", [
    (ValueError("bad value"), True),
    (FileNotFoundError(2, "No such file or directory", "x.pt"), True),
    (PermissionError(13, "Permission denied", "/root/out"), True),
    (ModuleNotFoundError("No module named 'onnx'"), True),
    (TypeError("unsupported operand"), False),
    (RuntimeError("CUDA error: device-side assert"), False),
    (AssertionError(), False),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v))
def test_which_errors_are_user_facing(error, user_facing, capsys):
    from modeling_mobileclip.cli import run_main

    if user_facing:
        with pytest.raises(SystemExit) as exited:
            run_main(_raise(error), [])
        assert exited.value.code == 1
        assert capsys.readouterr().err.startswith("error: ")
    else:
        with pytest.raises(type(error)):
            run_main(_raise(error), [])


def test_project_raise_statements_are_user_facing_whatever_their_type():
    """A `raise` in the project's packages is a deliberate message whatever its type (e.g. training's refusal of a
    multi-process launch without torch.distributed, a RuntimeError); the same type from elsewhere is a bug."""
    import torch

    from modeling_mobileclip.cli import is_user_error
    from training.losses import _distributed_ready

    with pytest.raises(RuntimeError, match="torch.distributed is not initialised") as raised:
        _distributed_ready(2)
    assert is_user_error(raised.value)
    with pytest.raises(RuntimeError) as raised:  # torch's own shape error: keeps its traceback
        torch.zeros(2) @ torch.zeros(3)
    assert not is_user_error(raised.value)
    with pytest.raises(NotImplementedError) as raised:
        raise NotImplementedError
    assert not is_user_error(raised.value)


def test_keyboard_interrupt_exits_130_silently(capsys):
    from modeling_mobileclip.cli import run_main

    with pytest.raises(SystemExit) as exited:
        run_main(_raise(KeyboardInterrupt()), [])
    assert exited.value.code == 130 and capsys.readouterr().err == ""


def test_debug_flag_is_taken_out_before_main_and_only_before_a_double_dash():
    from modeling_mobileclip.cli import DEBUG_ENV, run_main, split_debug_flag

    assert split_debug_flag(["--a", "--debug", "--", "--debug"]) == (["--a", "--", "--debug"], True)
    assert split_debug_flag(["--a", "1"]) == (["--a", "1"], False)
    assert run_main(lambda argv: argv, ["--x", "--debug"]) == ["--x"]
    assert os.environ[DEBUG_ENV] == "1"  # passed on to the processes the command starts
    with pytest.raises(ValueError):  # and the traceback is shown
        run_main(_raise(ValueError("bad")), [])


def test_other_ranks_wait_then_name_their_rank(monkeypatch, capsys):
    """A process of rank > 0 prints only if the launcher has not stopped it after the grace period: its error was
    its own (rank 0 did not fail alike)."""
    from modeling_mobileclip import cli

    monkeypatch.setenv("RANK", "1")
    slept = []
    monkeypatch.setattr(cli.time, "sleep", slept.append)
    with pytest.raises(SystemExit) as exited:
        cli.run_main(_raise(ValueError("shard 7 is corrupt")), [])
    assert exited.value.code == 1 and slept == [cli.OTHER_RANK_GRACE_S]
    assert capsys.readouterr().err == "error: [rank 1] shard 7 is corrupt\n"
    monkeypatch.setenv("RANK", "0")
    slept.clear()
    with pytest.raises(SystemExit):
        cli.run_main(_raise(FileNotFoundError("no shard matches train-*.tar")), [])
    assert slept == [] and capsys.readouterr().err == "error: no shard matches train-*.tar\n"
    assert cli.error_message(KeyError("learning_rat")) == "learning_rat"  # not "'learning_rat'"
    assert cli.error_message(ValueError()) == "ValueError"


# --- layering and the remote-code folder ----------------------------------------------------------------------------


def imported_modules(path: Path) -> set[str]:
    """The modules a file imports (`from . import x` and `from .x import y` give `.x`)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            modules |= {base} if node.module else {base + alias.name for alias in node.names}
    return modules


def test_cli_is_not_remote_code_and_imports_no_upper_package(tiny_model_dir):
    from transformers.dynamic_module_utils import get_relative_import_files

    package = REPO_ROOT / "modeling_mobileclip"
    copied = set()  # what save_pretrained copies: the registered classes' files and their relative imports
    for name in ("modeling_mobileclip.py", "processing_mobileclip.py", "configuration_mobileclip.py"):
        copied |= {Path(p).name for p in get_relative_import_files(str(package / name))} | {name}
    assert "cli.py" not in copied and not (tiny_model_dir / "cli.py").exists()
    for name in copied:
        assert not any(module.split(".")[-1] == "cli" for module in imported_modules(package / name)), name
    roots = {module.split(".")[0] for module in imported_modules(package / "cli.py")}
    assert roots <= {"__future__", "linecache", "os", "sys", "time", "collections", "pathlib", "typing"}, roots
