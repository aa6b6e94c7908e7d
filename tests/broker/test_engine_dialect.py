"""The engine seam without a database: the SQLite-dialect statements the broker writes,
as psycopg receives them, and one PostgreSQL twin per SQLite migration."""

from __future__ import annotations

import pytest

from capgate.broker import pgstore
from capgate.broker.engine import redact_url, translate
from capgate.broker.store import MIGRATIONS


def test_every_sqlite_migration_has_a_postgresql_twin() -> None:
    # A migration added to store.MIGRATIONS needs its twin in pgstore.PG_MIGRATIONS.
    assert len(pgstore.PG_MIGRATIONS) == len(MIGRATIONS)


@pytest.mark.parametrize(
    ("sqlite", "postgres"),
    [
        ("SELECT * FROM t WHERE a = ? AND b = ?", "SELECT * FROM t WHERE a = %s AND b = %s"),
        ("DELETE FROM t WHERE id = :id", "DELETE FROM t WHERE id = %(id)s"),
        ("UPDATE t SET x = 1 WHERE r IS ?", "UPDATE t SET x = 1 WHERE r IS NOT DISTINCT FROM %s"),
        (
            "INSERT OR IGNORE INTO t (a) VALUES (?)",
            "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING",
        ),
        ("SELECT 'a?b:c%' || ? , x::text", "SELECT 'a?b:c%%' || %s , x::text"),
        ("SELECT a FROM t WHERE a LIKE 'x%'", "SELECT a FROM t WHERE a LIKE 'x%%'"),
    ],
)
def test_sqlite_dialect_is_translated(sqlite: str, postgres: str) -> None:
    assert translate(sqlite) == postgres


def test_a_url_is_shown_without_its_password() -> None:
    shown = redact_url("postgresql://capgate:s3cret@db.internal:5432/control")
    assert shown == "postgresql://capgate:***@db.internal:5432/control"
