"""`capgate caps check CAPS.yaml [--json]`: validate a caps file and summarise it.

Exit 0 when the file is valid (missing store references are warnings, not errors), 1 when
it is invalid (every problem listed), 2 on usage errors (click's default).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from capgate.broker import capsrefs
from capgate.broker.errors import CapgateError
from capgate.broker.home import Home
from capgate.broker.store import ControlStore
from capgate.caps import CapsConfig, CapsError, load_caps


def register(main: click.Group) -> None:
    """Attach the `caps` command group to the `capgate` command."""
    main.add_command(caps)


@click.group()
def caps() -> None:
    """Work with caps.yaml files."""


@caps.command("check")
@click.argument("caps_file", metavar="CAPS.yaml", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def check(ctx: click.Context, caps_file: Path, as_json: bool) -> None:
    """Validate CAPS.yaml and report missing credential and secret references."""
    try:
        config = load_caps(caps_file)
    except CapsError as exc:
        _report_invalid(exc, as_json)
        ctx.exit(1)
    warnings = _missing_references(config, ctx.obj)
    summary = _summary(config, warnings)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(caps_file, summary)


def _summary(config: CapsConfig, warnings: list[str]) -> dict[str, Any]:
    return capsrefs.summary(config, warnings)


def _report_invalid(exc: CapsError, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(capsrefs.invalid_summary(exc), indent=2))
        return
    for problem in exc.problems:
        click.echo(str(problem), err=True)
    count = len(exc.problems)
    click.echo(f"invalid: {count} problem{'s' if count != 1 else ''}", err=True)


def _print_summary(caps_file: Path, summary: dict[str, Any]) -> None:
    def listing(values: list[str]) -> str:
        return ", ".join(values) if values else "(none)"

    click.echo(f"{caps_file}: valid")
    click.echo(f"capabilities ({len(summary['capabilities'])}): {listing(summary['capabilities'])}")
    click.echo(f"roles ({len(summary['roles'])}):")
    for name, capabilities in summary["roles"].items():
        click.echo(f"  {name}: {listing(capabilities)}")
    click.echo(f"credentials: {listing(summary['credentials'])}")
    click.echo(f"secrets: {listing(summary['secrets'])}")
    for warning in summary["warnings"]:
        click.echo(f"warning: {warning}", err=True)


def _missing_references(config: CapsConfig, ctx: Any) -> list[str]:
    """One warning per credential or secret the file uses that the store does not hold.

    A credential that exists under another provider than the auth transform names is
    reported too. No home, or an uninitialised one, means nothing to compare against:
    the file is checked on its own and no warnings are given.
    """
    home = Home(Path(ctx.home))
    try:
        home.require_initialized()
        store = ControlStore.open(home)
    except CapgateError:
        return []
    try:
        return _compare_with_store(config, store, ctx.org)
    finally:
        store.close()


def _compare_with_store(config: CapsConfig, store: ControlStore, org: str) -> list[str]:
    try:
        org_id = store.org_id(org)
    except CapgateError:
        org_id = None
    stored_providers: dict[str, set[str]] = {}
    for row in store.query("SELECT name, provider FROM credentials WHERE org_id = ?", (org_id,)):
        stored_providers.setdefault(row["name"], set()).add(row["provider"])
    stored_secrets = {
        row["name"] for row in store.query("SELECT name FROM secrets WHERE org_id = ?", (org_id,))
    }
    return capsrefs.store_warnings(config, stored_providers, stored_secrets, org)
