"""policy_decision rows: a batching writer for the proxy, a reader for `capgate decisions`.

`DecisionWriter.record()` only appends to an in-memory queue; a background thread with its
own SQLite connection writes batches (every FLUSH_INTERVAL_S or FLUSH_ROWS rows, and on
`close()`), so the request path never waits on the disk. The queue is bounded: when the
disk cannot keep up, rows beyond MAX_QUEUED are dropped, counted (`dropped`) and reported
by a warning the first time and then at most every DROP_WARNING_INTERVAL_S.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import chain, metrics
from .audit import read_head, write_head
from .engine import DatabaseError, OperationalError
from .store import Connection, ControlStore, StoreRow, connect, immediate
from .types import PolicyDecision

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.2
FLUSH_ROWS = 500
MAX_QUEUED = 100_000
# The writer's own lock wait: past it a batch counts as failed (and is retried), so a
# store held locked shows as "not writable" within seconds, not after the CLI's 10 s.
WRITE_BUSY_TIMEOUT_MS = 2_000
RETRY_MIN_S = 0.1
RETRY_MAX_S = 5.0
CLOSE_RETRY_S = 5.0  # how long close() keeps retrying rows the store refuses
FAILURE_LOG_EVERY_S = 10.0
DROP_WARNING_INTERVAL_S = 60.0


class DecisionWriter:
    """Batches PolicyDecision rows into control.db off the hot path. Thread-safe.

    `record` only appends to a deque (atomic under the GIL; no lock, no thread wake-up):
    the writer thread drains it every FLUSH_INTERVAL_S, or as soon as a full batch is
    waiting, and once more on `close`.

    When the store refuses a batch (locked past WRITE_BUSY_TIMEOUT_MS, disk full, file
    unreadable) the batch is kept and retried first, in order, with backoff doubling from
    RETRY_MIN_S to RETRY_MAX_S; meanwhile `writable()` is False (the proxy's
    --audit-fail-closed refuses requests then), new rows queue up to MAX_QUEUED, and every
    failure and lost row is counted (broker/metrics.py) and logged.
    """

    def __init__(
        self,
        control_db: Path | Callable[[], Connection],
        *,
        max_queued: int = MAX_QUEUED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`control_db`: the SQLite file, or how to open the writer's own connection (a
        PostgreSQL store: `ControlStore.connect_again`)."""
        self._path = control_db
        self._rows: collections.deque[PolicyDecision] = collections.deque()
        self._pending: list[PolicyDecision] = []  # a refused batch, retried before new rows
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stopping = False
        self._max_queued = max_queued
        self._clock = clock
        self._dropped = 0
        self._dropped_warned = 0  # the count at the last warning
        self._next_warning = 0.0  # clock time before which no further warning is logged
        self._failing_since: float | None = None
        self._last_failure_log = 0.0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="capgate-decisions", daemon=True)
        metrics.watch_writer(self)
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
            metrics.DECISION_ROWS_DROPPED.inc()
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

    def writable(self) -> bool:
        """False from a refused write until the next write succeeds, and while the queue
        is full (rows are being dropped)."""
        return self._failing_since is None and len(self._rows) < self._max_queued

    def queue_depth(self) -> int:
        """Rows not yet written: queued, and a batch the store refused (being retried)."""
        return len(self._rows) + len(self._pending)

    def close(self) -> None:
        """Write every queued row and stop the thread (giving up on rows the store still
        refuses after CLOSE_RETRY_S, which are counted as dropped and logged)."""
        if self._thread.is_alive():
            self._stopping = True
            self._stop.set()
            self._wake.set()
            self._thread.join()

    def _run(self) -> None:
        conn: Connection | None = None
        backoff = 0.0
        give_up_at: float | None = None
        try:
            while True:
                if give_up_at is not None:  # closing, and the last drain was refused
                    time.sleep(min(backoff, max(0.0, give_up_at - time.monotonic())))
                elif backoff:
                    self._stop.wait(backoff)  # not cut short by new rows: back off
                elif not self._stopping:
                    self._wake.wait(FLUSH_INTERVAL_S)
                    self._wake.clear()
                conn, ok = self._drain(conn)
                backoff = 0.0 if ok else min(max(backoff * 2, RETRY_MIN_S), RETRY_MAX_S)
                if self._stopping:
                    if give_up_at is None:
                        give_up_at = time.monotonic() + CLOSE_RETRY_S
                    if ok or time.monotonic() >= give_up_at:
                        break
        finally:
            lost = self.queue_depth()
            if lost:
                self._dropped += lost
                metrics.DECISION_ROWS_DROPPED.inc(lost)
                log.error("%d policy decisions could not be written and are lost", lost)
            if conn is not None:
                conn.close()
            metrics.forget_writer(self)

    def _connect(self) -> Connection:
        conn = self._path() if callable(self._path) else connect(self._path)
        if isinstance(conn, sqlite3.Connection):  # PostgreSQL's writers queue on a lock
            conn.execute(f"PRAGMA busy_timeout = {WRITE_BUSY_TIMEOUT_MS}")
        return conn

    def _drain(self, conn: Connection | None) -> tuple[Connection | None, bool]:
        """Write everything queued, oldest first; stop at the first refused batch."""
        while self._pending or self._rows:
            batch = self._pending
            while self._rows and len(batch) < FLUSH_ROWS:
                batch.append(storable(self._rows.popleft()))
            self._pending = batch
            try:
                if conn is None:
                    conn = self._connect()
                with immediate(conn):
                    write_chained(conn, batch)
            except Exception as exc:  # the thread must survive anything: retried, counted
                self._failed(exc)
                if conn is not None and conn.in_transaction:  # a COMMIT that failed
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if conn is not None and not isinstance(exc, OperationalError):
                    conn.close()  # reopen next time: the file or connection may be broken
                    conn = None
                return conn, False
            self._pending = []
            metrics.DECISION_ROWS_WRITTEN.inc(len(batch))
            self._recovered()
        return conn, True

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        metrics.DECISION_WRITE_FAILURES.inc()
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if self._failing_since == now or now - self._last_failure_log >= FAILURE_LOG_EVERY_S:
            self._last_failure_log = now
            # sqlite3 and OS errors name the condition ("database is locked", "disk I/O
            # error"); anything else is named by its type only, its text could hold a row.
            shown = exc if isinstance(exc, (*DatabaseError, OSError)) else type(exc).__name__
            log.error(
                "cannot write policy decisions (%s): %d rows waiting, %d dropped; retrying",
                shown,
                self.queue_depth(),
                self.dropped,
            )

    def _recovered(self) -> None:
        if self._failing_since is not None:
            log.warning(
                "policy decisions are being written again (after %.1f s, %d failed attempts)",
                time.monotonic() - self._failing_since,
                self.failures,
            )
            self._failing_since = None


_TEXT_FIELDS = (
    "org_id",
    "workspace_id",
    "capability",
    "reason",
    "method",
    "scheme",
    "host",
    "path",
)


def storable(decision: PolicyDecision) -> PolicyDecision:
    """The row with every text field encodable as UTF-8: a lone surrogate (how mitmproxy
    keeps a raw 0xFF of an HTTP/2 `:path`) becomes `\\udcff`. Without this one such row
    could never be written or chained, and a writer that retries a refused batch would
    retry it forever: no later request of any org would be audited."""
    changes: dict[str, str] = {}
    for name in _TEXT_FIELDS:
        value = getattr(decision, name)
        if isinstance(value, str) and not value.isascii():
            safe = value.encode("utf-8", "backslashreplace").decode("utf-8")
            if safe != value:
                changes[name] = safe
    return dataclasses.replace(decision, **changes) if changes else decision  # type: ignore[arg-type]


def write_chained(conn: Connection, batch: list[PolicyDecision]) -> None:
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
_INSERT = (
    f"INSERT INTO policy_decisions ({', '.join(_FIELDS)}, chain)"
    f" VALUES ({', '.join('?' * (len(_FIELDS) + 1))})"
)


def row_fields(row_id: int, seq: int, d: PolicyDecision) -> dict:
    """The row as it reads back from the store (and as export prints it), without `chain`.

    Values take the column types here (`at` a float, `port` an int, ...), so the JSON
    hashed now is the JSON recomputed from the stored row later.
    """
    return {
        "id": row_id,
        "seq": seq,
        "at": float(d.at),
        "org_id": d.org_id,
        "workspace_id": d.workspace_id,
        "capability": d.capability,
        "decision": str(d.decision),
        "reason": d.reason,
        "method": d.method,
        "scheme": d.scheme,
        "host": d.host,
        "port": int(d.port),
        "path": d.path,
        "transforms_applied": list(d.transforms_applied),
        "transforms_failed": dict(d.transforms_failed),
        "auth_failures": dict(d.auth_failures),
        "upstream_status": None if d.upstream_status is None else int(d.upstream_status),
        "duration_ms": None if d.duration_ms is None else float(d.duration_ms),
    }


_COLUMN_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def _params(f: dict, link: str) -> tuple:
    """The INSERT's parameters, in _FIELDS order, then `chain`."""
    return (
        f["id"],
        f["seq"],
        f["at"],
        f["org_id"],
        f["workspace_id"],
        f["capability"],
        f["decision"],
        f["reason"],
        f["method"],
        f["scheme"],
        f["host"],
        f["port"],
        f["path"],
        _COLUMN_JSON(f["transforms_applied"]),
        _COLUMN_JSON(f["transforms_failed"]),
        _COLUMN_JSON(f["auth_failures"]),
        f["upstream_status"],
        f["duration_ms"],
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


def _stored(row: StoreRow) -> StoredDecision:
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
