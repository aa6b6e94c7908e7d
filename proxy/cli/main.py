"""The `capgate` command: global options and the registry of subcommands.

Each command group lives in its own module of this package (caps, store, cred, oauth, proxy,
replay) and is attached here, so that command modules never import each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import click


def default_home() -> Path:
    """The per-user data directory used when neither --home nor CAPGATE_HOME is given."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "capgate"


@dataclass(frozen=True)
class CliContext:
    """What every subcommand receives: the home folder and the org it acts in."""

    home: Path
    org: str


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    envvar="CAPGATE_HOME",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="capgate home: config, key file, stores, CA (env CAPGATE_HOME).",
)
@click.option(
    "--org",
    envvar="CAPGATE_ORG",
    default="default",
    show_default=True,
    help="The tenant a management command acts in (env CAPGATE_ORG).",
)
@click.pass_context
def main(ctx: click.Context, home: Path | None, org: str) -> None:
    """capgate: a credential-injecting egress proxy for AI agents."""
    ctx.obj = CliContext(home=(home or default_home()).expanduser(), org=org)


def _register() -> None:
    # Imported here so that a broken optional module names itself in the traceback
    # instead of breaking `import capgate.proxy.cli.main` for every command.
    import importlib

    # Order matters: oauth attaches `cred connect` to the group cred registers.
    command_modules = ("caps", "store", "cred", "oauth", "proxy", "decisions", "replay")
    for module_name in command_modules:
        module = importlib.import_module(f"capgate.proxy.cli.{module_name}")
        module.register(main)


_register()
