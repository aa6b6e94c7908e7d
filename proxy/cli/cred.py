"""Credential and secret commands: `capgate cred ...` and `capgate secret ...`."""

from __future__ import annotations

import click

from capgate.broker.credentials import CredentialSpec
from capgate.broker.oauth import Endpoints
from capgate.broker.secretvalue import SecretValue
from capgate.broker.stores import Stores
from capgate.broker.verify import Verifier, load_verify_overrides

from .support import (
    _actor,
    _emit,
    _fail,
    _label,
    _parse_config,
    _plain,
    _read_value,
    _scope,
    _stores,
    announce_overrides,
    client_secret_option,
    from_file_option,
    handles_errors,
    json_option,
    user_option,
)


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
@click.option("--verify", is_flag=True, help="Verify with the provider first; fail: store nothing.")
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
    if opts["verify"]:
        value = _verifier(stores).check_before_create(org_id, spec, value, client_secret)
    row = stores.credentials.add(org_id, spec, value, client_secret=client_secret, actor=_actor())
    _emit(as_json, row.to_json(), f"added credential {_label(row)}")


def _verifier(stores: Stores) -> Verifier:
    endpoints = Endpoints.from_env()
    overrides = load_verify_overrides()
    announce_overrides(endpoints, overrides)
    return Verifier(stores, endpoints, overrides)


@cred.command("verify")
@click.argument("name")
@user_option
@json_option
@click.pass_context
@handles_errors
def cred_verify(ctx, name, user, as_json) -> None:
    """Check a credential with one safe, read-only call to its provider (OAuth kinds: a
    mint). Exit 0 when it works, 1 when it does not."""
    stores, org_id = _stores(ctx)
    row = stores.credentials.get(org_id, name, user)
    outcome = _verifier(stores).verify_stored(row)
    answer = f"HTTP {outcome.status}" if outcome.status is not None else "no HTTP answer"
    verdict = "ok" if outcome.ok else "failed"
    _emit(as_json, outcome.to_json(), f"{_label(row)}: {verdict} ({outcome.call}: {answer})")
    if not outcome.ok:
        raise click.exceptions.Exit(1)


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
    rows = stores.credentials.list_credentials(org_id, user)

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
    rows = stores.secrets.list_secrets(org_id)
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


def register(main: click.Group) -> None:
    main.add_command(cred)
    main.add_command(secret)
