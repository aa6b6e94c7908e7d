"""Every package the code imports directly is declared in pyproject.toml.

A package that arrives only through another one (joserfc through authlib, idna through
httpx) disappears the day that other package stops needing it.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE = ("caps", "broker", "proxy")
# Modules of the test suite itself, imported by their top-level name.
LOCAL = {"capgate", "tests", "upstream"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(requirements: list[str]) -> set[str]:
    return {_canonical(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]) for req in requirements}


def _imports(folders: tuple[str, ...]) -> dict[str, str]:
    """Top-level third-party module -> the first file importing it."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top not in sys.stdlib_module_names and top not in LOCAL:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _undeclared(folders: tuple[str, ...], declared: set[str]) -> list[str]:
    owners = packages_distributions()
    missing = []
    for module, file in sorted(_imports(folders).items()):
        distributions = {_canonical(d) for d in owners.get(module, [module])}
        if not distributions & declared:
            missing.append(f"{module} (imported by {file}; distribution {sorted(distributions)})")
    return missing


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_the_code_imports_only_declared_dependencies() -> None:
    declared = _declared(_project()["dependencies"])
    assert _undeclared(CODE, declared) == []


def test_tests_and_examples_import_only_declared_dependencies() -> None:
    project = _project()
    declared = _declared(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared |= _declared(extra)
    assert _undeclared(("tests", "examples"), declared) == []
