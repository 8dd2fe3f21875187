"""The versions the suite runs on: pyproject.toml bounds every dependency on both sides, what is
installed lies within, and CI prints what it tested (.ci/versions.py, before pytest)."""
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(line) for line in [*project["dependencies"], *project["optional-dependencies"]["test"]]]


def test_every_dependency_is_bounded_on_both_sides_and_installed_within():
    for requirement in requirements():
        operators = {spec.operator for spec in requirement.specifier}
        assert operators & {">=", ">"} and operators & {"<", "<="}, f"{requirement} is not bounded on both sides"
        assert requirement.specifier.contains(version(requirement.name), prereleases=True), \
            f"{requirement.name} {version(requirement.name)} is installed, outside {requirement.specifier}"


def test_ci_prints_the_versions_it_tests_before_the_tests():
    run = subprocess.run([sys.executable, str(ROOT / ".ci" / "versions.py")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("tested on: Python 3.")
    assert lines[1:] == [f"  {r.name} {version(r.name)} ({r.specifier})" for r in requirements()]
    assert "python .ci/versions.py\n" in (ROOT / ".ci" / "run").read_text().split("\npytest")[0]
