"""`capgate cred connect NAME [--user U]`: OAuth consent for authorization-code credentials.

Prints the provider's authorization URL (and opens it in a browser unless --no-browser),
waits for the redirect on a loopback server at http://127.0.0.1:<port>/oauth/callback,
exchanges the code (PKCE S256), stores the refresh token, and marks the credential
active. Re-running it recovers a credential in needs_reauth.
"""

from __future__ import annotations

import json
import os
import webbrowser

import click

from capgate.broker.consent import Consent, ConsentError
from capgate.broker.credential_rows import ACTIVE
from capgate.broker.errors import CapgateError, FieldError, InvalidInput
from capgate.broker.home import Home
from capgate.broker.oauth import UNSAFE_AUTHORIZE_ENV, UNSAFE_TOKEN_ENV, Endpoints
from capgate.broker.providers import PROVIDERS, Kind
from capgate.broker.stores import Stores


def _actor() -> str:
    return "cli:" + (os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown")


def _announce_overrides(endpoints: Endpoints) -> None:
    for env, overrides in (
        (UNSAFE_TOKEN_ENV, endpoints.token_overrides),
        (UNSAFE_AUTHORIZE_ENV, endpoints.authorize_overrides),
    ):
        for slug, url in sorted(overrides.items()):
            click.echo(f"WARNING: UNSAFE {env}: {slug} OAuth endpoint is {url}", err=True)


@click.command("connect")
@click.argument("name")
@click.option("--user", default=None, help="Connect this user's own row (user-scoped).")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Loopback port (0: any).")
@click.option("--no-browser", is_flag=True, help="Only print the URL; do not open a browser.")
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
    help="Seconds to wait for the browser to come back.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def connect(
    ctx: click.Context,
    name: str,
    user: str | None,
    port: int,
    no_browser: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Run OAuth consent for an oauth2_authorization_code credential and store its refresh token."""
    try:
        _connect(ctx, name, user, port, no_browser, timeout, as_json)
    except CapgateError as exc:
        click.echo(f"error: {exc}", err=True)
        raise click.exceptions.Exit(exc.exit_code) from None
    except ConsentError as exc:
        click.echo(f"error: consent failed: {exc}", err=True)
        raise click.exceptions.Exit(1) from None


def _connect(
    ctx: click.Context,
    name: str,
    user: str | None,
    port: int,
    no_browser: bool,
    timeout: float,
    as_json: bool,
) -> None:
    stores = Stores.open(Home(ctx.obj.home))
    ctx.call_on_close(stores.close)
    org_id = stores.control.org_id(ctx.obj.org)
    row = stores.credentials.get(org_id, name, user)
    if row.kind != Kind.OAUTH2_AUTHORIZATION_CODE:
        raise InvalidInput(
            [FieldError("kind", f"{name} is {row.kind}; only oauth2_authorization_code connects")]
        )
    endpoints = Endpoints.from_env()
    _announce_overrides(endpoints)
    provider = PROVIDERS[row.provider]
    client_secret = stores.credentials.client_secret(row)
    with Consent(
        provider, row.resolved(), client_secret=client_secret, endpoints=endpoints, port=port
    ) as consent:
        url = consent.authorization_url()
        click.echo("Open this URL in a browser to authorise capgate:", err=True)
        click.echo(url, err=True)
        click.echo(f"Waiting for the redirect to {consent.redirect_uri} ...", err=True)
        if not no_browser:
            webbrowser.open(url)
        grant = consent.exchange(consent.wait_for_code(timeout))
    assert grant.refresh_token is not None
    # Under the credential lock, so a proxy refreshing the old token cannot interleave.
    with stores.control.credential_lock(row.id):
        current = stores.credentials.get_by_id(row.id)
        stored = stores.credentials.replace_durable_value(
            row.id, current.durable_ref, grant.refresh_token, actor=_actor()
        )
    if not stored:
        raise ConsentError("the credential was deleted or changed meanwhile; nothing stored")
    label = name if user is None else f"{name} (user {user})"
    if as_json:
        click.echo(json.dumps({"name": name, "user": user, "status": ACTIVE}, sort_keys=True))
    else:
        click.echo(f"connected: credential {label} is active")


def register(main: click.Group) -> None:
    # main.py registers cred before this module; command modules do not import each other.
    cred = main.commands.get("cred")
    if not isinstance(cred, click.Group):
        raise RuntimeError("cli.oauth needs the `cred` group of cli.cred to be registered first")
    cred.add_command(connect)
