"""Console sign-in: one-time links and session cookies.

`capgate console-link` creates a link token (`cgl_...`, single use, valid 10 minutes);
`/login/<token>` redeems it for a session token (`cgs_...`, the cookie's value, valid
12 hours). Both are stored as SHA-256 only. A session's CSRF token is derived from the
session token (HMAC-SHA-256), so it is never stored and changes with every session.
Every request re-reads the session row: a revoke or expiry is seen on the next request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from .apikeys import is_past, iso_after
from .home import now_iso
from .identity import Principal
from .store import Connection, ControlStore
from .workspaces import Workspaces

LINK_PREFIX = "cgl_"
SESSION_PREFIX = "cgs_"
LINK_TTL_S = 600
SESSION_TTL_S = 12 * 3600


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def csrf_for(session_token: str) -> str:
    return hmac.new(session_token.encode("utf-8"), b"capgate csrf", hashlib.sha256).hexdigest()


def _plausible(token: str, prefix: str) -> bool:
    return token.startswith(prefix) and token.isascii() and 20 < len(token) < 200


@dataclass(frozen=True)
class Link:
    token: str
    expires_at: str


@dataclass(frozen=True)
class Session:
    token: str
    csrf_token: str
    expires_at: str
    user: str


def _insert_session(
    conn: Connection, token: str, org_id: str, user_id: str, expires_at: str
) -> None:
    conn.execute(
        "INSERT INTO console_sessions (sha256, org_id, user_id, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (_sha(token), org_id, user_id, now_iso(), expires_at),
    )


def _prune(conn: Connection) -> None:
    """Forget links and sessions that expired (or ended) a day ago or more."""
    cutoff = iso_after(-86400)
    conn.execute("DELETE FROM console_links WHERE expires_at < ?", (cutoff,))
    conn.execute(
        "DELETE FROM console_sessions WHERE expires_at < ? OR revoked_at < ?", (cutoff, cutoff)
    )


class Sessions:
    """Console links and sessions of every org in one control store."""

    def __init__(self, store: ControlStore, workspaces: Workspaces) -> None:
        self._store = store
        self._users = workspaces

    def create_link(self, org_id: str, user: str, *, ttl_s: int = LINK_TTL_S) -> Link:
        owner = self._users.get_user(org_id, user)
        token = LINK_PREFIX + secrets.token_urlsafe(32)
        link = Link(token, iso_after(ttl_s))
        with self._store.write() as conn:
            _prune(conn)
            conn.execute(
                "INSERT INTO console_links (sha256, org_id, user_id, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (_sha(token), org_id, owner.id, now_iso(), link.expires_at),
            )
        return link

    def redeem_link(self, token: str) -> Session | None:
        """A new session for a live, unused link (which is then used up); None otherwise."""
        if not _plausible(token, LINK_PREFIX):
            return None
        digest = _sha(token)
        session_token = SESSION_PREFIX + secrets.token_urlsafe(32)
        expires_at = iso_after(SESSION_TTL_S)
        with self._store.write() as conn:
            row = conn.execute(
                "SELECT l.org_id, l.user_id, l.expires_at, u.name AS user FROM console_links l"
                " JOIN users u ON u.id = l.user_id WHERE l.sha256 = ? AND l.used_at IS NULL",
                (digest,),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE console_links SET used_at = ? WHERE sha256 = ?", (now_iso(), digest)
            )
            if is_past(row["expires_at"]):
                return None
            _insert_session(conn, session_token, row["org_id"], row["user_id"], expires_at)
        return Session(session_token, csrf_for(session_token), expires_at, row["user"])

    def create_session(self, org_id: str, user_id: str, user: str) -> Session:
        """A session for a user signed in another way (single sign-on)."""
        session_token = SESSION_PREFIX + secrets.token_urlsafe(32)
        expires_at = iso_after(SESSION_TTL_S)
        with self._store.write() as conn:
            _insert_session(conn, session_token, org_id, user_id, expires_at)
        return Session(session_token, csrf_for(session_token), expires_at, user)

    def authenticate(self, token: str) -> Principal | None:
        if not _plausible(token, SESSION_PREFIX):
            return None
        digest = _sha(token)
        rows = self._store.query(
            "SELECT s.org_id, o.name AS org, s.user_id, u.name AS user, u.operator, s.expires_at"
            " FROM console_sessions s JOIN users u ON u.id = s.user_id"
            " JOIN orgs o ON o.id = s.org_id WHERE s.sha256 = ? AND s.revoked_at IS NULL",
            (digest,),
        )
        if not rows or is_past(rows[0]["expires_at"]):
            return None
        row = rows[0]
        return Principal(
            org_id=row["org_id"],
            org=row["org"],
            user_id=row["user_id"],
            user=row["user"],
            operator=bool(row["operator"]),
            via="session",
            credential_id=digest,
            csrf_token=csrf_for(token),
        )

    def revoke(self, token: str) -> None:
        with self._store.write() as conn:
            conn.execute(
                "UPDATE console_sessions SET revoked_at = coalesce(revoked_at, ?) WHERE sha256 = ?",
                (now_iso(), _sha(token)),
            )
