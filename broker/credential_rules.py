"""The rules a new credential must pass, checked before anything reaches the vault.

Field rules (exit 2): the provider table's legal pairs and provider_config fields, what a
user-scoped row may be, the shape of the durable value. State rules (exit 1): one row per
(org, name, user), and org rows with `allow_user_override=false` never coexist with
user-scoped rows of the same name (PROVIDERS.md, DESIGN.md "Org-scoped and user-scoped").
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .credential_rows import CredentialSpec
from .errors import Conflict, Exists, FieldError
from .providers import USER_SCOPABLE_KINDS, Kind, validate_credential_spec
from .secretvalue import SecretValue

if TYPE_CHECKING:
    from .store import Connection

JWT_KINDS = frozenset({Kind.OAUTH2_JWT_BEARER, Kind.OAUTH2_JWT_BEARER_WITH_SUBJECT})


def spec_errors(spec: CredentialSpec, *, client_secret_given: bool) -> list[FieldError]:
    """Every field error of `spec`; empty when it may be stored."""
    config = dict(spec.provider_config)
    errors = list(
        validate_credential_spec(
            spec.provider, spec.kind, config, user_scoped=spec.user is not None
        )
    )
    user_scopable = spec.kind in USER_SCOPABLE_KINDS
    if "client_secret_ref" in config:
        errors.append(
            FieldError(
                "config.client_secret_ref",
                "set by capgate; pass the client secret with --client-secret-file",
            )
        )
    if spec.allow_user_override and spec.user is not None:
        errors.append(FieldError("allow_user_override", "applies to the org row, not a user's row"))
    elif spec.allow_user_override and not user_scopable:
        errors.append(
            FieldError(
                "allow_user_override",
                f"kind {spec.kind!r} is always org-scoped; only oauth2_authorization_code "
                "credentials can be overridden per user",
            )
        )
    if client_secret_given and spec.kind != Kind.OAUTH2_AUTHORIZATION_CODE:
        errors.append(
            FieldError(
                "client_secret", f"only oauth2_authorization_code takes one, not {spec.kind}"
            )
        )
    for scope in spec.scopes:
        if not scope or any(ch.isspace() for ch in scope):
            errors.append(FieldError("scope", "each scope is one non-empty word"))
            break
    return errors


def check_value(kind: str, value: SecretValue | None) -> list[FieldError]:
    """Field errors of a durable value for `kind` (never quoting the value)."""
    if value is None or not value.reveal():
        if kind == Kind.OAUTH2_AUTHORIZATION_CODE:
            return []  # the refresh token arrives later, through cred connect
        return [FieldError("value", "empty; pipe the value on stdin or pass --from-file FILE")]
    if kind in JWT_KINDS and not _is_service_account(value):
        return [
            FieldError(
                "value",
                "not a service account key: expected a JSON object with client_email "
                "and private_key",
            )
        ]
    return []


def _is_service_account(value: SecretValue) -> bool:
    try:
        document = json.loads(value.reveal())
    except ValueError:
        return False
    return isinstance(document, dict) and all(
        isinstance(document.get(k), str) and document[k] for k in ("client_email", "private_key")
    )


def check_new_row(conn: Connection, org_id: str, spec: CredentialSpec, user_id: str | None) -> None:
    """Raise Conflict when a row for (org, name, user) would clash with stored rows."""
    rows = conn.execute(
        "SELECT user_id, provider, kind, allow_user_override FROM credentials"
        " WHERE org_id = ? AND name = ?",
        (org_id, spec.name),
    ).fetchall()
    org_row = next((r for r in rows if r["user_id"] is None), None)
    user_rows = [r for r in rows if r["user_id"] is not None]
    owner = "" if user_id is None else f" for user {spec.user!r}"
    if any(r["user_id"] == user_id for r in rows):
        raise Exists(
            f"credential {spec.name!r}{owner} already exists; use cred update to replace "
            "its value, or cred delete first"
        )
    for other in rows:
        if (other["provider"], other["kind"]) != (spec.provider, spec.kind):
            raise Conflict(
                f"credential {spec.name!r} already exists as {other['provider']}/"
                f"{other['kind']}; every row of one name must have the same provider and kind"
            )
    if user_id is not None and org_row is not None and not org_row["allow_user_override"]:
        raise Conflict(
            f"the org credential {spec.name!r} does not allow user overrides; delete it and "
            "add it again with --allow-user-override"
        )
    if user_id is None and user_rows and not spec.allow_user_override:
        raise Conflict(
            f"users already have their own {spec.name!r} credential; an org row of that "
            "name needs --allow-user-override"
        )
