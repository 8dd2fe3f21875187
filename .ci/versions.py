"""Print the versions this run tests, each beside its range in pyproject.toml; exit 1 when one is
installed outside its range (pip resolved something the ranges do not allow: a bug in them)."""
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement

project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]
print(f"tested on: Python {sys.version.split()[0]}, {sys.platform}")
outside = []
for line in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
    requirement = Requirement(line)
    try:
        installed = version(requirement.name)
    except PackageNotFoundError:
        installed = "not installed"
    print(f"  {requirement.name} {installed} ({requirement.specifier})")
    if not requirement.specifier.contains(installed, prereleases=True):
        outside.append(requirement.name)
if outside:
    print(f"outside the ranges of pyproject.toml: {', '.join(outside)}", file=sys.stderr)
    sys.exit(1)
