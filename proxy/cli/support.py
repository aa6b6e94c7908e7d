"""Shared pieces of the store commands: error handling and exit codes, opening the stores
in the selected org, reading values from stdin or a file, and --json output.

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
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import click

from capgate.broker.errors import CapgateError
from capgate.broker.home import Home, now_iso
from capgate.broker.oauth import UNSAFE_AUTHORIZE_ENV, UNSAFE_TOKEN_ENV, Endpoints
from capgate.broker.secretvalue import SecretValue
from capgate.broker.store import ABSENT_ORG
from capgate.broker.stores import Stores
from capgate.broker.verify import UNSAFE_VERIFY_ENV


def announce_overrides(endpoints: Endpoints, verify: Mapping[str, str]) -> None:
    """Say loudly on stderr which fixed provider endpoints the environment replaced."""
    groups = [
        (UNSAFE_TOKEN_ENV, endpoints.token_overrides),
        (UNSAFE_AUTHORIZE_ENV, endpoints.authorize_overrides),
        (UNSAFE_VERIFY_ENV, verify),
    ]
    for env, overrides in groups:
        for slug, url in sorted(overrides.items()):
            click.echo(f"WARNING: UNSAFE {env}: {slug} endpoint is {url}", err=True)


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


def _plain(value) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


def _scope(row) -> str:
    return f"user:{row.user}" if row.user else "org"


def _state(workspace) -> str:
    if workspace.revoked_at:
        return f"revoked {workspace.revoked_at}"
    if workspace.expires_at:
        expired = workspace.expires_at <= now_iso()
        return f"{'expired' if expired else 'expires'} {workspace.expires_at}"
    return "active"


def _label(row) -> str:
    return row.name + (f" (user {row.user})" if row.user else "")


# --- secrets --------------------------------------------------------------------------


def caps_roles(path: Path) -> frozenset[str]:
    """The roles a caps.yaml defines; an invalid file is an error (exit 1) naming every problem."""
    from capgate.caps import CapsError, load_caps

    try:
        return frozenset(load_caps(path).roles)
    except CapsError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        _fail(f"{path} is not a valid caps file", 1)
        raise  # unreachable: _fail raises


# --- time windows ---------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """--since T: an ISO 8601 time or date (UTC when no offset is given), or a duration
    back from now (`30m`, `12h`, `7d`); the epoch seconds it means."""
    value = text.strip()
    if value[:-1].isdigit() and value[-1:] in _UNITS:
        return (time.time() if now is None else now) - int(value[:-1]) * _UNITS[value[-1]]
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            "expected an ISO 8601 time (2026-01-31T12:00:00Z) or a duration (30m, 12h, 7d)",
            param_hint="--since",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


since_option = click.option(
    "--since",
    default=None,
    callback=lambda _ctx, _param, value: None if value is None else parse_since(value),
    help="Only rows from this time on: ISO 8601 (UTC unless an offset is given) or 30m/12h/7d.",
)
