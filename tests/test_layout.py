"""The house's rule: a package imports only packages below it (docs/development.md), counting
imports inside functions; lorachat/ keeps few modules at its top and its packages below."""
import ast
from pathlib import Path

import lorachat

ROOT = Path(lorachat.__file__).parent
ORDER = ["core", "models", "scoring", "routing", "lessons", "adapters", "training", "serving", "chat"]   # lowest first
TOP = {"__init__", "__main__", "cli"}


def imported(path: Path) -> set[str]:
    """Every lorachat module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lorachat":
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "lorachat")
    return found


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else None


def test_no_package_imports_a_higher_one():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        here = path.relative_to(ROOT).parts[0]
        if here not in ORDER:
            continue
        for module in imported(path):
            there = package_of(module)
            if module.split(".")[1:2] in (["cli"], ["__main__"]) or there is not None and ORDER.index(there) > ORDER.index(here):
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, "imports against the order " + " < ".join(ORDER) + ":\n" + "\n".join(wrong)


def test_the_top_holds_few_modules_and_every_package_says_what_it_owns():
    top = {p.stem for p in ROOT.glob("*.py")}
    assert top <= TOP and len(top) <= 6
    packages = [p for p in ROOT.iterdir() if (p / "__init__.py").is_file()]
    assert sorted(p.name for p in packages) == sorted(ORDER)
    for package in packages:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8")))
        assert doc and ("import" in doc.lower()), f"{package.name}/__init__.py must say what it owns and may import"
    for path in ROOT.rglob("*.py"):
        if path.name != "__init__.py" or path.parent.name == "commands":
            assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), f"{path} has no opening docstring"
