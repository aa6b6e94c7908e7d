"""DESIGN.md's import rules, checked by reading the source (no module is imported).

caps imports neither broker nor proxy nor mitmproxy; broker imports neither proxy nor
mitmproxy; inside proxy/: addon imports no other subpackage, replay may import addon, cli
and server do not import each other; contain imports nothing of capgate (ARCHITECTURE.md).
Every import counts: at module level, inside a function, under `if TYPE_CHECKING:`,
relative or absolute, and `importlib.import_module` with a literal name.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"caps": "capgate.caps", "broker": "capgate.broker", "proxy": "capgate.proxy"}

# unit -> (forbidden import prefixes, the rule as DESIGN.md words it)
RULES: dict[str, tuple[tuple[str, ...], str]] = {
    "capgate.caps": (
        ("capgate.broker", "capgate.proxy", "mitmproxy"),
        "caps imports neither broker nor proxy nor mitmproxy",
    ),
    "capgate.broker": (
        ("capgate.proxy", "mitmproxy"),
        "broker imports neither proxy nor mitmproxy",
    ),
    "capgate.proxy.addon": (
        ("capgate.proxy.cli", "capgate.proxy.replay", "capgate.proxy.server"),
        "addon imports no other proxy subpackage",
    ),
    "capgate.proxy.replay": (
        ("capgate.proxy.cli", "capgate.proxy.server"),
        "replay may import addon, nothing else under proxy/",
    ),
    "capgate.proxy.cli": (("capgate.proxy.server",), "cli and server do not import each other"),
    "capgate.proxy.server": (("capgate.proxy.cli",), "cli and server do not import each other"),
    "capgate.proxy.contain": (
        (
            "capgate.caps",
            "capgate.broker",
            "capgate.proxy.addon",
            "capgate.proxy.cli",
            "capgate.proxy.replay",
            "capgate.proxy.server",
            "mitmproxy",
        ),
        "contain imports nothing of capgate (forward.py runs in the sandbox without it)",
    ),
}


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: imports {self.imported} ({self.rule})"


def module_name(root: Path, path: Path) -> str:
    """The import name of a source file: caps/hosts.py -> capgate.caps.hosts."""
    relative = path.relative_to(root).with_suffix("")
    parts = list(relative.parts)
    parts[0] = FOLDERS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the tree."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from capgate.proxy import cli` imports capgate.proxy.cli.
            found.append((node.lineno, target))
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def unit_of(module: str) -> str | None:
    """The most specific unit with a rule that `module` belongs to."""
    best = None
    for unit in RULES:
        if (module == unit or module.startswith(unit + ".")) and (
            best is None or len(unit) > len(best)
        ):
            best = unit
    return best


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(root: Path) -> list[Violation]:
    """Every import under root/caps, root/broker and root/proxy that breaks a rule."""
    found: list[Violation] = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            module = module_name(root, path)
            unit = unit_of(module)
            if unit is None:
                continue
            forbidden, rule = RULES[unit]
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for line, name in imported_names(tree, module, path.name == "__init__.py"):
                if any(_within(name, prefix) for prefix in forbidden):
                    found.append(Violation(str(path.relative_to(root)), line, name, rule))
    return found


def test_the_source_follows_the_import_rules() -> None:
    problems = violations(ROOT)
    assert not problems, "import rules broken (DESIGN.md, Layout):\n" + "\n".join(
        sorted({str(p) for p in problems})
    )


def test_every_subpackage_is_installed() -> None:
    """A folder with an __init__.py that pyproject does not list is missing from a wheel."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    present = {
        module_name(ROOT, init)
        for folder in FOLDERS
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert present - listed == set(), "add to [tool.setuptools] packages in pyproject.toml"


# The checker itself: each rule catches what it should, in a throwaway tree.

BREAKS = [
    ("caps/x.py", "from capgate.broker.types import Decision\n", "capgate.broker.types"),
    ("caps/x.py", "import mitmproxy.http\n", "mitmproxy.http"),
    ("caps/sub/x.py", "def f():\n    from capgate.proxy import cli\n", "capgate.proxy"),
    ("broker/x.py", "from mitmproxy import http\n", "mitmproxy"),
    ("broker/x.py", "from ..proxy.addon import hooks\n", "capgate.proxy.addon"),
    ("proxy/addon/x.py", "from ..replay import harness\n", "capgate.proxy.replay"),
    ("proxy/addon/x.py", "from capgate.proxy import cli\n", "capgate.proxy.cli"),
    ("proxy/replay/x.py", "from capgate.proxy.cli.main import main\n", "capgate.proxy.cli.main"),
    ("proxy/cli/x.py", "from ..server import app\n", "capgate.proxy.server"),
    ("proxy/server/x.py", "from capgate.proxy.cli import support\n", "capgate.proxy.cli"),
    ("proxy/contain/x.py", "from ..addon import runner\n", "capgate.proxy.addon"),
    ("proxy/contain/x.py", "from capgate.broker import home\n", "capgate.broker"),
    (
        "proxy/server/x.py",
        "import importlib\nimportlib.import_module('capgate.proxy.cli.main')\n",
        "capgate.proxy.cli.main",
    ),
    (
        "caps/x.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import capgate.broker\n",
        "capgate.broker",
    ),
]

ALLOWED = [
    ("proxy/replay/x.py", "from ..addon import hooks\nfrom capgate.broker import types\n"),
    ("proxy/cli/x.py", "from capgate.proxy.replay import harness\nfrom ..addon import runner\n"),
    ("proxy/server/x.py", "from capgate.proxy.addon import runner\nimport capgate.caps\n"),
    ("proxy/cli/x.py", "from capgate.proxy.contain import sandbox\n"),
    ("proxy/addon/x.py", "from . import inject\nfrom .checks import destination\n"),
    ("broker/x.py", "from capgate.caps import hosts\n"),
    ("proxy/__main__.py", "from capgate.proxy.cli.main import main\n"),
]


def _tree(root: Path, file: str, text: str) -> None:
    for folder in (
        "caps",
        "broker",
        "proxy/addon",
        "proxy/cli",
        "proxy/replay",
        "proxy/server",
        "proxy/contain",
    ):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "__init__.py").touch()
    path = root / file
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "__init__.py").touch()
    path.write_text(text)


@pytest.mark.parametrize(("file", "text", "imported"), BREAKS)
def test_the_checker_reports_a_broken_rule(
    tmp_path: Path, file: str, text: str, imported: str
) -> None:
    _tree(tmp_path, file, text)
    found = violations(tmp_path)
    assert [(v.file, v.imported) for v in found if v.imported == imported] == [(file, imported)]
    assert all(v.line >= 1 and v.rule for v in found)


@pytest.mark.parametrize(("file", "text"), ALLOWED)
def test_the_checker_allows_what_the_rules_allow(tmp_path: Path, file: str, text: str) -> None:
    _tree(tmp_path, file, text)
    assert violations(tmp_path) == []
