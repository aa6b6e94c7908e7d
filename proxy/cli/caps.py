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

from .support import since_option


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


# --- caps diff -------------------------------------------------------------------------

SHOWN_PER_GROUP = 20


@caps.command("diff")
@click.argument(
    "candidate", metavar="CANDIDATE.yaml", type=click.Path(path_type=Path, dir_okay=False)
)
@since_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def diff(ctx: click.Context, candidate: Path, since: float | None, as_json: bool) -> None:
    """Re-decide the org's recorded requests under CANDIDATE.yaml; exit 1 when any would
    change (allowed <-> denied, or another capability)."""
    from capgate.broker.redecide import recorded_rows, rediff

    try:
        config = load_caps(candidate)
    except CapsError as exc:
        _report_invalid(exc, as_json)
        ctx.exit(1)
    try:
        store = ControlStore.open(Home(ctx.obj.home))
    except CapgateError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(exc.exit_code)
    try:
        org_id = store.find_org_id(ctx.obj.org)
        result = rediff(config, recorded_rows(store, org_id, since) if org_id else ())
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        _print_diff(result)
    if result.changed:
        ctx.exit(1)


def _print_diff(result) -> None:  # result: capgate.broker.redecide.Diff
    for (before, after, reason), requests in result.groups():
        total = sum(requests.values())
        shown_after = f"{after} ({reason})" if after.decision == "deny" and reason else str(after)
        click.echo(f"{before} -> {shown_after}: {total} requests ({len(requests)} distinct)")
        for request, count in requests.most_common(SHOWN_PER_GROUP):
            click.echo(f"  {count:>7}  {request}")
        if len(requests) > SHOWN_PER_GROUP:
            click.echo(f"  ... and {len(requests) - SHOWN_PER_GROUP} more distinct requests")
    skipped = sum(result.skipped.values())
    detail = ", ".join(f"{k} {v}" for k, v in result.skipped.most_common())
    click.echo(
        f"{len(result.changed)} requests would change, {result.unchanged} unchanged"
        + (f", {skipped} skipped, not decided by caps.yaml ({detail})" if skipped else "")
    )
