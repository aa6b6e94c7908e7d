"""`capgate serve` (the control plane), `capgate console-link` and `capgate apikey ...`.

The server package is imported only when `serve` runs, so `capgate --help` and every
other command stay fast.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

import click

from capgate.broker.apikeys import parse_duration
from capgate.broker.home import Home, replace_file
from capgate.broker.oauth import Endpoints
from capgate.broker.oidc import check_issuer
from capgate.broker.verify import load_verify_overrides
from capgate.caps import CapsError, load_caps

from .support import (
    _actor,
    _emit,
    _fail,
    _stores,
    announce_overrides,
    handles_errors,
    json_option,
)

SERVE_RECORD = "serve.json"  # in the home: the public URL the last `serve` announced
SETTINGS_ENV = "CAPGATE_SERVE_SETTINGS"  # read by capgate.proxy.server.app
APP_FACTORY = "capgate.proxy.server.app:app_from_settings"


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter("expected HOST:PORT, e.g. 127.0.0.1:8400", param_hint="--listen")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("serve")
@click.option("--listen", default="127.0.0.1:8400", show_default=True, help="HOST:PORT.")
@click.option("--public-url", default=None, help="The externally visible base URL.")
@click.option(
    "--caps",
    "caps_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="caps.yaml files whose roles /v1/roles shows (repeatable).",
)
@click.option("--oidc-issuer", default=None, help="OpenID Connect issuer for console SSO.")
@click.option("--oidc-client-id", default=None)
@click.option("--oidc-client-secret-file", type=click.Path(path_type=Path), default=None)
@click.option(
    "--insecure-public",
    is_flag=True,
    help="Allow a non-loopback listener without an https public URL (TLS in front).",
)
@click.pass_context
@handles_errors
def serve(
    ctx: click.Context,
    listen: str,
    public_url: str | None,
    caps_files: tuple[Path, ...],
    oidc_issuer: str | None,
    oidc_client_id: str | None,
    oidc_client_secret_file: Path | None,
    insecure_public: bool,
) -> None:
    """Run the control plane: JSON API, console, OAuth callback, /healthz, /metrics."""
    host, port = _parse_listen(listen)
    oidc = None
    if oidc_issuer or oidc_client_id or oidc_client_secret_file:
        if not (oidc_issuer and oidc_client_id):
            _fail("single sign-on needs --oidc-issuer and --oidc-client-id", 2)
        assert oidc_issuer is not None
        check_issuer(oidc_issuer)
        if oidc_client_secret_file is not None and not oidc_client_secret_file.is_file():
            _fail(f"cannot read {oidc_client_secret_file}", 2)
        oidc = {
            "issuer": oidc_issuer,
            "client_id": oidc_client_id,
            # the path travels, never the secret (a process's environment is readable)
            "client_secret_file": str(oidc_client_secret_file.resolve())
            if oidc_client_secret_file
            else None,
        }
    if public_url is not None:
        parts = urlsplit(public_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            _fail("--public-url must be an http(s) URL without a query, like https://cg.example", 2)
    tls_in_front = public_url is not None and urlsplit(public_url).scheme == "https"
    if not _is_loopback(host) and not insecure_public and not tls_in_front:
        _fail(
            f"refusing to listen on {host} (not loopback) without TLS in front: pass "
            "--public-url https://... (the TLS terminator's URL), or --insecure-public",
            2,
        )
    for caps_file in caps_files:  # the roles shown must come from files the proxies can run
        try:
            load_caps(caps_file)
        except CapsError as exc:
            for problem in exc.problems:
                click.echo(str(problem), err=True)
            _fail(f"{caps_file} is not a valid caps file", 1)
    home = Home(ctx.obj.home)
    home.require_initialized()
    announce_overrides(Endpoints.from_env(), load_verify_overrides())  # also validates them

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by connections
    try:
        sock.bind((host, port))
    except OSError as exc:
        _fail(f"cannot listen on {listen}: {exc.strerror or type(exc).__name__}", 1)
    sock.listen(128)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    base = (public_url or f"http://{shown}:{bound}").rstrip("/")
    replace_file(home.root / SERVE_RECORD, json.dumps({"public_url": base}).encode() + b"\n", 0o600)
    _configure_logging()
    # The server package is loaded by uvicorn from its import path (cli and server do not
    # import each other); the settings travel in the environment of this process.
    os.environ[SETTINGS_ENV] = json.dumps(
        {
            "home": str(home.root),
            "public_url": base,
            "caps_files": [str(p.resolve()) for p in caps_files],
            "org": ctx.obj.org,
            "oidc": oidc,
        }
    )
    import uvicorn

    config = uvicorn.Config(
        APP_FACTORY,
        factory=True,
        log_config=None,
        access_log=False,  # ours (capgate.server.access) never logs a query string
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    click.echo(f"capgate serve: listening on http://{shown}:{bound}", err=True)
    click.echo(f"capgate serve: public URL {base}", err=True)
    server.run(sockets=[sock])


def _configure_logging() -> None:
    """One stderr handler for capgate's loggers (the access log included)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("capgate")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)


def _recorded_url(home: Home) -> str | None:
    try:
        data = json.loads((home.root / SERVE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    url = data.get("public_url") if isinstance(data, dict) else None
    return url if isinstance(url, str) else None


@click.command("console-link")
@click.option("--user", "user_name", required=True)
@click.option("--url", "base", default=None, help="The console's base URL.")
@json_option
@click.pass_context
@handles_errors
def console_link(ctx: click.Context, user_name: str, base: str | None, as_json: bool) -> None:
    """Print a one-time console sign-in URL for USER (single use, valid 10 minutes)."""
    stores, org_id = _stores(ctx)
    base = base or _recorded_url(Home(ctx.obj.home))
    if base is None:
        _fail("no --url given and no capgate serve has recorded its public URL on this home", 2)
    assert base is not None
    link = stores.sessions.create_link(org_id, user_name)
    url = f"{base.rstrip('/')}/login/{link.token}"
    if as_json:
        click.echo(json.dumps({"url": url, "expires_at": link.expires_at}))
    else:
        click.echo(url)
        click.echo(f"single use, valid until {link.expires_at}", err=True)


@click.group("apikey")
def apikey() -> None:
    """API keys for the control plane (`cgk_...`): each acts as one user of the org."""


@apikey.command("create")
@click.option("--user", "user_name", required=True)
@click.option("--name", "label", default=None, help="A label for the key.")
@click.option("--expires-in", default=None, help="e.g. 30d, 12h, 15m, 90s (default: never).")
@json_option
@click.pass_context
@handles_errors
def apikey_create(
    ctx: click.Context, user_name: str, label: str | None, expires_in: str | None, as_json: bool
) -> None:
    """Create an API key; prints the token (shown only this once)."""
    seconds = parse_duration(expires_in, "expires_in") if expires_in is not None else None
    stores, org_id = _stores(ctx)
    row, token = stores.api_keys.create(
        org_id, user_name, name=label, expires_in_s=seconds, actor=_actor()
    )
    document = {
        "id": row.id,
        "token": token,
        "user": row.user,
        "name": row.name,
        "expires_at": row.expires_at,
    }
    if as_json:
        click.echo(json.dumps(document))
    else:
        click.echo(f"api key: {row.id}\ntoken: {token}")
        click.echo("the token is shown only once; it cannot be recovered", err=True)


@apikey.command("list")
@json_option
@click.pass_context
@handles_errors
def apikey_list(ctx: click.Context, as_json: bool) -> None:
    """List the org's live API keys (never a token)."""
    stores, org_id = _stores(ctx)
    rows = stores.api_keys.list(org_id)
    human = [
        f"{r.id}\t{r.user}\t{r.prefix}\t{r.name or ''}\texpires {r.expires_at or 'never'}"
        f"\tlast used {r.last_used_at or 'never'}"
        for r in rows
    ]
    _emit(as_json, [r.to_json() for r in rows], human)


@apikey.command("revoke")
@click.argument("key_id")
@click.pass_context
@handles_errors
def apikey_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke an API key: its next request is refused."""
    stores, org_id = _stores(ctx)
    stores.api_keys.revoke(org_id, key_id, actor=_actor())
    click.echo(f"revoked API key {key_id}")


def register(main: click.Group) -> None:
    for command in (serve, console_link, apikey):
        main.add_command(command)
