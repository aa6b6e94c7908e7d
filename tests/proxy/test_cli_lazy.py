"""The CLI imports a command's module only when that command runs: help starts fast."""

from __future__ import annotations

import json
import subprocess
import sys

import click

from capgate.proxy.cli.main import LAZY_COMMANDS, LazyGroup, main

HEAVY = ("mitmproxy", "celpy", "authlib", "capgate.caps.cel", "capgate.proxy.addon.runner")

CHECK = """
import sys
from capgate.proxy.cli.main import main
try:
    main(sys.argv[1:], prog_name="capgate")
except SystemExit:
    pass
import json
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def _modules_after(*argv: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", CHECK, *argv], capture_output=True, text=True, timeout=60
    )
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


def test_help_and_version_import_no_heavy_module() -> None:
    for argv in (["--help"], ["--version"], ["proxy", "--help"], ["exec", "--help"]):
        loaded = _modules_after(*argv)
        assert not [m for m in loaded if m.startswith(HEAVY)], argv


def test_every_listed_command_loads_and_every_command_is_listed() -> None:
    group = LazyGroup(name="probe")
    group.load_all()
    assert set(group.commands) == set(LAZY_COMMANDS)
    for name, (_, line) in LAZY_COMMANDS.items():
        command = main.get_command(click.Context(main), name)
        assert command is not None, name
        assert line and len(line) <= 60, name


def test_cred_connect_is_attached_when_cred_loads() -> None:
    group = LazyGroup(name="probe")
    cred = group.get_command(click.Context(group), "cred")
    assert isinstance(cred, click.Group) and "connect" in cred.commands
