"""Audit events: who created, changed or deleted a credential, secret, user or workspace.

Rows name the target and, for status transitions, the from/to status and a reason code;
they never hold a value. `record` runs inside the caller's write transaction, so the
event commits if and only if the change does, and it links the event into the org's
audit hash chain there (chain.py): the transaction is BEGIN IMMEDIATE, so processes
writing at once take turns and the chain stays one line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from . import chain
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
    seq: int | None = None  # None: written before the chain started
    chain: str | None = None

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
    """Append one event, linked into the org's chain, within the current transaction of
    `conn` (which must be a write transaction: the chain head is read and moved in it)."""
    head = read_head(conn, org_id, "audit")
    row_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM audit_events").fetchone()[0]
    event = AuditEvent(
        id=row_id,
        at=now_iso(),
        org_id=org_id,
        actor=actor,
        action=action,
        target_type=target_type,
        target_name=target_name,
        from_status=from_status,
        to_status=to_status,
        reason=reason,
        seq=head.seq + 1,
    )
    fields = event.to_json()
    fields["chain"] = chain.link(head.chain, fields)
    conn.execute(
        f"INSERT INTO audit_events ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})",
        tuple(fields.values()),
    )
    write_head(conn, org_id, "audit", chain.Head(fields["seq"], fields["chain"]))


def read_head(conn: Connection, org_key: str, kind: str) -> chain.Head:
    """The last link of one chain (inside the write transaction that continues it)."""
    row = conn.execute(
        "SELECT seq, chain FROM chain_heads WHERE org_key = ? AND kind = ?", (org_key, kind)
    ).fetchone()
    return chain.Head(row[0], row[1]) if row else chain.Head()


def write_head(conn: Connection, org_key: str, kind: str, head: chain.Head) -> None:
    conn.execute(
        "INSERT INTO chain_heads (org_key, kind, seq, chain, started_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (org_key, kind) DO UPDATE SET seq = excluded.seq, chain = excluded.chain",
        (org_key, kind, head.seq, head.chain, now_iso()),
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
