"""The `capgate` command: global options and the registry of subcommands.

Each command group lives in its own module of this package (caps, store, cred, oauth, proxy,
replay) and is attached here, so that command modules never import each other.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import click

# Which modules define each command (in registration order: oauth attaches `cred connect`
# to the group cred defines), and the one-line help `capgate --help` shows for it. A command
# module is imported only when its command runs, so help and light commands start fast
# (mitmproxy, CEL and the OAuth stack are not imported for `capgate user list`).
# tests/proxy/test_cli_lazy.py checks these lines against each command's own help.
LAZY_COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "init": (("store",), "Create the home: key file, control and vault stores."),
    "user": (("store",), "Users of the org (workspaces are created for a user)."),
    "workspace": (
        ("store",),
        "Workspaces: agent identities with an agent token.",
    ),
    "vault": (("store",), "The encrypted vault store."),
    "caps": (("caps",), "Work with caps.yaml files."),
    "cred": (("cred", "oauth"), "Credentials: typed (provider, kind) records."),
    "secret": (("cred",), "Secrets: opaque named values for transforms."),
    "proxy": (("proxy",), "Run the proxy; agents authenticate with a workspace token."),
    "ca": (("proxy",), "Print the path of the CA certificate (PEM) agents trust."),
    "decisions": (("decisions",), "Recent policy decisions (one per request), oldest first."),
    "exec": (("agent",), "Run CMD contained, through a short-lived workspace."),
    "env": (("agent",), "Print shell lines wiring a new workspace to a proxy."),
    "replay": (("replay",), "Run recorded requests through the addon offline; diff them."),
    "serve": (("serve",), "Run the control plane: JSON API, console, OAuth callback."),
    "apikey": (("serve",), "API keys for the control plane (shown once)."),
    "console-link": (("serve",), "Print a one-time sign-in link to the web console."),
}
# Modules registered eagerly (commands not listed above).
EAGER_MODULES: tuple[str, ...] = ()


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (see LAZY_COMMANDS)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._loaded: set[str] = set()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            for module_name in LAZY_COMMANDS[cmd_name][0]:
                self._load(module_name)
        return self.commands.get(cmd_name)

    def _load(self, module_name: str) -> None:
        if module_name in self._loaded:
            return
        self._loaded.add(module_name)
        module = importlib.import_module(f"capgate.proxy.cli.{module_name}")
        module.register(self)

    def load_all(self) -> None:
        for modules, _ in LAZY_COMMANDS.values():
            for module_name in modules:
                self._load(module_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in LAZY_COMMANDS and name not in self.commands:
                rows.append((name, LAZY_COMMANDS[name][1]))
            else:
                command = self.commands[name]
                if not command.hidden:
                    rows.append((name, command.get_short_help_str(formatter.width)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def default_home() -> Path:
    """The per-user data directory used when neither --home nor CAPGATE_HOME is given."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "capgate"


@dataclass(frozen=True)
class CliContext:
    """What every subcommand receives: the home folder and the org it acts in."""

    home: Path
    org: str


class CapgateGroup(LazyGroup):
    """The root group: a store fault anywhere below is an `error:` line, not a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except sqlite3.OperationalError as exc:
            _store_fault(ctx, exc, busy="locked" in str(exc) or "busy" in str(exc))
        except sqlite3.DatabaseError as exc:
            _store_fault(ctx, exc, busy=False)
        return None


def _store_fault(ctx: click.Context, exc: sqlite3.Error, *, busy: bool) -> None:
    # SQLite's messages name the condition, never row contents.
    obj = ctx.obj
    where = f" in {obj.home}" if isinstance(obj, CliContext) else ""
    if busy:
        message = f"the store{where} is busy (another process holds its write lock): {exc}"
    else:
        message = (
            f"a store{where} is damaged or unreadable ({exc}); nothing was changed. "
            "Restore control.db and vault.db from a backup"
        )
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(1)


@click.group(cls=CapgateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="capgate", prog_name="capgate", message="%(prog)s %(version)s")
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
    for module_name in EAGER_MODULES:
        module = importlib.import_module(f"capgate.proxy.cli.{module_name}")
        module.register(main)


_register()
