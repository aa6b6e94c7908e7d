"""Users, workspaces and agent tokens.

An agent token is `cg_` + 43 URL-safe characters (32 random bytes). It is shown once, at
workspace creation; the store keeps only its first 8 characters after `cg_` (to find the
row) and its SHA-256 (compared in constant time). Revoking a workspace revokes its tokens.

A workspace may hold a lease (`expires_at`): past it, its token no longer authenticates.
`renew` moves the end forward (exec renews a short lease while its command runs, so a
killed exec leaves a token that dies by itself). Neither changes the broker generation:
proxies carry the expiry on their cached workspace and check it per request.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from . import audit, changes
from .engine import OperationalError
from .errors import Conflict, Exists, FieldError, InvalidInput, NotFound
from .home import now_iso
from .store import ControlStore, check_name, new_id
from .types import Workspace

log = logging.getLogger(__name__)

TOKEN_PREFIX = "cg_"
TOKEN_BYTES = 32
LOOKUP_CHARS = 8
LAST_USED_INTERVAL_S = 60.0
MAX_TTL_S = 10 * 365 * 24 * 3600  # a lease longer than this is a typo, not a lease


EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
OPERATOR = "operator"
MEMBER = "member"
ROLES = (OPERATOR, MEMBER)


@dataclass(frozen=True)
class UserRow:
    id: str
    org_id: str
    name: str
    operator: bool
    created_at: str
    email: str | None = None

    @property
    def role(self) -> str:
        return OPERATOR if self.operator else MEMBER

    def to_json(self) -> dict:
        return {**asdict(self), "role": self.role}


def check_email(email: str) -> None:
    """Raise InvalidInput unless `email` looks like one address (no display name)."""
    if len(email) > 254 or not EMAIL_PATTERN.match(email):
        raise InvalidInput([FieldError("email", "must be one e-mail address, like a@example.com")])


@dataclass(frozen=True)
class WorkspaceRow:
    id: str
    org_id: str
    role: str
    user_id: str
    user: str
    created_at: str
    revoked_at: str | None
    expires_at: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def check_ttl(ttl_s: int | None) -> None:
    """InvalidInput unless `ttl_s` is None (no expiry) or a whole number of seconds >= 1."""
    if ttl_s is None:
        return
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_TTL_S:
        raise InvalidInput(
            [FieldError("ttl_s", f"must be a whole number of seconds from 1 to {MAX_TTL_S}")]
        )


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _expiry(ttl_s: int | None) -> str | None:
    return None if ttl_s is None else _iso(datetime.now(UTC) + timedelta(seconds=ttl_s))


def _unix(iso: str | None) -> float | None:
    if iso is None:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _lookup_prefix(token: str) -> str | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) < len(TOKEN_PREFIX) + LOOKUP_CHARS:
        return None
    if not token.isascii():  # tokens are URL-safe base64; a lone surrogate cannot be hashed
        return None
    return token[len(TOKEN_PREFIX) : len(TOKEN_PREFIX) + LOOKUP_CHARS]


class Workspaces:
    """Users, workspaces and agent tokens of every org in one control store."""

    def __init__(self, store: ControlStore) -> None:
        self._store = store
        self._last_used_written: dict[str, float] = {}
        self._last_used_lock = threading.Lock()
        # The proxy writes last_used_at from a thread of its own (`touch_in_background`):
        # another process holding the write lock must not stall authentication.
        self._toucher: concurrent.futures.ThreadPoolExecutor | None = None

    def touch_in_background(self) -> None:
        """Record last use from one background thread instead of the caller's (the proxy)."""
        if self._toucher is None:
            self._toucher = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="capgate-last-used"
            )

    def close(self) -> None:
        """Finish pending last-use writes (bounded by the store's busy timeout)."""
        if self._toucher is not None:
            self._toucher.shutdown(wait=True)
            self._toucher = None

    # -- users -----------------------------------------------------------------------

    def add_user(
        self,
        org_id: str,
        name: str,
        *,
        operator: bool = False,
        email: str | None = None,
        actor: str | None = None,
    ) -> UserRow:
        """Create a user; Exists when the name (or the email) is taken in this org."""
        check_name("name", name)
        if email is not None:
            check_email(email)
        row = UserRow(new_id("user"), org_id, name, operator, now_iso(), email)
        with self._store.write() as conn:
            if conn.execute(
                "SELECT 1 FROM users WHERE org_id = ? AND name = ?", (org_id, name)
            ).fetchone():
                raise Exists(f"user {name!r} already exists")
            if (
                email is not None
                and conn.execute(
                    "SELECT 1 FROM users WHERE org_id = ? AND lower(email) = lower(?)",
                    (org_id, email),
                ).fetchone()
            ):
                raise Exists("another user of the org has that email")
            conn.execute(
                "INSERT INTO users (id, org_id, name, operator, created_at, email)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (row.id, org_id, name, int(operator), row.created_at, email),
            )
            audit.record(
                conn,
                org_id=org_id,
                actor=actor,
                action="user.create",
                target_type="user",
                target_name=name,
            )
        return row

    def get_user(self, org_id: str, name: str) -> UserRow:
        rows = self._store.query(
            "SELECT * FROM users WHERE org_id = ? AND name = ?", (org_id, name)
        )
        if not rows:
            raise NotFound(f"user {name!r} does not exist; add it with capgate user add")
        return _user(rows[0])

    def user_by_email(self, org_id: str, email: str) -> UserRow | None:
        """The org's user with this email (case-insensitive), or None."""
        rows = self._store.query(
            "SELECT * FROM users WHERE org_id = ? AND lower(email) = lower(?)", (org_id, email)
        )
        return _user(rows[0]) if len(rows) == 1 else None

    def list_users(self, org_id: str) -> list[UserRow]:
        rows = self._store.query("SELECT * FROM users WHERE org_id = ? ORDER BY name", (org_id,))
        return [_user(r) for r in rows]

    # -- workspaces ------------------------------------------------------------------

    def create(
        self, org_id: str, role: str, user: str, *, ttl_s: int | None = None
    ) -> tuple[WorkspaceRow, str]:
        """Create a workspace for `user` and its agent token; the token is returned once.

        `ttl_s` gives the workspace a lease of that many seconds (None: no expiry).
        """
        check_name("role", role)
        check_ttl(ttl_s)
        owner = self.get_user(org_id, user)
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        ws = WorkspaceRow(
            new_id("ws"), org_id, role, owner.id, owner.name, now_iso(), None, _expiry(ttl_s)
        )
        with self._store.write() as conn:
            conn.execute(
                "INSERT INTO workspaces (id, org_id, role, user_id, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (ws.id, org_id, role, owner.id, ws.created_at, ws.expires_at),
            )
            conn.execute(
                "INSERT INTO agent_tokens (id, workspace_id, org_id, prefix, sha256, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    new_id("tok"),
                    ws.id,
                    org_id,
                    _lookup_prefix(token),
                    token_sha256(token),
                    ws.created_at,
                ),
            )
            audit.record(
                conn,
                org_id=org_id,
                actor=owner.name,
                action="workspace.create",
                target_type="workspace",
                target_name=ws.id,
            )
            changes.bump(self._store, conn)
        return ws, token

    def revoke(self, org_id: str, workspace_id: str, *, actor: str | None = None) -> None:
        """Revoke a workspace and all its tokens; NotFound when it is not in this org."""
        at = now_iso()
        with self._store.write() as conn:
            found = conn.execute(
                "SELECT revoked_at FROM workspaces WHERE id = ? AND org_id = ?",
                (workspace_id, org_id),
            ).fetchone()
            if found is None:
                raise NotFound(f"workspace {workspace_id!r} does not exist")
            conn.execute(
                "UPDATE workspaces SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?",
                (at, workspace_id),
            )
            conn.execute(
                "UPDATE agent_tokens SET revoked_at = coalesce(revoked_at, ?)"
                " WHERE workspace_id = ?",
                (at, workspace_id),
            )
            if found["revoked_at"] is None:
                audit.record(
                    conn,
                    org_id=org_id,
                    actor=actor,
                    action="workspace.revoke",
                    target_type="workspace",
                    target_name=workspace_id,
                )
            changes.bump(self._store, conn)

    def renew(self, org_id: str, workspace_id: str, ttl_s: int) -> WorkspaceRow:
        """Move the lease's end to `ttl_s` seconds from now.

        NotFound when the workspace is not in this org; Conflict when it is revoked or its
        lease has already run out (an expired token stays dead: renewing must not revive a
        token someone may have been refused with).
        """
        check_ttl(ttl_s)
        expires_at = _expiry(ttl_s)
        with self._store.write() as conn:
            found = conn.execute(
                "SELECT revoked_at, expires_at FROM workspaces WHERE id = ? AND org_id = ?",
                (workspace_id, org_id),
            ).fetchone()
            if found is None:
                raise NotFound(f"workspace {workspace_id!r} does not exist")
            if found["revoked_at"] is not None:
                raise Conflict(f"workspace {workspace_id!r} is revoked")
            if found["expires_at"] is not None and found["expires_at"] <= now_iso():
                raise Conflict(f"workspace {workspace_id!r} has expired")
            conn.execute(
                "UPDATE workspaces SET expires_at = ? WHERE id = ?", (expires_at, workspace_id)
            )
        return self.get(org_id, workspace_id)

    def get(self, org_id: str, workspace_id: str) -> WorkspaceRow:
        rows = self._store.query(
            _WORKSPACE_SELECT + " WHERE w.org_id = ? AND w.id = ?", (org_id, workspace_id)
        )
        if not rows:
            raise NotFound(f"workspace {workspace_id!r} does not exist")
        return _workspace(rows[0])

    def list_workspaces(self, org_id: str, *, include_revoked: bool = True) -> list[WorkspaceRow]:
        sql = _WORKSPACE_SELECT + " WHERE w.org_id = ?"
        if not include_revoked:
            sql += " AND w.revoked_at IS NULL"
        rows = self._store.query(sql + " ORDER BY w.created_at", (org_id,))
        return [_workspace(r) for r in rows]

    # -- agent authentication --------------------------------------------------------

    def authenticate(self, token: str) -> Workspace | None:
        """The live workspace this agent token belongs to, or None (revoked, expired, unknown).

        Candidates are found by the token's lookup prefix and compared by SHA-256 in
        constant time. Records last_used_at at most once a minute per token.
        """
        prefix = _lookup_prefix(token)
        if prefix is None:
            return None
        digest = token_sha256(token)
        rows = self._store.query(
            "SELECT t.id AS token_id, t.sha256, w.id, w.org_id, o.name AS org, w.role,"
            " w.user_id, u.name AS user, w.expires_at FROM agent_tokens t"
            " JOIN workspaces w ON w.id = t.workspace_id"
            " JOIN orgs o ON o.id = w.org_id JOIN users u ON u.id = w.user_id"
            " WHERE t.prefix = ? AND t.revoked_at IS NULL AND w.revoked_at IS NULL",
            (prefix,),
        )
        match = None
        for row in rows:
            if hmac.compare_digest(row["sha256"], digest):
                match = row
        if match is None:
            return None
        expires_at = _unix(match["expires_at"])
        if expires_at is not None and time.time() >= expires_at:
            return None
        self._touch(match["token_id"])
        return Workspace(
            id=match["id"],
            org_id=match["org_id"],
            org=match["org"],
            role=match["role"],
            user_id=match["user_id"],
            user=match["user"],
            expires_at=expires_at,
        )

    def _touch(self, token_id: str) -> None:
        now = time.monotonic()
        with self._last_used_lock:
            last = self._last_used_written.get(token_id)
            if last is not None and now - last < LAST_USED_INTERVAL_S:
                return
            self._last_used_written[token_id] = now
        toucher = self._toucher
        if toucher is not None:
            with contextlib.suppress(RuntimeError):  # shutting down
                toucher.submit(self._write_last_used, token_id, now_iso())
            return
        self._write_last_used(token_id, now_iso())

    def _write_last_used(self, token_id: str, at: str) -> None:
        try:
            with self._store.write() as conn:
                conn.execute(
                    "UPDATE agent_tokens SET last_used_at = ? WHERE id = ?", (at, token_id)
                )
        except OperationalError as exc:  # busy: best effort, retried next interval
            log.warning("could not record agent token last use: %s", exc)


_WORKSPACE_SELECT = (
    "SELECT w.id, w.org_id, w.role, w.user_id, u.name AS user, w.created_at, w.revoked_at,"
    " w.expires_at FROM workspaces w JOIN users u ON u.id = w.user_id"
)


def _user(row: sqlite3.Row) -> UserRow:
    return UserRow(
        row["id"],
        row["org_id"],
        row["name"],
        bool(row["operator"]),
        row["created_at"],
        row["email"],
    )


def _workspace(row: sqlite3.Row) -> WorkspaceRow:
    return WorkspaceRow(
        row["id"],
        row["org_id"],
        row["role"],
        row["user_id"],
        row["user"],
        row["created_at"],
        row["revoked_at"],
        row["expires_at"],
    )
