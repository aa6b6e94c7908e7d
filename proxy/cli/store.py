"""Home and tenancy commands: init, vault, user, workspace (see support for the
conventions: values from stdin or files, exit codes)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from capgate.broker import pgstore
from capgate.broker.engine import is_postgres_url, redact_url
from capgate.broker.home import init_home
from capgate.broker.provision import provision_workspace
from capgate.broker.stores import Stores

from .durations import ttl_option
from .support import (
    _actor,
    _emit,
    _state,
    _stores,
    caps_roles,
    handles_errors,
    json_option,
)


@click.command("init")
@click.option(
    "--home",
    "home_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Same as the global --home.",
)
@click.option(
    "--store",
    "store_url",
    metavar="URL",
    help="A PostgreSQL control store (postgresql://...; default: control.db in the home).",
)
@click.option(
    "--vault",
    "vault_url",
    metavar="URL",
    help="A PostgreSQL vault store (postgresql://...; default: vault.db in the home).",
)
@json_option
@click.pass_context
@handles_errors
def init_command(
    ctx: click.Context,
    home_dir: Path | None,
    store_url: str | None,
    vault_url: str | None,
    as_json: bool,
) -> None:
    """Create the home: config, key file (0600), control and vault stores. Idempotent.

    Shared PostgreSQL stores: every machine runs `capgate init --store URL --vault URL`
    with the same key file (copy it into each home, or set CAPGATE_KEY_FILE).
    """
    for option, url in (("--store", store_url), ("--vault", vault_url)):
        if url is not None and not is_postgres_url(url):
            raise click.BadParameter("expected a postgresql:// URL", param_hint=option)
    # Reach both databases before anything is written: a wrong URL leaves no trace.
    for what, url in (("control", store_url), ("vault", vault_url)):
        if url is not None:
            pgstore.connect(url, what).close()
    result = init_home(
        (home_dir or ctx.obj.home).expanduser(), store_url=store_url, vault_url=vault_url
    )
    Stores.open(result.home).close()  # creates and migrates both stores
    document = {
        "home": str(result.home.root),
        "key_file": str(result.home.key_file),
        # Where each store is: its file, or its PostgreSQL URL without the password.
        "control_db": _where(result.home.store_url, result.home.control_db),
        "vault_db": _where(result.home.vault_url, result.home.vault_db),
        "created_key": result.created_key,
    }
    verb = "initialised" if result.created_key else "already initialised (key kept)"
    _emit(as_json, document, f"{verb}: {result.home.root}")


def _where(url: str | None, path: Path) -> str:
    return redact_url(url) if url else str(path)


@click.group("vault")
def vault() -> None:
    """The encrypted vault store."""


@vault.command("rotate-key")
@click.option("--keep-old", is_flag=True, help="Keep the previous key as key.old.")
@json_option
@click.pass_context
@handles_errors
def vault_rotate_key(ctx: click.Context, keep_old: bool, as_json: bool) -> None:
    """Re-wrap every data key under a new key-encryption key (values are not re-encrypted).

    The old key is discarded unless --keep-old (needed only to read older vault backups).
    """
    stores, _ = _stores(ctx)
    count = stores.vault.rotate_key(keep_old=keep_old)
    _emit(as_json, {"rewrapped": count}, f"re-wrapped {count} entries")


@vault.command("check")
@click.option(
    "--repair",
    is_flag=True,
    help="Delete orphaned entries (named by no row) older than ten minutes.",
)
@json_option
@click.pass_context
@handles_errors
def vault_check(ctx: click.Context, repair: bool, as_json: bool) -> None:
    """Check the vault against the control store: orphans, unreadable and missing entries.

    Every finding names its row (kind, name, org, id) and ref, never a value. Exit 0 when
    nothing is wrong (after --repair), 1 otherwise. Unreadable and missing values are
    never repaired automatically: upload them again.
    """
    from capgate.broker import vaultcheck

    stores, _ = _stores(ctx)
    findings = vaultcheck.check(stores)
    repaired = vaultcheck.repair(stores, findings) if repair else []
    left = [f for f in findings if f not in repaired]
    document = {
        "findings": [f.to_json() for f in left],
        "repaired": [f.to_json() for f in repaired],
        "entries": len(stores.vault.entries()),
    }
    lines = [f.describe() for f in left]
    lines += [f"repaired: deleted orphaned vault entry {f.ref}" for f in repaired]
    lines.append(
        f"{len(left)} problem(s), {len(repaired)} repaired"
        if left or repaired
        else f"vault ok ({document['entries']} entries)"
    )
    _emit(as_json, document, lines)
    if left:
        raise click.exceptions.Exit(1)


# --- credentials ----------------------------------------------------------------------


@click.group("user")
def user() -> None:
    """Users of the org (workspaces are created for a user)."""


@user.command("add")
@click.argument("name")
@click.option("--operator", is_flag=True, help="The user administers the org.")
@click.option("--email", default=None, help="Matched to the console's single sign-on.")
@json_option
@click.pass_context
@handles_errors
def user_add(ctx, name, operator, email, as_json) -> None:
    """Add a user to the org (a member, or an operator with --operator)."""
    stores, org_id = _stores(ctx, create=True)
    row = stores.workspaces.add_user(org_id, name, operator=operator, email=email, actor=_actor())
    _emit(as_json, row.to_json(), f"added user {name}")


@user.command("list")
@json_option
@click.pass_context
@handles_errors
def user_list(ctx, as_json) -> None:
    """List the org's users."""
    stores, org_id = _stores(ctx)
    rows = stores.workspaces.list_users(org_id)
    human = [f"{r.name}\t{r.role}\t{r.email or ''}".rstrip() for r in rows]
    _emit(as_json, [r.to_json() for r in rows], human)


@click.group("workspace")
def workspace() -> None:
    """Workspaces: agent identities (org, role, user) with an agent token."""


@workspace.command("create")
@click.option("--role", required=True)
@click.option("--user", "user_name", required=True)
@ttl_option
@click.option(
    "--caps",
    "caps_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Refuse a role this caps.yaml does not define.",
)
@json_option
@click.pass_context
@handles_errors
def workspace_create(ctx, role, user_name, ttl_s, caps_path, as_json) -> None:
    """Create a workspace; prints its id and agent token (shown only this once)."""
    known_roles = caps_roles(caps_path) if caps_path is not None else None
    stores, _ = _stores(ctx)
    made = provision_workspace(
        stores, ctx.obj.org, role, user_name, ttl_s=ttl_s, known_roles=known_roles
    )
    ws, token = made.workspace, made.token
    if as_json:
        # DESIGN fixes this document to {"id", "token"}; `workspace list --json` has the lease.
        click.echo(json.dumps({"id": ws.id, "token": token}))
    else:
        click.echo(f"workspace: {ws.id}\ntoken: {token}")
        if ws.expires_at:
            click.echo(f"expires: {ws.expires_at}")
        click.echo("the token is shown only once; it cannot be recovered", err=True)


@workspace.command("revoke")
@click.argument("workspace_id")
@click.pass_context
@handles_errors
def workspace_revoke(ctx, workspace_id) -> None:
    """Revoke a workspace and its agent tokens."""
    stores, org_id = _stores(ctx)
    stores.workspaces.revoke(org_id, workspace_id, actor=_actor())
    click.echo(f"revoked workspace {workspace_id}")


@workspace.command("list")
@json_option
@click.pass_context
@handles_errors
def workspace_list(ctx, as_json) -> None:
    """List the org's workspaces."""
    stores, org_id = _stores(ctx)
    rows = stores.workspaces.list_workspaces(org_id)

    human = [f"{r.id}\t{r.role}\t{r.user}\t{_state(r)}" for r in rows]
    _emit(as_json, [r.to_json() for r in rows], human)


def register(main: click.Group) -> None:
    for command in (init_command, user, workspace, vault):
        main.add_command(command)
