"""`capgate decisions`: recent policy decisions, and the log as evidence (`verify`,
`export`). DESIGN.md, "The decision log as evidence".
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from capgate.broker import evidence
from capgate.broker.chain import NO_ORG
from capgate.broker.decisions import StoredDecision, list_decisions
from capgate.broker.errors import CapgateError
from capgate.broker.home import Home
from capgate.broker.store import ABSENT_ORG
from capgate.broker.stores import Stores

from .support import _fail, since_option


def _shown(text: str) -> str:
    """A field as a terminal may show it: control characters (an escape sequence in a
    recorded path) and anything else unprintable as `\\xNN` / `\\uNNNN`."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _row_line(stored: StoredDecision) -> str:
    return _shown(_raw_line(stored))


def _raw_line(stored: StoredDecision) -> str:
    d = stored.decision
    at = datetime.fromtimestamp(d.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    outcome = d.decision + (f"/{d.reason}" if d.reason else "")
    status = str(d.upstream_status) if d.upstream_status is not None else "-"
    duration = f"{d.duration_ms:.0f}ms" if d.duration_ms is not None else "-"
    extra = []
    if d.transforms_failed:
        extra.append("failed=" + ",".join(f"{k}:{v}" for k, v in d.transforms_failed.items()))
    if d.auth_failures:
        extra.append("auth=" + ",".join(f"{k}:{v}" for k, v in d.auth_failures.items()))
    return "  ".join(
        [
            at,
            f"{outcome:<24}",
            f"{d.method:<7}",
            f"{d.host}:{d.port}{d.path}",
            status,
            duration,
            d.capability or "-",
            d.workspace_id or "-",
            *extra,
        ]
    )


@click.group("decisions", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@click.option("--follow", is_flag=True, help="Keep printing new decisions.")
@click.option("--workspace", "workspace_id", default=None)
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(min=0),
    help="How many recent rows (0: none; with --follow, only new ones).",
)
@click.option("--all-orgs", is_flag=True, help="Every org, and requests without a token.")
@click.pass_context
def decisions_group(ctx, as_json, follow, workspace_id, limit, all_orgs) -> None:
    """Recent policy decisions (one per request), oldest first."""
    if ctx.invoked_subcommand is not None:
        return
    stores = _open(ctx)
    # A read: an org never created has no rows (and is not created here).
    org_id = None if all_orgs else (stores.control.find_org_id(ctx.obj.org) or ABSENT_ORG)
    rows = list_decisions(stores.control, org_id, workspace_id=workspace_id, limit=limit)
    if rows:
        last = rows[-1].id
    else:  # --limit 0 (or nothing yet): follow from the newest row, not from the start
        newest = list_decisions(stores.control, org_id, workspace_id=workspace_id, limit=1)
        last = newest[-1].id if newest else 0
    _print_rows(rows, as_json)
    while follow:
        try:
            time.sleep(0.5)
        except KeyboardInterrupt:
            return
        rows = list_decisions(stores.control, org_id, workspace_id=workspace_id, since_id=last)
        if rows:
            last = rows[-1].id
            _print_rows(rows, as_json)


def _open(ctx: click.Context) -> Stores:
    try:
        stores = Stores.open(Home(ctx.obj.home))
    except CapgateError as exc:
        _fail(str(exc), exc.exit_code)
    ctx.call_on_close(stores.close)
    return stores


def _print_rows(rows: list[StoredDecision], as_json: bool) -> None:
    for row in rows:
        click.echo(json.dumps(row.to_json(), sort_keys=True) if as_json else _row_line(row))
    sys.stdout.flush()


def _chain_name(stores: Stores | None, report: evidence.ChainReport) -> str:
    if report.org_key == NO_ORG:
        org = "no org"
    elif stores is not None:
        rows = stores.control.query("SELECT name FROM orgs WHERE id = ?", (report.org_key,))
        org = f"org {rows[0]['name']}" if rows else f"org id {report.org_key}"
    else:
        org = f"org id {report.org_key}"
    return f"{report.kind} chain of {org}"


@decisions_group.command("verify")
@click.option("--all-orgs", is_flag=True, help="Every org's chains, and requests without a token.")
@click.option(
    "--file",
    "export_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Verify an export (decisions export, jsonl or ocsf) instead of the store.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document, every chain's result.")
@click.pass_context
def verify_command(ctx, all_orgs, export_file, as_json) -> None:
    """Recompute the hash chains; exit 1 naming the first row changed, removed or reordered."""
    stores: Stores | None = None
    if export_file is not None:
        try:
            with export_file.open(encoding="utf-8") as handle:
                reports = evidence.verify_export(handle)
        except (ValueError, UnicodeDecodeError) as exc:
            _fail(f"{export_file}: {exc}", 1)
        except OSError as exc:
            _fail(f"cannot read {export_file}: {exc.strerror}", 1)
    else:
        stores = _open(ctx)
        if all_orgs:
            org_id = None
        else:
            org_id = stores.control.find_org_id(ctx.obj.org)
            if org_id is None:
                _fail(f"org {ctx.obj.org!r} does not exist", 1)
        reports = evidence.verify_store(stores.control, org_id)
    total, bad = 0, []
    for report in reports:
        total += report.result.rows
        if report.result.problem is not None:
            bad.append(report)
        if report.unchained:
            click.echo(
                f"note: {report.unchained} {report.kind} rows of the "
                f"{_chain_name(stores, report).split(' chain of ')[1]} predate the chain"
                f" (started {report.started_at}) and are not covered",
                err=True,
            )
        if export_file is not None and report.result.first_seq not in (None, 1):
            click.echo(
                f"note: the {_chain_name(stores, report)} starts at seq "
                f"{report.result.first_seq} in this file; its link to seq "
                f"{report.result.first_seq - 1} cannot be checked from the file",
                err=True,
            )
    for report in bad:
        click.echo(f"error: {_chain_name(stores, report)}: {report.result.problem}", err=True)
    if as_json:
        document = {
            "verified": not bad,
            "rows": total,
            "chains": [_chain_json(stores, report) for report in reports],
        }
        click.echo(json.dumps(document, indent=2, sort_keys=True))
    elif not bad:
        click.echo(f"verified {total} rows")
    if bad:
        raise click.exceptions.Exit(1)


def _chain_json(stores: Stores | None, report: evidence.ChainReport) -> dict:
    """One chain's result; `last_seq`/`last_chain` are the head to keep outside the store."""
    result = report.result
    return {
        "org_id": report.org_key or None,
        "chain": report.kind,
        "name": _chain_name(stores, report),
        "rows": result.rows,
        "first_seq": result.first_seq,
        "last_seq": result.last.seq if result.last else None,
        "last_chain": result.last.chain if result.last else None,
        "problem": str(result.problem) if result.problem else None,
        "unchained_rows": report.unchained,
    }


@decisions_group.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "ocsf"]),
    default="jsonl",
    show_default=True,
    help="jsonl: the rows as stored; ocsf: OCSF HTTP Activity (6002) events.",
)
@since_option
@click.option("--all-orgs", is_flag=True, help="Every org, and requests without a token.")
@click.pass_context
def export_command(ctx, fmt, since, all_orgs) -> None:
    """Write the chained decision rows, with seq and chain, as JSON lines to stdout."""
    stores = _open(ctx)
    if all_orgs:
        org_keys = [NO_ORG] + [r["id"] for r in stores.control.query("SELECT id FROM orgs")]
    else:
        org_id = stores.control.find_org_id(ctx.obj.org)
        org_keys = [org_id] if org_id is not None else []
    names = {r["id"]: r["name"] for r in stores.control.query("SELECT id, name FROM orgs")}
    out = sys.stdout
    for row in evidence.export_rows(stores.control, org_keys, since):
        document = row if fmt == "jsonl" else evidence.to_ocsf(row, names.get(row["org_id"]))
        out.write(json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n")
    out.flush()


def register(main: click.Group) -> None:
    main.add_command(decisions_group)
