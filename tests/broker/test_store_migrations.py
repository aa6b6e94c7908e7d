"""Schema migrations: a newer capgate upgrades an older home in place."""

from __future__ import annotations

import sqlite3

import pytest

from capgate.broker.errors import CapgateError
from capgate.broker.home import init_home
from capgate.broker.store import MIGRATIONS, SCHEMA_VERSION, connect, migrate, schema_version
from capgate.broker.stores import Stores


def tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_fresh_store_is_at_the_latest_version_in_wal_mode(home):
    conn = connect(home.control_db)
    assert schema_version(conn) == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_version_1_home_is_upgraded_in_place_keeping_its_rows(tmp_path):
    result = init_home(tmp_path / "home")
    conn = connect(result.home.control_db)
    migrate(conn, MIGRATIONS[:1])
    assert schema_version(conn) == 1
    assert "policy_decisions" not in tables(conn)
    conn.execute("INSERT INTO orgs (id, name, created_at) VALUES ('org_1', 'old', 'then')")
    conn.close()

    stores = Stores.open(result.home)
    assert schema_version(stores.control.conn) == SCHEMA_VERSION
    assert {"policy_decisions", "changes"} <= tables(stores.control.conn)
    assert stores.control.org_id("old") == "org_1"
    assert stores.changes.generation() == 0
    stores.close()


def test_store_from_a_newer_capgate_is_refused(home):
    conn = connect(home.control_db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(CapgateError, match="newer than this capgate"):
        Stores.open(home)


def test_no_table_has_a_value_column(home):
    conn = connect(home.control_db)
    columns = set()
    for table in tables(conn):
        columns |= {f"{table}.{r[1]}" for r in conn.execute(f"PRAGMA table_info({table})")}
    conn.close()
    assert not {c for c in columns if c.split(".")[1] in {"value", "secret", "token", "key"}}
