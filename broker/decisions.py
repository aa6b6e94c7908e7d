"""policy_decision rows: a batching writer for the proxy, a reader for `capgate decisions`.

`DecisionWriter.record()` only appends to an in-memory queue; a background thread with its
own SQLite connection writes batches (every FLUSH_INTERVAL_S or FLUSH_ROWS rows, and on
`close()`), so the request path never waits on the disk. The queue is bounded: when the
disk cannot keep up, rows beyond MAX_QUEUED are dropped, counted (`dropped`) and reported
by a warning the first time and then at most every DROP_WARNING_INTERVAL_S.
"""

from __future__ import annotations

import collections
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .engine import DatabaseError
from .store import Connection, ControlStore, connect, immediate
from .types import PolicyDecision

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.2
FLUSH_ROWS = 500
MAX_QUEUED = 100_000
DROP_WARNING_INTERVAL_S = 60.0


class DecisionWriter:
    """Batches PolicyDecision rows into control.db off the hot path. Thread-safe.

    `record` only appends to a deque (atomic under the GIL; no lock, no thread wake-up):
    the writer thread drains it every FLUSH_INTERVAL_S, or as soon as a full batch is
    waiting, and once more on `close`.
    """

    def __init__(
        self,
        control_db: Path | Callable[[], Connection],
        *,
        max_queued: int = MAX_QUEUED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`control_db`: the SQLite file, or how to open the writer's own connection."""
        self._connect = control_db if callable(control_db) else partial(connect, control_db)
        self._rows: collections.deque[PolicyDecision] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._max_queued = max_queued
        self._clock = clock
        self._dropped = 0
        self._dropped_warned = 0  # the count at the last warning
        self._next_warning = 0.0  # clock time before which no further warning is logged
        self._thread = threading.Thread(target=self._run, name="capgate-decisions", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """How many rows were dropped because the queue was full, since the writer started."""
        return self._dropped

    @property
    def queued(self) -> int:
        """Rows waiting for the writer thread."""
        return len(self._rows)

    def record(self, decision: PolicyDecision) -> None:
        """Queue one row; never blocks. Rows beyond the queue bound are counted and dropped."""
        queued = len(self._rows)
        if queued >= self._max_queued:
            self._dropped += 1
            self._warn_dropped()
            return
        self._rows.append(decision)
        if queued + 1 == FLUSH_ROWS:
            self._wake.set()

    def _warn_dropped(self) -> None:
        """The first drop, then at most one warning per interval (counts only, no row)."""
        now = self._clock()
        if self._dropped_warned and now < self._next_warning:
            return
        self._next_warning = now + DROP_WARNING_INTERVAL_S
        log.warning(
            "policy decision queue full (%d rows waiting for the disk): dropped %d rows "
            "(%d in total); the decision log is incomplete",
            self._max_queued,
            self._dropped - self._dropped_warned,
            self._dropped,
        )
        self._dropped_warned = self._dropped

    def close(self) -> None:
        """Write every queued row and stop the thread."""
        if self._thread.is_alive():
            self._stopping = True
            self._wake.set()
            self._thread.join()

    def _run(self) -> None:
        conn = self._connect()
        try:
            while not self._stopping:
                self._wake.wait(FLUSH_INTERVAL_S)
                self._wake.clear()
                self._drain(conn)
            self._drain(conn)  # rows recorded before close() returned
        finally:
            conn.close()

    def _drain(self, conn: Connection) -> None:
        while self._rows:
            batch: list[PolicyDecision] = []
            while self._rows and len(batch) < FLUSH_ROWS:
                batch.append(self._rows.popleft())
            self._write(conn, batch)

    def _write(self, conn: Connection, batch: list[PolicyDecision]) -> None:
        try:
            with immediate(conn):
                conn.executemany(_INSERT, [_params(d) for d in batch])
        except DatabaseError as exc:
            log.error("could not write %d policy decisions: %s", len(batch), exc)


_COLUMNS = (
    "at, org_id, workspace_id, capability, decision, reason, method, scheme, host, port, path,"
    " transforms_applied, transforms_failed, auth_failures, upstream_status, duration_ms"
)
_INSERT = f"INSERT INTO policy_decisions ({_COLUMNS}) VALUES ({', '.join('?' * 16)})"


def _params(d: PolicyDecision) -> tuple:
    return (
        d.at,
        d.org_id,
        d.workspace_id,
        d.capability,
        str(d.decision),
        d.reason,
        d.method,
        d.scheme,
        d.host,
        d.port,
        d.path,
        json.dumps(list(d.transforms_applied)),
        json.dumps(dict(d.transforms_failed), sort_keys=True),
        json.dumps(dict(d.auth_failures), sort_keys=True),
        d.upstream_status,
        d.duration_ms,
    )


@dataclass(frozen=True)
class StoredDecision:
    """A policy_decision row as read back: its row id and the decision."""

    id: int
    decision: PolicyDecision

    def to_json(self) -> dict:
        d = self.decision
        return {
            "id": self.id,
            **{k: getattr(d, k) for k in d.__dataclass_fields__},
            "transforms_applied": list(d.transforms_applied),
            "transforms_failed": dict(d.transforms_failed),
            "auth_failures": dict(d.auth_failures),
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
    where: list[str] = ["1 = 1"]
    params: list[str | int] = []
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
    return StoredDecision(row["id"], decision)


def page(
    store: ControlStore,
    org_id: str,
    *,
    workspace_id: str | None = None,
    user_id: str | None = None,
    after: int | None = None,
    limit: int = 100,
) -> list[StoredDecision]:
    """One page of the org's decisions, oldest first (newest last).

    With `after` (a row id: the cursor), the `limit` rows that follow it; without, the
    newest `limit` rows. `user_id` keeps only decisions of that user's workspaces.
    """
    where: list[str] = ["org_id = ?"]
    params: list[str | int] = [org_id]
    if workspace_id is not None:
        where.append("workspace_id = ?")
        params.append(workspace_id)
    if user_id is not None:
        where.append("workspace_id IN (SELECT id FROM workspaces WHERE user_id = ?)")
        params.append(user_id)
    if after is not None:
        where.append("id > ?")
        params.append(after)
    order = "ASC" if after is not None else "DESC"
    sql = f"SELECT * FROM policy_decisions WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT ?"
    rows = store.query(sql, (*params, limit))
    stored = [_stored(r) for r in rows]
    return stored if after is not None else list(reversed(stored))
