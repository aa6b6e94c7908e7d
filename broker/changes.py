"""The cross-process change signal: a counter bumped by every change that caches depend on.

Writers call `bump(store, conn)` inside the same transaction as the change (credential, secret,
workspace or token), so the counter moves exactly when the change commits. Readers call
`ChangeWatcher.generation()` per request.

SQLite: it asks `PRAGMA data_version` (which moves when another connection commits) and
re-reads the counter only then, or after this process itself bumped it (data_version
ignores a connection's own commits).

PostgreSQL (`PgChangeWatcher`): no network round trip per request. The bump also sends
`NOTIFY capgate_changes` (delivered at commit); a listener thread with its own
connection keeps a local copy of the generation, and re-reads it every HEARTBEAT_S as a
heartbeat that also covers a lost notification. When the listener's connection drops or
its last heartbeat is older than STALE_AFTER_S, `generation()` falls back to reading the
counter from the store on every call until the listener is back: a change is never
missed for longer than STALE_AFTER_S, and fails closed (a read error propagates).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time

import psycopg

from .engine import PgConnection
from .pgstore import CHANGES_CHANNEL
from .store import Connection, ControlStore

log = logging.getLogger("capgate.broker.changes")

HEARTBEAT_S = 0.5
STALE_AFTER_S = 2.0
RECONNECT_S = 0.5


def bump(store: ControlStore, conn: Connection) -> None:
    """Advance the generation; call inside `store.write()`, the transaction of the change."""
    conn.execute("UPDATE changes SET generation = generation + 1 WHERE id = 1")
    if isinstance(conn, PgConnection):
        conn.execute(
            "SELECT pg_notify(?, (SELECT generation FROM changes WHERE id = 1)::text)",
            (CHANGES_CHANNEL,),
        )
    # A rolled-back bump only costs watchers of this process one extra read.
    store.local_changes += 1


def read_generation(conn: Connection) -> int:
    row = conn.execute("SELECT generation FROM changes WHERE id = 1").fetchone()
    assert row is not None
    return int(row[0])


class ChangeWatcher:
    """A cheap view of the store's generation for one process (thread-safe)."""

    def __init__(self, store: ControlStore) -> None:
        self._store = store
        self._data_version = -1
        self._local = -1
        self._generation = 0

    @classmethod
    def for_store(cls, store: ControlStore) -> ChangeWatcher | PgChangeWatcher:
        return PgChangeWatcher(store) if isinstance(store.conn, PgConnection) else cls(store)

    def generation(self) -> int:
        """The current generation; different after any relevant commit in any process."""
        store = self._store
        with store.lock:  # the bare lock: this runs per request, a context manager costs µs
            conn = store.conn
            assert isinstance(conn, sqlite3.Connection)
            data_version = conn.execute("PRAGMA data_version").fetchone()[0]
            if data_version != self._data_version or store.local_changes != self._local:
                self._local = store.local_changes
                self._data_version = data_version
                self._generation = read_generation(conn)
            return self._generation

    def close(self) -> None:
        pass


class PgChangeWatcher:
    """The generation of a PostgreSQL store, kept current by LISTEN/NOTIFY (see above)."""

    def __init__(self, store: ControlStore) -> None:
        assert isinstance(store.conn, PgConnection)
        self._store = store
        self._url = store.conn.url
        self._generation = 0
        self._local = -1
        self._last_ok = float("-inf")  # monotonic time of the listener's last good read
        self._listening = False
        self._stop = threading.Event()
        self._conn: psycopg.Connection | None = None
        self.fallback_reads = 0  # generation() calls that had to ask the store
        self._thread = threading.Thread(
            target=self._listen, name="capgate-changes-listener", daemon=True
        )
        self._thread.start()

    def generation(self) -> int:
        store = self._store
        fresh = self._listening and time.monotonic() - self._last_ok < STALE_AFTER_S
        if fresh and store.local_changes == self._local:
            return self._generation
        with store.lock:
            local = store.local_changes
            current = read_generation(store.conn)
        if not fresh:
            self.fallback_reads += 1
        self._local = local
        self._advance(current)
        return self._generation

    def _advance(self, value: int) -> None:
        if value > self._generation:  # generations only grow
            self._generation = value

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._url,
                    autocommit=True,
                    application_name="capgate-changes",
                    connect_timeout=5,
                    tcp_user_timeout=int(STALE_AFTER_S * 1000),
                ) as conn:
                    self._conn = conn
                    conn.execute(f"LISTEN {CHANGES_CHANNEL}")  # before the read: none lost
                    self._heartbeat(conn)
                    self._listening = True
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=HEARTBEAT_S):
                            with contextlib.suppress(ValueError):
                                self._advance(int(note.payload))
                        self._heartbeat(conn)
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    log.warning(
                        "change listener lost its connection (%s); reading the "
                        "generation per request until it is back",
                        type(exc).__name__,
                    )
            finally:
                self._listening = False
                self._conn = None
            self._stop.wait(RECONNECT_S)

    def _heartbeat(self, conn: psycopg.Connection) -> None:
        row = conn.execute("SELECT generation FROM changes WHERE id = 1").fetchone()
        assert row is not None
        self._advance(int(row[0]))
        self._last_ok = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.cancel_safe()
        self._thread.join(timeout=5)
