"""The control store: one SQLite file (WAL), or a PostgreSQL database, holding rows and
references, never a value.

`ControlStore` owns one connection (safe to share between threads: every use holds its
lock), applies migrations on open, and offers `read()` / `write()` blocks. `write()` is
`BEGIN IMMEDIATE`, so the proxy and the CLI may write at the same time and simply queue
on the busy timeout. Schema changes are migrations: append a function to MIGRATIONS; a
newer capgate upgrades an older home in place when it opens it.

On PostgreSQL (`home.store_url`), the connection is an `engine.PgConnection` speaking the
same SQL, `write()` is a transaction behind one advisory lock (BEGIN IMMEDIATE's twin),
migrations are `pgstore.PG_MIGRATIONS` (one twin per SQLite migration, same numbering)
and credential locks are advisory locks (pgstore.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from . import engine, pgstore
from .engine import PgConnection, is_postgres_url
from .errors import CapgateError, FieldError, InvalidInput, NotFound
from .home import Home, now_iso

# A store connection: sqlite3's, or the PostgreSQL wrapper speaking the same interface;
# and the rows they return (both readable by index and by column name).
Connection = sqlite3.Connection | PgConnection
StoreRow = sqlite3.Row | engine.Row

BUSY_TIMEOUT_MS = 10_000
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


# The org id that commands reading a never-created org act on: it matches no row (real ids
# are `org_` + 16 hex digits), so the org reads as empty and is not created by a read.
ABSENT_ORG = "org_absent"


def new_id(prefix: str) -> str:
    """A random, unguessable row id such as `cred_3f9a0c...`."""
    return f"{prefix}_{secrets.token_hex(8)}"


def check_name(field: str, value: str) -> None:
    """Raise InvalidInput unless `value` is a plain name (letters, digits, . _ @ -)."""
    if not NAME_PATTERN.match(value or ""):
        raise InvalidInput(
            [FieldError(field, "must be 1-128 letters, digits, '.', '_', '@' or '-'")]
        )


def connect(path: Path) -> sqlite3.Connection:
    """Open a SQLite file in WAL mode with a busy timeout; autocommit, explicit BEGINs.

    A new file is created with mode 0600 first; SQLite gives its -wal and -shm files the
    same mode. An existing file is never opened outside SQLite: closing such a descriptor
    would drop the POSIX locks of this process's other connections (a known way to
    corrupt a SQLite database).
    """
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # created meanwhile by another process
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


@contextmanager
def immediate(conn: Connection) -> Iterator[Connection]:
    """A write transaction taken up front (BEGIN IMMEDIATE); rolled back on any error.

    On PostgreSQL: a transaction that first takes the store's write lock."""
    if isinstance(conn, PgConnection):
        with pgstore.write_transaction(conn) as pg:
            yield pg
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# --- migrations ---------------------------------------------------------------------


def _v1_core(db: sqlite_utils.Database) -> None:
    """Orgs, users, credentials, secrets, workspaces, agent tokens, audit events."""
    db.table("orgs").create({"id": str, "name": str, "created_at": str}, pk="id", not_null={"name"})
    db.table("orgs").create_index(["name"], unique=True)
    db.table("users").create(
        {"id": str, "org_id": str, "name": str, "operator": int, "created_at": str},
        pk="id",
        not_null={"org_id", "name", "operator"},
        foreign_keys=[("org_id", "orgs", "id")],
    )
    db.table("users").create_index(["org_id", "name"], unique=True)
    db.table("credentials").create(
        {
            "id": str,
            "org_id": str,
            "name": str,
            "user_id": str,
            "provider": str,
            "kind": str,
            "scopes": str,  # JSON list
            "durable_ref": str,
            "provider_config": str,  # JSON object of non-secret settings
            "status": str,
            "last_minted_at": str,
            "last_minted_status": str,
            "allow_user_override": int,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"org_id", "name", "provider", "kind", "status", "allow_user_override"},
        foreign_keys=[("org_id", "orgs", "id"), ("user_id", "users", "id")],
    )
    # One org row and at most one row per user for each (org, name).
    db.execute(
        "CREATE UNIQUE INDEX idx_credentials_scope "
        "ON credentials (org_id, name, coalesce(user_id, ''))"
    )
    db.table("secrets").create(
        {"id": str, "org_id": str, "name": str, "durable_ref": str},
        pk="id",
        not_null={"org_id", "name", "durable_ref"},
        foreign_keys=[("org_id", "orgs", "id")],
    )
    db.table("secrets").add_column("created_at", str)
    db.table("secrets").add_column("updated_at", str)
    db.table("secrets").create_index(["org_id", "name"], unique=True)
    db.table("workspaces").create(
        {
            "id": str,
            "org_id": str,
            "role": str,
            "user_id": str,
            "created_at": str,
            "revoked_at": str,
        },
        pk="id",
        not_null={"org_id", "role", "user_id"},
        foreign_keys=[("org_id", "orgs", "id"), ("user_id", "users", "id")],
    )
    db.table("agent_tokens").create(
        {
            "id": str,
            "workspace_id": str,
            "org_id": str,
            "prefix": str,
            "sha256": str,
            "created_at": str,
            "last_used_at": str,
            "revoked_at": str,
        },
        pk="id",
        not_null={"workspace_id", "org_id", "prefix", "sha256"},
        foreign_keys=[("workspace_id", "workspaces", "id"), ("org_id", "orgs", "id")],
    )
    db.table("agent_tokens").create_index(["prefix"])
    db.table("audit_events").create(
        {
            "id": int,
            "at": str,
            "org_id": str,
            "actor": str,
            "action": str,
            "target_type": str,
            "target_name": str,
            "from_status": str,
            "to_status": str,
            "reason": str,
        },
        pk="id",
        not_null={"at", "org_id", "action"},
    )
    db.table("audit_events").create_index(["org_id", "id"])


def _v2_decisions_and_changes(db: sqlite_utils.Database) -> None:
    """Policy decisions, and the change counter other processes poll."""
    db.table("policy_decisions").create(
        {
            "id": int,
            "at": float,
            "org_id": str,
            "workspace_id": str,
            "capability": str,
            "decision": str,
            "reason": str,
            "method": str,
            "scheme": str,
            "host": str,
            "port": int,
            "path": str,
            "transforms_applied": str,  # JSON list of labels
            "transforms_failed": str,  # JSON object label -> reason
            "auth_failures": str,  # JSON object credential -> reason
            "upstream_status": int,
            "duration_ms": float,
        },
        pk="id",
        not_null={"at", "decision"},
    )
    db.table("policy_decisions").create_index(["org_id", "id"])
    db.table("policy_decisions").create_index(["workspace_id", "id"])
    db.execute("CREATE TABLE changes (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER)")
    db.execute("INSERT INTO changes (id, generation) VALUES (1, 0)")


def _v3_workspace_leases(db: sqlite_utils.Database) -> None:
    """Workspace leases: `expires_at` (ISO text, NULL for no expiry) on workspaces."""
    workspaces = db.table("workspaces")
    if "expires_at" not in workspaces.columns_dict:
        workspaces.add_column("expires_at", str)


def _v4_control_plane(db: sqlite_utils.Database) -> None:
    """The control plane (`capgate serve`): users' emails, API keys, console sign-in links
    and sessions, hosted OAuth consent states. Tokens are stored as SHA-256 only."""
    if "email" not in db.table("users").columns_dict:
        db.table("users").add_column("email", str)
    db.table("api_keys").create(
        {
            "id": str,
            "org_id": str,
            "user_id": str,
            "name": str,
            "prefix": str,
            "sha256": str,
            "created_at": str,
            "expires_at": str,
            "last_used_at": str,
            "revoked_at": str,
        },
        pk="id",
        not_null={"org_id", "user_id", "prefix", "sha256", "created_at"},
        foreign_keys=[("org_id", "orgs", "id"), ("user_id", "users", "id")],
        if_not_exists=True,
    )
    db.table("api_keys").create_index(["prefix"], if_not_exists=True)
    db.table("console_links").create(
        {
            "sha256": str,
            "org_id": str,
            "user_id": str,
            "created_at": str,
            "expires_at": str,
            "used_at": str,
        },
        pk="sha256",
        not_null={"org_id", "user_id", "created_at", "expires_at"},
        foreign_keys=[("org_id", "orgs", "id"), ("user_id", "users", "id")],
        if_not_exists=True,
    )
    db.table("console_sessions").create(
        {
            "sha256": str,
            "org_id": str,
            "user_id": str,
            "created_at": str,
            "expires_at": str,
            "revoked_at": str,
        },
        pk="sha256",
        not_null={"org_id", "user_id", "created_at", "expires_at"},
        foreign_keys=[("org_id", "orgs", "id"), ("user_id", "users", "id")],
        if_not_exists=True,
    )
    db.table("oauth_states").create(
        {
            "sha256": str,
            "org_id": str,
            "credential_id": str,
            "user_id": str,
            "redirect_uri": str,
            "verifier_ref": str,  # the PKCE verifier lives in the vault
            "return_to": str,
            "created_at": str,
            "expires_at": str,
            "used_at": str,
        },
        pk="sha256",
        not_null={"org_id", "credential_id", "user_id", "redirect_uri", "expires_at"},
        if_not_exists=True,
    )


def _v5_hash_chains(db: sqlite_utils.Database) -> None:
    """`seq` and `chain` on decisions and audit events, and each chain's head (chain.py).

    Rows written before this migration keep NULL seq: they are outside the chain. The
    start is recorded: each chain's head row notes when it started and the last row id
    before it, and every existing org's audit chain opens with a `log.chain_start` event.
    """
    from . import audit  # audit imports this module

    for table in ("policy_decisions", "audit_events"):
        db.table(table).add_column("seq", int)
        db.table(table).add_column("chain", str)
    db.execute("CREATE UNIQUE INDEX idx_policy_decisions_chain ON policy_decisions (org_id, seq)")
    db.execute("CREATE UNIQUE INDEX idx_audit_events_chain ON audit_events (org_id, seq)")
    db.execute(
        "CREATE TABLE chain_heads (org_key TEXT NOT NULL, kind TEXT NOT NULL,"
        " seq INTEGER NOT NULL, chain TEXT NOT NULL, started_at TEXT NOT NULL,"
        " started_after_id INTEGER, PRIMARY KEY (org_key, kind))"
    )
    conn = db.conn
    started = now_iso()
    last_decision = conn.execute("SELECT max(id) FROM policy_decisions").fetchone()[0]
    last_event = conn.execute("SELECT max(id) FROM audit_events").fetchone()[0]
    org_keys = [r[0] for r in conn.execute("SELECT id FROM orgs ORDER BY id")]
    for org_key in ["", *org_keys]:  # "": decision rows of no org (failed proxy auth)
        conn.execute(
            "INSERT INTO chain_heads VALUES (?, 'decisions', 0, ?, ?, ?)",
            (org_key, "0" * 64, started, last_decision),
        )
    for org_key in org_keys:
        conn.execute(
            "INSERT INTO chain_heads VALUES (?, 'audit', 0, ?, ?, ?)",
            (org_key, "0" * 64, started, last_event),
        )
        audit.record(
            conn,
            org_id=org_key,
            actor="capgate-migration",
            action="log.chain_start",
            target_type="log",
            target_name="decisions+audit",
        )


Migration = Callable[[sqlite_utils.Database], None]
# Index i upgrades schema version i to i + 1. Append only; never edit a released one.
MIGRATIONS: tuple[Migration, ...] = (
    _v1_core,
    _v2_decisions_and_changes,
    _v3_workspace_leases,
    _v4_control_plane,
    _v5_hash_chains,
)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Bring the database up to len(migrations), each step in its own transaction.

    Safe when two processes open an old home at once: the version is re-read after the
    write lock is taken. Returns the resulting version.
    """
    db = sqlite_utils.Database(conn)
    while True:
        with immediate(conn):
            version = schema_version(conn)
            if version > len(migrations):
                raise CapgateError(
                    f"control store schema version {version} is newer than this capgate "
                    f"supports ({len(migrations)}); upgrade capgate"
                )
            if version == len(migrations):
                return version
            migrations[version](db)
            conn.execute(f"PRAGMA user_version = {version + 1}")


# Every table with an org_id column: an org is unused when none of them names it.
_ORG_TABLES = (
    "users",
    "credentials",
    "secrets",
    "workspaces",
    "agent_tokens",
    "audit_events",
    "policy_decisions",
    "api_keys",
    "console_links",
    "console_sessions",
    "oauth_states",
)


# --- the store ------------------------------------------------------------------------


class ControlStore:
    """The control database of one home, shared by every broker component of a process."""

    def __init__(self, home: Home, conn: Connection, write_conn: Connection | None = None) -> None:
        self.home = home
        self.conn = conn
        self.postgres = isinstance(conn, PgConnection)
        self.db = None if isinstance(conn, PgConnection) else sqlite_utils.Database(conn)
        self.lock = threading.RLock()
        # Writes have a connection and a lock of their own: a write waiting up to the busy
        # timeout for another process's write lock must never hold up a read (the proxy's
        # per-request generation check and lookups run on its event loop).
        self._write_conn = write_conn if write_conn is not None else conn
        self._write_lock = threading.RLock() if write_conn is not None else self.lock
        self._writing = threading.local()  # this thread's open write transaction, if any
        self._pg_locks = (
            pgstore.CredentialLocks(conn.url) if isinstance(conn, PgConnection) else None
        )
        self.local_changes = 0  # bumped by this process; see changes.ChangeWatcher
        self._org_ids: dict[str, str] = {}

    @classmethod
    def open(cls, home: Home) -> ControlStore:
        """Open (creating and migrating if needed) the control store of an initialised home."""
        home.require_initialized()
        url = home.store_url
        if is_postgres_url(url):
            assert url is not None
            pg = pgstore.connect(url, "control")
            try:
                pgstore.migrate(pg, len(MIGRATIONS))
            except BaseException:
                pg.close()
                raise
            return cls(home, pg)
        if url:
            raise CapgateError("the control store URL must be a postgresql:// URL")
        conn = connect(home.control_db)
        try:
            migrate(conn)
            write_conn = connect(home.control_db)
        except BaseException:
            conn.close()
            raise
        return cls(home, conn, write_conn)

    def connect_again(self) -> Connection:
        """A second connection to the same store (the decision writer's own)."""
        if isinstance(self.conn, PgConnection):
            return pgstore.connect(self.conn.url, "control")
        return connect(self.home.control_db)

    def close(self) -> None:
        with self._write_lock:
            if self._write_conn is not self.conn:
                self._write_conn.close()
        with self.lock:
            self.conn.close()
        if self._pg_locks is not None:
            self._pg_locks.close()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """Hold the connection for a consistent read (one statement or a few).

        Inside this thread's own `write()` block, reads go to the write transaction, so
        they see what it wrote."""
        writing = getattr(self._writing, "conn", None)
        if writing is not None:
            yield writing
            return
        with self.lock:
            yield self.conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A BEGIN IMMEDIATE transaction on the write connection (never blocks readers)."""
        with self._write_lock, immediate(self._write_conn) as conn:
            self._writing.conn = conn
            try:
                yield conn
            finally:
                self._writing.conn = None

    def query(self, sql: str, params: tuple | dict = ()) -> list:
        with self.read() as conn:
            return conn.execute(sql, params).fetchall()

    def org_id(self, org: str, *, create: bool = False) -> str:
        """The id of the org named `org`; created on first use when `create` is set."""
        if org in self._org_ids:
            return self._org_ids[org]
        check_name("org", org)
        row = self.query("SELECT id FROM orgs WHERE name = ?", (org,))
        if not row and not create:
            raise NotFound(f"org {org!r} does not exist")
        if not row:
            with self.write() as conn:
                conn.execute(
                    "INSERT OR IGNORE INTO orgs (id, name, created_at) VALUES (?, ?, ?)",
                    (new_id("org"), org, now_iso()),
                )
                row = conn.execute("SELECT id FROM orgs WHERE name = ?", (org,)).fetchall()
        self._org_ids[org] = row[0]["id"]
        return self._org_ids[org]

    def find_org_id(self, org: str) -> str | None:
        """The id of the org named `org`, or None when it does not exist (never creates)."""
        try:
            return self.org_id(org)
        except NotFound:
            return None

    def drop_org_if_unused(self, org_id: str) -> bool:
        """Delete an org row that nothing refers to (undoing an org created by a call that
        was then rejected); True when it was deleted."""
        refs = " AND ".join(
            f"NOT EXISTS (SELECT 1 FROM {table} WHERE org_id = :id)" for table in _ORG_TABLES
        )
        with self.write() as conn:
            done = conn.execute(f"DELETE FROM orgs WHERE id = :id AND {refs}", {"id": org_id})
        self._org_ids = {k: v for k, v in self._org_ids.items() if v != org_id}
        return done.rowcount == 1

    @contextmanager
    def credential_lock(self, credential_id: str, timeout: float | None = None) -> Iterator[None]:
        """An exclusive lock on one credential, across threads and processes.

        Hold it around read-refresh-write of a rotating refresh token so that two proxies
        never spend the same refresh token. Blocking (up to `timeout` seconds, then
        `LockTimeout`; forever when None): async code uses `CredentialLock.try_acquire`
        from the event loop instead. (flock locks belong to the open file, so two threads
        of one process exclude each other too.)
        """
        lock = self.credential_file_lock(credential_id)
        lock.acquire(timeout)
        try:
            yield
        finally:
            lock.release()

    def credential_file_lock(self, credential_id: str) -> CredentialLock | pgstore.PgCredentialLock:
        """The cross-process lock of one credential, not yet taken."""
        if not re.fullmatch(r"[A-Za-z0-9_]+", credential_id):
            raise ValueError("not a credential id")
        if self._pg_locks is not None:  # shared stores: a lock across machines
            return self._pg_locks.lock(credential_id)
        self.home.locks.mkdir(exist_ok=True, mode=0o700)
        return CredentialLock(self.home.locks / f"{credential_id}.lock")


class LockTimeout(CapgateError):
    """A credential lock was not obtained in time (another process holds it)."""


class CredentialLock:
    """One credential's flock, taken without blocking (`try_acquire`) or with a deadline.

    `try_acquire` never waits, so the proxy polls it from its event loop and no thread
    of a shared pool ever sits in `flock`.
    """

    POLL_S = 0.02

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: int | None = None

    def try_acquire(self) -> bool:
        if self._handle is not None:
            raise RuntimeError("credential lock already held")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._handle = fd
        return True

    def acquire(self, timeout: float | None = None) -> None:
        """Block until held; `LockTimeout` after `timeout` seconds (None: wait forever)."""
        if timeout is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._handle = fd
            return
        deadline = time.monotonic() + timeout
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise LockTimeout(f"credential lock {self.path.stem} is held elsewhere")
            time.sleep(self.POLL_S)

    def release(self) -> None:
        fd, self._handle = self._handle, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
