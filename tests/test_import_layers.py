"""The project's import layers (pyproject.toml, `[tool.importlinter]`), checked by import-linter's `lint-imports`.

Bottom-up: modeling_mobileclip <- dataset_scripts <- evaluation <- training <- benchmarks; the quickstart experiment
sits on top of training; the remote-code files of modeling_mobileclip import only each other. The contracts are
shown to hold on the repository and to break on a copy of it with one import added against them.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGES = ("modeling_mobileclip", "dataset_scripts", "evaluation", "training", "benchmarks")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the packages under `root`, with `root`'s pyproject.toml (no cache folder written)."""
    assert LINT_IMPORTS.is_file(), f"{LINT_IMPORTS} is missing: install the test extra (pip install -e \".[test]\")."
    environment = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=environment, capture_output=True,
                          text=True, timeout=300)


def test_the_repository_keeps_its_import_layers():
    result = lint_imports(REPO_ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "0 broken" in output


def _python_files_only(folder: str, names: list[str]) -> set[str]:
    return {name for name in names if name == "__pycache__"
            or (not name.endswith(".py") and not os.path.isdir(os.path.join(folder, name)))}


@pytest.fixture
def repository_copy(tmp_path: Path) -> Path:
    """The project's Python files and its pyproject.toml, in a folder of their own."""
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, tmp_path / package, ignore=_python_files_only)
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize("module, added, importer, imported", [
    # upward across packages: the lowest layer importing the training layer
    ("modeling_mobileclip/atomic.py", "import training", "modeling_mobileclip.atomic", "training"),
    # the rest of training importing the quickstart experiment above it
    ("training/inputs.py", "import training.quickstart", "training.inputs", "training.quickstart"),
    # a remote-code file importing a module the model folder does not ship
    ("modeling_mobileclip/processing_mobileclip.py", "from . import loading",
     "modeling_mobileclip.processing_mobileclip", "modeling_mobileclip.loading"),
])
def test_an_import_against_the_layers_breaks_them(repository_copy, module, added, importer, imported):
    assert lint_imports(repository_copy).returncode == 0  # the copy alone keeps them
    path = repository_copy / module
    path.write_text(path.read_text() + f"\n{added}\n")
    result = lint_imports(repository_copy)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "BROKEN" in output and f"{importer} -> {imported}" in output, output


def test_a_new_training_module_must_be_placed_in_the_layers(repository_copy):
    (repository_copy / "training" / "unplaced.py").write_text('"""A module no contract lists."""\n')
    result = lint_imports(repository_copy)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "training.unplaced" in output, output
