"""The engine seam: the broker's SQL (SQLite dialect) on PostgreSQL too.

Why a seam and not SQLAlchemy Core: the broker's ~70 statements are plain, portable SQL
written against a DB-API connection (`conn.execute(sql, params).fetchall()`, rows by name
and index, `rowcount`), and the SQLite path must stay exactly as it is (sqlite-utils
migrations, `BEGIN IMMEDIATE`, `PRAGMA data_version`). Rewriting every call site in
SQLAlchemy's expression language would touch all of them for no gain in what they say;
a connection wrapper that speaks the same interface on psycopg 3 touches none of them.
What differs per engine (migrations, the change signal, locks, transactions) lives in
per-engine code that says so: `store.py` (PG_MIGRATIONS beside MIGRATIONS), `changes.py`
(LISTEN/NOTIFY), `pgstore.py`.

The dialect translation is small, mechanical and cached per statement:
`?` -> `%s`, `:name` -> `%(name)s`, a literal `%` -> `%%`, `INSERT OR IGNORE` ->
`INSERT ... ON CONFLICT DO NOTHING`, `x IS ?` -> `x IS NOT DISTINCT FROM %s`. Quoted
strings and identifiers are left alone.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import RowMaker

# Errors a store operation can raise on either engine.
DatabaseError: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)
OperationalError: tuple[type[Exception], ...] = (sqlite3.OperationalError, psycopg.OperationalError)
IntegrityError: tuple[type[Exception], ...] = (sqlite3.IntegrityError, psycopg.IntegrityError)

PG_SCHEMES = ("postgresql", "postgres")
# Extra psycopg dumpers every store connection registers (pgstore adds bool -> INTEGER).
DUMPERS: list[tuple[type, type]] = []


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and urlsplit(url or "").scheme in PG_SCHEMES


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class Row(tuple):
    """A row readable by index and by column name, like sqlite3.Row (`dict(row)` works)."""

    _index: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


@functools.lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    return type("Row", (Row,), {"_index": {n: i for i, n in enumerate(names)}, "__slots__": ()})


def _rows(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    if cursor.description is None:
        return lambda values: Row(values)
    cls = _row_class(tuple(c.name for c in cursor.description))
    return lambda values: cls(values)


_TOKEN = re.compile(
    r"""('(?:[^']|'')*')"""  # a string literal
    r"""|("(?:[^"]|"")*")"""  # a quoted identifier
    r"|(\bINSERT\s+OR\s+IGNORE\s+INTO\b)"
    r"|(\bIS\s+\?)"
    r"|(\?)"
    r"|(?<![:\w]):([A-Za-z_]\w*)"  # :name, not ::cast
    r"|(%)",
    re.IGNORECASE,
)


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """The SQLite-dialect statement `sql` in psycopg's dialect (see the module docstring)."""
    ignore = False

    def swap(m: re.Match[str]) -> str:
        nonlocal ignore
        literal, ident, insert_ignore, is_param, qmark, name, percent = m.groups()
        if literal is not None or ident is not None:
            return (literal or ident).replace("%", "%%")
        if insert_ignore is not None:
            ignore = True
            return "INSERT INTO"
        if is_param is not None:
            return "IS NOT DISTINCT FROM %s"
        if qmark is not None:
            return "%s"
        if name is not None:
            return f"%({name})s"
        assert percent is not None
        return "%%"

    out = _TOKEN.sub(swap, sql)
    if ignore and "ON CONFLICT" not in out.upper():
        out += " ON CONFLICT DO NOTHING"
    return out


def _is_read(sql: str) -> bool:
    return sql.lstrip()[:6].upper() == "SELECT"


class PgCursor:
    """What the broker reads from `execute()`: fetchone, fetchall, rowcount, iteration."""

    # sqlite3 lets callers set row_factory = None for plain tuples; a Row is a tuple.
    row_factory: object = None

    def __init__(self, cursor: psycopg.Cursor[Row]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def fetchone(self) -> Any:  # Row | None; typed like sqlite3's (Any)
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[Row]:
        return self._cursor.fetchall() if self._cursor.description else []

    def fetchmany(self, size: int) -> list[Row]:
        return self._cursor.fetchmany(size) if self._cursor.description else []

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())


class PgConnection:
    """A psycopg connection with the slice of sqlite3.Connection's interface the broker uses.

    Autocommit outside `transaction()`, like the SQLite connections (isolation_level=None).
    Not thread-safe by itself: the owning store serialises use with its lock.
    """

    def __init__(self, url: str, *, application_name: str = "capgate") -> None:
        self.url = url
        self._application_name = application_name
        self.raw: psycopg.Connection[Row] = self._connect()
        self._in_transaction = False
        self.reconnects = 0

    def _connect(self) -> psycopg.Connection[Row]:
        conn = psycopg.connect(
            self.url,
            autocommit=True,
            row_factory=_rows,
            application_name=self._application_name,
            connect_timeout=10,
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        for adapted, dumper in DUMPERS:
            conn.adapters.register_dumper(adapted, dumper)
        return conn

    def _usable(self) -> psycopg.Connection[Row]:
        """The connection, reopened first if the server ended the session (a restart, a
        failover) while no transaction was open; inside one the error propagates."""
        if self.raw.broken or self.raw.closed:
            if self._in_transaction:
                raise psycopg.OperationalError("the store connection was lost")
            self.raw.close()
            self.raw = self._connect()
            self.reconnects += 1
        return self.raw

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> PgCursor:
        query, args = translate(sql), params if params else None
        try:
            cursor = self._usable().cursor()
            cursor.execute(query, args)
        except psycopg.OperationalError:
            # A read outside a transaction on a session the server ended (found out only
            # now) is retried once on a new session; anything else propagates.
            if self._in_transaction or not self.raw.broken or not _is_read(sql):
                raise
            cursor = self._usable().cursor()
            cursor.execute(query, args)
        return PgCursor(cursor)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> None:
        with self._usable().cursor() as cursor:
            cursor.executemany(translate(sql), list(rows))

    @property
    def in_transaction(self) -> bool:
        """Like sqlite3's: a transaction is open (psycopg rolls back on leaving it)."""
        return self._in_transaction

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Transaction]:
        with self._usable().transaction() as tx:
            self._in_transaction = True
            try:
                yield tx
            finally:
                self._in_transaction = False

    def close(self) -> None:
        self.raw.close()
