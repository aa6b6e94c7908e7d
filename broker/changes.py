"""The cross-process change signal: a counter bumped by every change that caches depend on.

Writers call `bump(store, conn)` inside the same transaction as the change (credential, secret,
workspace or token), so the counter moves exactly when the change commits. Readers call
`ChangeWatcher.generation()` per request: it asks SQLite's `PRAGMA data_version`
(which moves when another connection commits) and re-reads the counter only then, or
after this process itself bumped it (data_version ignores a connection's own commits).
"""

from __future__ import annotations

import sqlite3

from .store import ControlStore


def bump(store: ControlStore, conn: sqlite3.Connection) -> None:
    """Advance the generation; call inside `store.write()`, the transaction of the change."""
    conn.execute("UPDATE changes SET generation = generation + 1 WHERE id = 1")
    # A rolled-back bump only costs watchers of this process one extra read.
    store.local_changes += 1


def read_generation(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT generation FROM changes WHERE id = 1").fetchone()[0]


class ChangeWatcher:
    """A cheap view of the store's generation for one process (thread-safe)."""

    def __init__(self, store: ControlStore) -> None:
        self._store = store
        self._data_version = -1
        self._local = -1
        self._generation = 0

    def generation(self) -> int:
        """The current generation; different after any relevant commit in any process."""
        store = self._store
        with store.lock:  # the bare lock: this runs per request, a context manager costs µs
            conn = store.conn
            data_version = conn.execute("PRAGMA data_version").fetchone()[0]
            if data_version != self._data_version or store.local_changes != self._local:
                self._local = store.local_changes
                self._data_version = data_version
                self._generation = read_generation(conn)
            return self._generation
