"""Prints a pip constraints file that pins every direct dependency of pyproject.toml (with the given extras) to the
lowest version its range allows, as uv's `--resolution lowest-direct` does: CI installs the suite against it so that
the declared minimums are the tested ones.

    python .ci/lowest_constraints.py test > constraints-lowest.txt
"""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
requirements = list(project["dependencies"])
for extra in sys.argv[1:]:
    requirements += project["optional-dependencies"][extra]

pins = {}
for requirement in requirements:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*([^;#]*)", requirement)
    name, spec = match.group(1).lower().replace("_", "-"), match.group(2)
    lowest = re.search(r">=\s*([0-9][^,\s]*)", spec)
    if lowest is None:
        sys.exit(f"error: {requirement!r} has no lower bound (>=): the lowest-version run cannot pin it")
    pins[name] = max(pins.get(name, lowest.group(1)), lowest.group(1), key=lambda v: tuple(map(int, re.findall(r"\d+", v))))
print("\n".join(f"{name}=={version}" for name, version in sorted(pins.items())))
