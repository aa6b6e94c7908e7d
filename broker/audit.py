"""Audit events: who created, changed or deleted a credential, secret, user or workspace.

Rows name the target and, for status transitions, the from/to status and a reason code;
they never hold a value. `record` runs inside the caller's write transaction, so the
event commits if and only if the change does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .home import now_iso
from .store import Connection, ControlStore


@dataclass(frozen=True)
class AuditEvent:
    id: int
    at: str
    org_id: str
    actor: str | None
    action: str  # e.g. credential.create, credential.status, secret.delete
    target_type: str | None
    target_name: str | None
    from_status: str | None = None
    to_status: str | None = None
    reason: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def record(
    conn: Connection,
    *,
    org_id: str,
    actor: str | None,
    action: str,
    target_type: str,
    target_name: str,
    from_status: str | None = None,
    to_status: str | None = None,
    reason: str | None = None,
) -> None:
    """Append one event within the current transaction of `conn`."""
    conn.execute(
        "INSERT INTO audit_events (at, org_id, actor, action, target_type, target_name,"
        " from_status, to_status, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            now_iso(),
            org_id,
            actor,
            action,
            target_type,
            target_name,
            from_status,
            to_status,
            reason,
        ),
    )


def list_events(store: ControlStore, org_id: str, *, limit: int | None = None) -> list[AuditEvent]:
    """The org's events, oldest first (the newest `limit` when given)."""
    sql = "SELECT * FROM audit_events WHERE org_id = ? ORDER BY id DESC"
    params: tuple = (org_id,)
    if limit is not None:
        sql += " LIMIT ?"
        params += (limit,)
    rows = store.query(sql, params)
    return [AuditEvent(**dict(row)) for row in reversed(rows)]


def page(
    store: ControlStore, org_id: str, *, after: int | None = None, limit: int = 100
) -> list[AuditEvent]:
    """One page of the org's events, oldest first: after the cursor `after` (an event id),
    or the newest `limit` events."""
    if after is not None:
        rows = store.query(
            "SELECT * FROM audit_events WHERE org_id = ? AND id > ? ORDER BY id LIMIT ?",
            (org_id, after, limit),
        )
        return [AuditEvent(**dict(row)) for row in rows]
    return list_events(store, org_id, limit=limit)
