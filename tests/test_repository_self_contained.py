"""A clone of the repository alone runs its tests: no test, package or document reads a folder beside the repository
(the development machine's read-only `shared` folder, or an environment variable naming it), and the oracle files the
tests use (golden outputs of Apple's code, the published-results excerpt, the emoji dataset) ship inside it."""

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from conftest import EMOJI, GOLDEN, REFERENCE, REPO_ROOT

# Built from pieces so that this file does not match its own patterns.
_SHARED = "shared"
FORBIDDEN = [
    re.compile(rb"\.\./" + _SHARED.encode() + rb"\b"),  # a relative path to the sibling folder
    re.compile(rb"MOBILECLIP_" + _SHARED.upper().encode()),  # the environment variable that pointed there
    re.compile(rb"/\s*[\"']" + _SHARED.encode() + rb"[\"']"),  # a Path joined with that folder name
    re.compile(rb"/work/" + _SHARED.encode() + rb"\b"),  # the development machine's absolute path
]

# What is scanned: every file of the repository except version control, environments and build or run outputs.
SKIPPED_DIRS = {".git", "__pycache__", ".pytest_cache", "build", "dist", "outputs", "runs"}


def _skipped(name: str) -> bool:
    return name in SKIPPED_DIRS or name.startswith(".venv") or name.endswith(".egg-info")


def _repository_files():
    for folder, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = sorted(name for name in dirs if not _skipped(name))
        for name in sorted(files):
            yield (Path(folder) / name).relative_to(REPO_ROOT)


@pytest.mark.parametrize("text", [
    "Path(__file__).resolve().parents[1].parent / " + repr(_SHARED),
    'GOLDEN = ROOT / "' + _SHARED + '" / "golden"',
    "see ../" + _SHARED + "/reference/mobileclip.md section 10.1",
    "os.environ.get('MOBILECLIP_" + _SHARED.upper() + "')",
    "datasets.load_dataset('/work/" + _SHARED + "/data/emoji')",
])
def test_the_patterns_catch_every_known_spelling(text):
    assert any(pattern.search(text.encode()) for pattern in FORBIDDEN)


@pytest.mark.parametrize("text", ["a shared initialisation", "shared by the evaluation tests", "a shared 2-core VM"])
def test_the_patterns_leave_the_word_alone(text):
    assert not any(pattern.search(text.encode()) for pattern in FORBIDDEN)


def test_no_file_refers_to_a_folder_beside_the_repository():
    files = list(_repository_files())
    scanned = {path.parts[0] for path in files}
    assert {"tests", "modeling_mobileclip", "dataset_scripts", "evaluation", "training", "README.md"} <= scanned
    offenders = []
    for relative in files:
        for number, line in enumerate((REPO_ROOT / relative).read_bytes().splitlines(), 1):
            if any(pattern.search(line) for pattern in FORBIDDEN):
                offenders.append(f"{relative}:{number}: {line.decode(errors='replace').strip()[:160]}")
    assert not offenders, "Files refer to a folder outside the repository:\n" + "\n".join(offenders)


def test_the_oracle_files_ship_inside_the_repository():
    for folder in (GOLDEN, REFERENCE, EMOJI):
        assert folder.resolve().is_relative_to(REPO_ROOT) and folder.is_dir(), folder
    for variant in ("s0", "s1", "s2", "b"):
        for suffix in ("manifest.json", "io.json", "io.safetensors"):
            assert (GOLDEN / f"apple_mobileclip_{variant}.{suffix}").is_file(), (variant, suffix)
        for image in json.loads((GOLDEN / f"apple_mobileclip_{variant}.io.json").read_text())["images"]:
            data = (GOLDEN / image["file"]).read_bytes()  # the exact bytes Apple's code preprocessed
            assert hashlib.sha256(data).hexdigest() == image["sha256"], (variant, image["file"])
    for name in ("README.md", "make_weights.py", "LICENSE-apple-ml-mobileclip.txt"):
        assert (GOLDEN / name).is_file(), name
    assert "MIT License" in (GOLDEN / "LICENSE-apple-ml-mobileclip.txt").read_text()
    assert (REFERENCE / "mobileclip_published_results.md").is_file()
    for name in ("twitter.parquet", "google.parquet", "classnames.json", "README.md"):
        assert (EMOJI / name).is_file(), name
