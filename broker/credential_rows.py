"""Credential rows as typed values: what an operator asks for and what the store holds."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .types import ResolvedCredential

ACTIVE = "active"
PENDING_CONSENT = "pending_consent"  # authorization_code without a refresh token yet
NEEDS_REAUTH = "needs_reauth"  # a terminal mint failure; fixed by cred update or connect
STATUSES = (ACTIVE, PENDING_CONSENT, NEEDS_REAUTH)
CLIENT_SECRET_REF = "client_secret_ref"


@dataclass(frozen=True)
class CredentialSpec:
    """What an operator asks for in `cred add`, before any check."""

    name: str
    provider: str
    kind: str
    user: str | None = None
    scopes: tuple[str, ...] = ()
    provider_config: Mapping[str, str] = field(default_factory=dict)
    allow_user_override: bool = False


@dataclass(frozen=True)
class CredentialRow:
    """One row of the credentials table (no value; `durable_ref` is an opaque vault ref)."""

    id: str
    org_id: str
    name: str
    user_id: str | None
    user: str | None
    provider: str
    kind: str
    scopes: tuple[str, ...]
    durable_ref: str | None
    provider_config: Mapping[str, str]
    status: str
    last_minted_at: str | None
    last_minted_status: str | None
    allow_user_override: bool
    created_at: str
    updated_at: str

    def resolved(self) -> ResolvedCredential:
        return ResolvedCredential(
            id=self.id,
            org_id=self.org_id,
            name=self.name,
            provider=self.provider,
            kind=self.kind,
            user_id=self.user_id,
            status=self.status,
            scopes=self.scopes,
            provider_config=self.provider_config,
        )

    def to_json(self) -> dict:
        """The row as shown by `cred show --json` (refs included: they are not secret)."""
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["scopes"] = list(self.scopes)
        data["provider_config"] = dict(self.provider_config)
        return data


PUBLIC_FIELDS = (
    "id",
    "name",
    "user",
    "provider",
    "kind",
    "scopes",
    "provider_config",
    "status",
    "last_minted_at",
    "last_minted_status",
    "allow_user_override",
    "created_at",
    "updated_at",
)


def public_json(row: CredentialRow) -> dict:
    """The row as the control plane shows it: no org/user ids, no refs of any kind."""
    data = row.to_json()
    out = {key: data[key] for key in PUBLIC_FIELDS}
    out["provider_config"] = {
        k: v for k, v in row.provider_config.items() if not k.endswith("_ref")
    }
    return out


def row_from_sql(row: sqlite3.Row) -> CredentialRow:
    return CredentialRow(
        id=row["id"],
        org_id=row["org_id"],
        name=row["name"],
        user_id=row["user_id"],
        user=row["user"],
        provider=row["provider"],
        kind=row["kind"],
        scopes=tuple(json.loads(row["scopes"] or "[]")),
        durable_ref=row["durable_ref"],
        provider_config=MappingProxyType(json.loads(row["provider_config"] or "{}")),
        status=row["status"],
        last_minted_at=row["last_minted_at"],
        last_minted_status=row["last_minted_status"],
        allow_user_override=bool(row["allow_user_override"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


SELECT = "SELECT c.*, u.name AS user FROM credentials c LEFT JOIN users u ON u.id = c.user_id"
