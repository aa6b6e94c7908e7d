"""policy_decision rows: a batching writer for the proxy, a reader for `capgate decisions`.

`DecisionWriter.record()` only appends to an in-memory queue; a background thread with its
own SQLite connection writes batches (every FLUSH_INTERVAL_S or FLUSH_ROWS rows, and on
`close()`), so the request path never waits on the disk.
"""

from __future__ import annotations

import collections
import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from . import chain
from .audit import read_head, write_head
from .store import ControlStore, connect, immediate
from .types import PolicyDecision

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.2
FLUSH_ROWS = 500
MAX_QUEUED = 100_000
_STOP = object()


class DecisionWriter:
    """Batches PolicyDecision rows into control.db off the hot path. Thread-safe.

    `record` only appends to a deque (atomic under the GIL; no lock, no thread wake-up):
    the writer thread drains it every FLUSH_INTERVAL_S, or as soon as a full batch is
    waiting, and once more on `close`.
    """

    def __init__(self, control_db: Path) -> None:
        self._path = control_db
        self._rows: collections.deque[PolicyDecision] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="capgate-decisions", daemon=True)
        self._thread.start()

    def record(self, decision: PolicyDecision) -> None:
        """Queue one row; never blocks. Rows beyond MAX_QUEUED are counted and dropped."""
        queued = len(self._rows)
        if queued >= MAX_QUEUED:
            self.dropped += 1
            return
        self._rows.append(decision)
        if queued + 1 == FLUSH_ROWS:
            self._wake.set()

    def close(self) -> None:
        """Write every queued row and stop the thread."""
        if self._thread.is_alive():
            self._stopping = True
            self._wake.set()
            self._thread.join()

    def _run(self) -> None:
        conn = connect(self._path)
        try:
            while not self._stopping:
                self._wake.wait(FLUSH_INTERVAL_S)
                self._wake.clear()
                self._drain(conn)
            self._drain(conn)  # rows recorded before close() returned
        finally:
            conn.close()

    def _drain(self, conn: sqlite3.Connection) -> None:
        while self._rows:
            batch = []
            while self._rows and len(batch) < FLUSH_ROWS:
                batch.append(self._rows.popleft())
            self._write(conn, batch)

    def _write(self, conn: sqlite3.Connection, batch: list[PolicyDecision]) -> None:
        try:
            with immediate(conn):
                write_chained(conn, batch)
        except sqlite3.Error as exc:
            log.error("could not write %d policy decisions: %s", len(batch), exc)


def write_chained(conn: sqlite3.Connection, batch: list[PolicyDecision]) -> None:
    """Insert `batch` linked into each org's decisions chain, inside the caller's write
    transaction: the heads are read and moved under the same lock, so any number of
    processes writing to one store produce one chain per org."""
    next_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM policy_decisions").fetchone()[0]
    heads: dict[str, chain.Head] = {}
    params = []
    for offset, decision in enumerate(batch):
        org_key = decision.org_id or chain.NO_ORG
        head = heads.get(org_key)
        if head is None:
            head = read_head(conn, org_key, "decisions")
        fields = row_fields(next_id + offset, head.seq + 1, decision)
        link = chain.link(head.chain, fields)
        heads[org_key] = chain.Head(head.seq + 1, link)
        params.append(_params(fields, link))
    conn.executemany(_INSERT, params)
    for org_key, head in heads.items():
        write_head(conn, org_key, "decisions", head)


_FIELDS = (
    "id",
    "seq",
    "at",
    "org_id",
    "workspace_id",
    "capability",
    "decision",
    "reason",
    "method",
    "scheme",
    "host",
    "port",
    "path",
    "transforms_applied",
    "transforms_failed",
    "auth_failures",
    "upstream_status",
    "duration_ms",
)
_JSON_FIELDS = frozenset({"transforms_applied", "transforms_failed", "auth_failures"})
_INSERT = (
    f"INSERT INTO policy_decisions ({', '.join(_FIELDS)}, chain)"
    f" VALUES ({', '.join('?' * (len(_FIELDS) + 1))})"
)


def _opt(kind: type, value: object) -> object:
    return None if value is None else kind(value)


def row_fields(row_id: int, seq: int, d: PolicyDecision) -> dict:
    """The row as it reads back from the store (and as export prints it), without `chain`.

    Values take the column types here (`at` a float, `port` an int, ...), so the JSON
    hashed now is the JSON recomputed from the stored row later.
    """
    return {
        "id": row_id,
        "seq": seq,
        "at": float(d.at),
        "org_id": _opt(str, d.org_id),
        "workspace_id": _opt(str, d.workspace_id),
        "capability": _opt(str, d.capability),
        "decision": str(d.decision),
        "reason": _opt(str, d.reason),
        "method": str(d.method),
        "scheme": str(d.scheme),
        "host": str(d.host),
        "port": int(d.port),
        "path": str(d.path),
        "transforms_applied": [str(t) for t in d.transforms_applied],
        "transforms_failed": {str(k): str(v) for k, v in d.transforms_failed.items()},
        "auth_failures": {str(k): str(v) for k, v in d.auth_failures.items()},
        "upstream_status": _opt(int, d.upstream_status),
        "duration_ms": _opt(float, d.duration_ms),
    }


def _params(fields: dict, link: str) -> tuple:
    return (
        *(
            json.dumps(fields[name], sort_keys=True) if name in _JSON_FIELDS else fields[name]
            for name in _FIELDS
        ),
        link,
    )


@dataclass(frozen=True)
class StoredDecision:
    """A policy_decision row as read back: its row id and the decision."""

    id: int
    decision: PolicyDecision
    seq: int | None = None  # None: written before the chain started
    chain: str | None = None

    def to_json(self) -> dict:
        """The row's fields: with `seq` and `chain`, exactly what the chain hashes."""
        d = self.decision
        return {
            "id": self.id,
            "seq": self.seq,
            **{k: getattr(d, k) for k in d.__dataclass_fields__},
            "transforms_applied": list(d.transforms_applied),
            "transforms_failed": dict(d.transforms_failed),
            "auth_failures": dict(d.auth_failures),
            "chain": self.chain,
        }


def list_decisions(
    store: ControlStore,
    org_id: str | None,
    *,
    workspace_id: str | None = None,
    since_id: int | None = None,
    limit: int | None = None,
) -> list[StoredDecision]:
    """Rows oldest first; `org_id` None means rows of no org (failed proxy auth) too.

    With `limit`, the newest `limit` rows after `since_id` (for `--follow`, pass the last
    id seen as `since_id` and no limit).
    """
    where, params = ["1 = 1"], []
    if org_id is not None:
        where.append("org_id = ?")
        params.append(org_id)
    if workspace_id is not None:
        where.append("workspace_id = ?")
        params.append(workspace_id)
    if since_id is not None:
        where.append("id > ?")
        params.append(since_id)
    sql = f"SELECT * FROM policy_decisions WHERE {' AND '.join(where)} ORDER BY id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [_stored(r) for r in reversed(store.query(sql, tuple(params)))]


def _stored(row: sqlite3.Row) -> StoredDecision:
    decision = PolicyDecision(
        at=row["at"],
        org_id=row["org_id"],
        workspace_id=row["workspace_id"],
        capability=row["capability"],
        decision=row["decision"],
        reason=row["reason"],
        method=row["method"],
        scheme=row["scheme"],
        host=row["host"],
        port=row["port"],
        path=row["path"],
        transforms_applied=tuple(json.loads(row["transforms_applied"] or "[]")),
        transforms_failed=json.loads(row["transforms_failed"] or "{}"),
        auth_failures=json.loads(row["auth_failures"] or "{}"),
        upstream_status=row["upstream_status"],
        duration_ms=row["duration_ms"],
    )
    return StoredDecision(row["id"], decision, row["seq"], row["chain"])
