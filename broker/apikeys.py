"""API keys of the control plane: `cgk_` tokens that act as one user, in that user's org.

A key is `cgk_` + 43 URL-safe characters (32 random bytes), shown once at creation. The
store keeps its first 8 characters after `cgk_` (to find the row; shown as the key's
`prefix`) and its SHA-256, compared in constant time. Every authentication reads the row
(no cache that outlives a request), so a revoke or an expiry made by any process is seen
on the very next request. `last_used_at` is written at most once a minute per key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from . import audit
from .engine import OperationalError
from .errors import FieldError, InvalidInput, NotFound
from .home import now_iso
from .identity import Principal
from .store import ControlStore, new_id
from .workspaces import Workspaces

log = logging.getLogger(__name__)

KEY_PREFIX = "cgk_"
KEY_BYTES = 32
LOOKUP_CHARS = 8
LAST_USED_INTERVAL_S = 60.0
MAX_NAME = 128


@dataclass(frozen=True)
class ApiKeyRow:
    id: str
    user: str
    name: str | None
    prefix: str
    created_at: str
    expires_at: str | None
    last_used_at: str | None
    revoked_at: str | None = None

    def to_json(self) -> dict:
        """The API's shape: no revoked_at (revoked keys are not listed)."""
        data = asdict(self)
        data.pop("revoked_at")
        return data


def key_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _lookup(token: str) -> str | None:
    if not token.startswith(KEY_PREFIX) or len(token) < len(KEY_PREFIX) + LOOKUP_CHARS:
        return None
    if not token.isascii() or len(token) > 256:
        return None
    return token[: len(KEY_PREFIX) + LOOKUP_CHARS]


def iso_after(seconds: float) -> str:
    at = datetime.now(UTC) + timedelta(seconds=seconds)
    return at.isoformat(timespec="microseconds").replace("+00:00", "Z")


def is_past(iso: str | None) -> bool:
    """True when the ISO time `iso` (as written by now_iso) is not in the future."""
    return iso is not None and iso <= now_iso()


def parse_duration(text: str, field: str = "expires_in") -> int:
    """`30d`, `12h`, `15m`, `90s` (or plain seconds) as seconds >= 1; InvalidInput otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = text.strip().lower()
    number, unit = (raw[:-1], raw[-1]) if raw and raw[-1] in units else (raw, "s")
    if not number.isdigit() or int(number) * units[unit] < 1:
        raise InvalidInput([FieldError(field, "a duration like 90s, 15m, 12h or 30d (>= 1s)")])
    return int(number) * units[unit]


class ApiKeys:
    """API keys of every org in one control store."""

    def __init__(self, store: ControlStore, workspaces: Workspaces) -> None:
        self._store = store
        self._users = workspaces
        self._last_used: dict[str, float] = {}
        self._last_used_lock = threading.Lock()

    def create(
        self,
        org_id: str,
        user: str,
        *,
        name: str | None = None,
        expires_in_s: int | None = None,
        actor: str | None = None,
    ) -> tuple[ApiKeyRow, str]:
        """A new key for `user`; returns the row and the token (shown only this once)."""
        errors = []
        if name is not None and (
            not name.strip() or len(name) > MAX_NAME or any(ch in name for ch in "\r\n\0")
        ):
            errors.append(FieldError("name", f"a single-line label of 1-{MAX_NAME} characters"))
        if expires_in_s is not None and (
            isinstance(expires_in_s, bool) or not isinstance(expires_in_s, int) or expires_in_s < 1
        ):
            errors.append(FieldError("expires_in_s", "a whole number of seconds >= 1"))
        if errors:
            raise InvalidInput(errors)
        owner = self._users.get_user(org_id, user)
        token = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
        prefix = _lookup(token)
        assert prefix is not None
        expires_at = iso_after(expires_in_s) if expires_in_s is not None else None
        row = ApiKeyRow(new_id("key"), owner.name, name, prefix, now_iso(), expires_at, None)
        with self._store.write() as conn:
            conn.execute(
                "INSERT INTO api_keys (id, org_id, user_id, name, prefix, sha256, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.id,
                    org_id,
                    owner.id,
                    name,
                    prefix,
                    key_sha256(token),
                    row.created_at,
                    expires_at,
                ),
            )
            audit.record(
                conn,
                org_id=org_id,
                actor=actor,
                action="api_key.create",
                target_type="api_key",
                target_name=f"{row.id} (user {owner.name})",
            )
        return row, token

    def list(self, org_id: str, *, user_id: str | None = None) -> list[ApiKeyRow]:
        """Live (unrevoked) keys of the org, or of one user; expired keys are listed too."""
        sql = _SELECT + " WHERE k.org_id = ? AND k.revoked_at IS NULL"
        params: tuple = (org_id,)
        if user_id is not None:
            sql += " AND k.user_id = ?"
            params += (user_id,)
        return [_row(r) for r in self._store.query(sql + " ORDER BY k.created_at, k.id", params)]

    def get(self, org_id: str, key_id: str) -> tuple[ApiKeyRow, str]:
        """A live key of the org and its user's id; NotFound otherwise (other orgs too)."""
        rows = self._store.query(
            _SELECT + " WHERE k.org_id = ? AND k.id = ? AND k.revoked_at IS NULL",
            (org_id, key_id),
        )
        if not rows:
            raise NotFound(f"API key {key_id!r} does not exist")
        return _row(rows[0]), rows[0]["user_id"]

    def revoke(self, org_id: str, key_id: str, *, actor: str | None = None) -> None:
        """Revoke a key; the next request with it fails. NotFound when not a live key here."""
        with self._store.write() as conn:
            done = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND org_id = ?"
                " AND revoked_at IS NULL",
                (now_iso(), key_id, org_id),
            )
            if done.rowcount != 1:
                raise NotFound(f"API key {key_id!r} does not exist")
            audit.record(
                conn,
                org_id=org_id,
                actor=actor,
                action="api_key.revoke",
                target_type="api_key",
                target_name=key_id,
            )

    def authenticate(self, token: str) -> Principal | None:
        """The principal a live key acts as, or None (unknown, revoked, expired)."""
        prefix = _lookup(token)
        if prefix is None:
            return None
        digest = key_sha256(token)
        rows = self._store.query(
            "SELECT k.id, k.sha256, k.expires_at, k.org_id, o.name AS org, k.user_id,"
            " u.name AS user, u.operator FROM api_keys k JOIN users u ON u.id = k.user_id"
            " JOIN orgs o ON o.id = k.org_id WHERE k.prefix = ? AND k.revoked_at IS NULL",
            (prefix,),
        )
        match = None
        for row in rows:
            if hmac.compare_digest(row["sha256"], digest):
                match = row
        if match is None or is_past(match["expires_at"]):
            return None
        self._touch(match["id"])
        return Principal(
            org_id=match["org_id"],
            org=match["org"],
            user_id=match["user_id"],
            user=match["user"],
            operator=bool(match["operator"]),
            via="api_key",
            credential_id=match["id"],
        )

    def _touch(self, key_id: str) -> None:
        now = time.monotonic()
        with self._last_used_lock:
            last = self._last_used.get(key_id)
            if last is not None and now - last < LAST_USED_INTERVAL_S:
                return
            self._last_used[key_id] = now
        try:
            with self._store.write() as conn:
                conn.execute(
                    "UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now_iso(), key_id)
                )
        except OperationalError as exc:  # busy: best effort, retried next interval
            log.warning("could not record API key last use: %s", exc)


_SELECT = (
    "SELECT k.id, k.user_id, u.name AS user, k.name, k.prefix, k.created_at, k.expires_at,"
    " k.last_used_at, k.revoked_at FROM api_keys k JOIN users u ON u.id = k.user_id"
)


def _row(r: sqlite3.Row) -> ApiKeyRow:
    return ApiKeyRow(
        r["id"],
        r["user"],
        r["name"],
        r["prefix"],
        r["created_at"],
        r["expires_at"],
        r["last_used_at"],
        r["revoked_at"],
    )
