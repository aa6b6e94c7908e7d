"""Store commands: init, cred, secret, user, workspace, vault.

Values (credential durable values, secrets, client secrets) are read from stdin or a
file, never from argv; one trailing newline is stripped. Exit codes: 0 ok, 1 a conflict
with stored state (exists, not found, home not initialised, unusable key), 2 bad input
(illegal provider/kind pair, missing config field, empty value).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from capgate.broker.credentials import CredentialSpec
from capgate.broker.errors import CapgateError
from capgate.broker.home import Home, init_home
from capgate.broker.secretvalue import SecretValue
from capgate.broker.store import ABSENT_ORG
from capgate.broker.stores import Stores


def _actor() -> str:
    return "cli:" + (os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown")


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


_NEW_ORG = "capgate.new_org"


def handles_errors(command: Callable) -> Callable:
    """Turn a CapgateError into its message on stderr and its exit code.

    A rejected call writes nothing: an org that this call created is removed again.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CapgateError as exc:
            _drop_new_org(click.get_current_context())
            _fail(str(exc), exc.exit_code)

    return wrapper


def _stores(ctx: click.Context, *, create: bool = False) -> tuple[Stores, str]:
    """Open the home's stores and the id of the org the command acts in.

    Only commands that create rows (`create`) create the org on first use.
    """
    stores = Stores.open(Home(ctx.obj.home))
    ctx.call_on_close(stores.close)
    org_id = stores.control.find_org_id(ctx.obj.org)
    if org_id is not None:
        return stores, org_id
    if not create:
        return stores, ABSENT_ORG
    org_id = stores.control.org_id(ctx.obj.org, create=True)
    ctx.meta[_NEW_ORG] = (stores, org_id)
    return stores, org_id


def _drop_new_org(ctx: click.Context) -> None:
    created = ctx.meta.pop(_NEW_ORG, None)
    if created is not None:
        stores, org_id = created
        stores.control.drop_org_if_unused(org_id)


def _read_value(from_file: Path | None, *, optional: bool = False) -> SecretValue | None:
    """The value from --from-file or stdin; None when empty (or stdin is a terminal)."""
    if from_file is not None:
        try:
            data = from_file.read_bytes()
        except OSError as exc:
            _fail(f"cannot read {from_file}: {exc.strerror or type(exc).__name__}", 2)
    else:
        stdin = sys.stdin.buffer
        if stdin.isatty():
            if optional:
                return None
            _fail("the value is read from stdin or --from-file, and stdin is a terminal", 2)
        data = stdin.read()
    data = data.removesuffix(b"\n").removesuffix(b"\r")
    if not data:
        return None
    try:
        return SecretValue(data)
    except UnicodeDecodeError:
        _fail("the value must be UTF-8 text", 2)
    return None


def _emit(as_json: bool, document, human: str | list[str]) -> None:
    """Print `document` as JSON with --json, else the human lines."""
    if as_json:
        click.echo(json.dumps(document, indent=2, sort_keys=True))
    else:
        lines = [human] if isinstance(human, str) else human
        if lines:
            click.echo("\n".join(lines))


def _parse_config(pairs: tuple[str, ...]) -> dict[str, str]:
    config = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            # Not echoed: a value pasted here by mistake must not reach logs as well.
            raise click.BadParameter(
                "expected KEY=VALUE (a non-empty KEY, then '=')", param_hint="--config"
            )
        config[key] = value
    return config


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
user_option = click.option("--user", default=None, help="A user's own (user-scoped) row.")


def _file_option(flag: str, help: str):
    return click.option(
        flag, type=click.Path(exists=True, dir_okay=False, path_type=Path), help=help
    )


from_file_option = _file_option("--from-file", "Read the value from FILE instead of stdin.")
client_secret_option = _file_option(
    "--client-secret-file", "oauth2_authorization_code: the OAuth client secret, read from FILE."
)


# --- init and vault -------------------------------------------------------------------


@click.command("init")
@click.option(
    "--home",
    "home_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Same as the global --home.",
)
@json_option
@click.pass_context
@handles_errors
def init_command(ctx: click.Context, home_dir: Path | None, as_json: bool) -> None:
    """Create the home: config, key file (0600), control and vault stores. Idempotent."""
    result = init_home((home_dir or ctx.obj.home).expanduser())
    Stores.open(result.home).close()  # creates and migrates both stores
    document = {"home": str(result.home.root), "created_key": result.created_key}
    verb = "initialised" if result.created_key else "already initialised (key kept)"
    _emit(as_json, document, f"{verb}: {result.home.root}")


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


# --- credentials ----------------------------------------------------------------------


@click.group("cred")
def cred() -> None:
    """Credentials: typed (provider, kind) records whose durable value lives in the vault."""


@cred.command("add")
@click.argument("name")
@click.option("--provider", required=True)
@click.option("--kind", required=True)
@user_option
@click.option("--scope", "scopes", multiple=True, help="An OAuth scope (repeatable).")
@click.option("--config", "config", multiple=True, metavar="KEY=VAL", help="provider_config.")
@click.option("--allow-user-override", is_flag=True, help="Users may have their own row.")
@from_file_option
@client_secret_option
@json_option
@click.pass_context
@handles_errors
def cred_add(ctx, name, provider, kind, user, as_json, from_file, client_secret_file, **opts):
    """Add a credential; its durable value is read from stdin or --from-file.

    For oauth2_authorization_code the value (a refresh token) is optional: without one
    the credential is pending_consent until `cred connect`.
    """
    spec = CredentialSpec(
        name=name,
        provider=provider,
        kind=kind,
        user=user,
        scopes=tuple(opts["scopes"]),
        provider_config=_parse_config(opts["config"]),
        allow_user_override=opts["allow_user_override"],
    )
    optional = kind == "oauth2_authorization_code"
    value = _read_value(from_file, optional=optional)
    client_secret = _read_value(client_secret_file) if client_secret_file else None
    if client_secret_file and client_secret is None:
        _fail("--client-secret-file is empty", 2)
    stores, org_id = _stores(ctx, create=True)
    row = stores.credentials.add(org_id, spec, value, client_secret=client_secret, actor=_actor())
    _emit(as_json, row.to_json(), f"added credential {_label(row)}")


@cred.command("update")
@click.argument("name")
@user_option
@from_file_option
@client_secret_option
@json_option
@click.pass_context
@handles_errors
def cred_update(ctx, name, user, from_file, client_secret_file, as_json) -> None:
    """Replace a credential's durable value (stdin or --from-file) and make it active.

    Use it to recover a needs_reauth credential with a fresh key, secret or refresh token.
    """
    value = _read_value(from_file, optional=client_secret_file is not None)
    client_secret = _read_value(client_secret_file) if client_secret_file else None
    stores, org_id = _stores(ctx)
    row = stores.credentials.update(
        org_id, name, user, value, client_secret=client_secret, actor=_actor()
    )
    _emit(as_json, row.to_json(), f"updated {_label(row)}: {row.status}")


@cred.command("list")
@user_option
@json_option
@click.pass_context
@handles_errors
def cred_list(ctx, user, as_json) -> None:
    """List the org's credentials (org rows and users' rows)."""
    stores, org_id = _stores(ctx)
    rows = stores.credentials.list(org_id, user)

    human = [f"{r.name}\t{_scope(r)}\t{r.provider}/{r.kind}\t{r.status}" for r in rows]
    _emit(as_json, [r.to_json() for r in rows], human)


@cred.command("show")
@click.argument("name")
@user_option
@json_option
@click.pass_context
@handles_errors
def cred_show(ctx, name, user, as_json) -> None:
    """Show one credential's settings and status (never its value)."""
    stores, org_id = _stores(ctx)
    row = stores.credentials.get(org_id, name, user)

    lines = [f"{k}: {_plain(v)}" for k, v in row.to_json().items()]
    _emit(as_json, row.to_json(), lines)


@cred.command("delete")
@click.argument("name")
@user_option
@click.pass_context
@handles_errors
def cred_delete(ctx, name, user) -> None:
    """Delete a credential row and its vault entries."""
    stores, org_id = _stores(ctx)
    stores.credentials.delete(org_id, name, user, actor=_actor())
    click.echo(f"deleted credential {name}" + (f" (user {user})" if user else ""))


def _plain(value) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


def _scope(row) -> str:
    return f"user:{row.user}" if row.user else "org"


def _state(workspace) -> str:
    return f"revoked {workspace.revoked_at}" if workspace.revoked_at else "active"


def _label(row) -> str:
    return row.name + (f" (user {row.user})" if row.user else "")


# --- secrets --------------------------------------------------------------------------


@click.group("secret")
def secret() -> None:
    """Secrets: opaque named values for transforms (`secrets["NAME"]` in caps.yaml)."""


@secret.command("set")
@click.argument("name")
@from_file_option
@json_option
@click.pass_context
@handles_errors
def secret_set(ctx, name, from_file, as_json) -> None:
    """Store a new secret read from stdin or --from-file (no in-place update)."""
    value = _read_value(from_file) or SecretValue("")
    stores, org_id = _stores(ctx, create=True)
    row = stores.secrets.set(org_id, name, value, actor=_actor())
    _emit(as_json, row.to_json(), f"stored secret {name}")


@secret.command("list")
@json_option
@click.pass_context
@handles_errors
def secret_list(ctx, as_json) -> None:
    """List the org's secret names."""
    stores, org_id = _stores(ctx)
    rows = stores.secrets.list(org_id)
    _emit(as_json, [r.to_json() for r in rows], [r.name for r in rows])


@secret.command("delete")
@click.argument("name")
@click.pass_context
@handles_errors
def secret_delete(ctx, name) -> None:
    """Delete a secret and its vault entry."""
    stores, org_id = _stores(ctx)
    stores.secrets.delete(org_id, name, actor=_actor())
    click.echo(f"deleted secret {name}")


# --- users and workspaces -------------------------------------------------------------


@click.group("user")
def user() -> None:
    """Users of the org (workspaces are created for a user)."""


@user.command("add")
@click.argument("name")
@click.option("--operator", is_flag=True, help="The user administers the org.")
@json_option
@click.pass_context
@handles_errors
def user_add(ctx, name, operator, as_json) -> None:
    """Add a user to the org."""
    stores, org_id = _stores(ctx, create=True)
    row = stores.workspaces.add_user(org_id, name, operator=operator, actor=_actor())
    _emit(as_json, row.to_json(), f"added user {name}")


@user.command("list")
@json_option
@click.pass_context
@handles_errors
def user_list(ctx, as_json) -> None:
    """List the org's users."""
    stores, org_id = _stores(ctx)
    rows = stores.workspaces.list_users(org_id)
    human = [f"{r.name}\t{'operator' if r.operator else ''}".rstrip() for r in rows]
    _emit(as_json, [r.to_json() for r in rows], human)


@click.group("workspace")
def workspace() -> None:
    """Workspaces: agent identities (org, role, user) with an agent token."""


@workspace.command("create")
@click.option("--role", required=True)
@click.option("--user", "user_name", required=True)
@json_option
@click.pass_context
@handles_errors
def workspace_create(ctx, role, user_name, as_json) -> None:
    """Create a workspace; prints its id and agent token (shown only this once)."""
    stores, org_id = _stores(ctx, create=True)
    ws, token = stores.workspaces.create(org_id, role, user_name)
    if as_json:
        click.echo(json.dumps({"id": ws.id, "token": token}))
    else:
        click.echo(f"workspace: {ws.id}\ntoken: {token}")
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
    for command in (init_command, cred, secret, user, workspace, vault):
        main.add_command(command)


__all__ = ["cred", "register"]
