"""`capgate caps check CAPS.yaml [--json]`: validate a caps file and summarise it.

Exit 0 when the file is valid (missing store references are warnings, not errors), 1 when
it is invalid (every problem listed), 2 on usage errors (click's default).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
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
    credentials = sorted({n for c in config.capabilities for n in c.credentials})
    secrets = sorted({n for c in config.capabilities for n in c.secrets})
    return {
        "valid": True,
        "errors": [],
        "capabilities": [c.name for c in config.capabilities],
        "roles": {name: list(role.capabilities) for name, role in config.roles.items()},
        "credentials": credentials,
        "secrets": secrets,
        "warnings": warnings,
    }


def _report_invalid(exc: CapsError, as_json: bool) -> None:
    if as_json:
        errors = [
            {"file": p.file, "line": p.line, "column": p.column, "message": p.message}
            for p in exc.problems
        ]
        document = {
            "valid": False,
            "errors": errors,
            "capabilities": [],
            "roles": {},
            "credentials": [],
            "secrets": [],
            "warnings": [],
        }
        click.echo(json.dumps(document, indent=2))
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
    """HOOK (to be wired by the lead once broker/'s store exists).

    Should return one warning per credential or secret name the file uses that does not
    exist in the store of `ctx.home` for `ctx.org` (or exists with a different provider
    than the auth transform names). Until then, and whenever the home has not been
    initialised, there is nothing to compare against: no warnings.
    """
    home = getattr(ctx, "home", None)
    if home is None or not Path(home).exists():
        return []
    return []
