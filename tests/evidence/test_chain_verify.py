"""The hash chain over policy decisions and audit events: written by the writers, checked
by `capgate decisions verify` against edits made directly in the SQLite store."""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from capgate.broker import chain
from capgate.broker.decisions import DecisionWriter
from capgate.broker.home import Home, init_home
from capgate.broker.secretvalue import SecretValue
from capgate.broker.store import MIGRATIONS, connect, migrate
from capgate.broker.stores import Stores
from tests.broker.conftest import Cli
from tests.evidence.conftest import ORG, decision


def _write_decisions(root: str, org: str, start: int, count: int, ready=None, go=None) -> None:
    """Rows at a steady trickle (so the writer flushes many small batches), audit events
    in between; `ready`/`go`: a handshake so that both processes really write at once."""
    stores = Stores.open(root)
    org_id = stores.control.org_id(org, create=True)
    writer = DecisionWriter(stores.home.control_db)
    if ready is not None and go is not None:
        ready.set()
        go.wait(60)
    for i in range(start, start + count):
        writer.record(decision(i, org_id))
        if i % 7 == 0:
            writer.record(decision(i, None, None))  # a failed proxy auth: no org
        if i % 50 == 0:
            stores.secrets.set(org_id, f"s-{i}", SecretValue("v"))  # an audit event
        if i % 10 == 0:
            time.sleep(0.02)
    writer.close()
    stores.close()


@pytest.fixture
def cli(home: Home) -> Cli:
    return Cli(home.root, org=ORG)


@pytest.fixture(scope="module")
def written_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two processes (this one and a child) writing decisions and audit events at once."""
    root = tmp_path_factory.mktemp("written") / "home"
    init_home(root)
    Stores.open(Home(root)).close()
    Stores.open(Home(root)).control.org_id(ORG, create=True)
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_write_decisions, args=(str(root), ORG, 10_000, 600, ready, go))
    child.start()
    assert ready.wait(60)  # the child has imported capgate and opened the store
    go.set()
    _write_decisions(str(root), ORG, 0, 600)
    child.join(120)
    assert child.exitcode == 0
    return root


@pytest.fixture
def written(written_once: Path, home: Home) -> Home:
    """A fresh copy of that store for each test to tamper with."""
    shutil.rmtree(home.root)
    shutil.copytree(written_once, home.root)
    return home


def db(home: Home) -> sqlite3.Connection:
    return connect(home.control_db)


def seq_id(home: Home, seq: int, table: str = "policy_decisions") -> int:
    conn = db(home)
    org_id = conn.execute("SELECT id FROM orgs WHERE name = ?", (ORG,)).fetchone()[0]
    row = conn.execute(f"SELECT id FROM {table} WHERE org_id = ? AND seq = ?", (org_id, seq))
    found = row.fetchone()[0]
    conn.close()
    return found


def test_untouched_log_written_by_two_processes_at_once_verifies(written, cli):
    conn = db(written)
    org_id = conn.execute("SELECT id FROM orgs WHERE name = ?", (ORG,)).fetchone()[0]
    seqs = [
        r[0]
        for r in conn.execute(
            "SELECT seq FROM policy_decisions WHERE org_id = ? ORDER BY id", (org_id,)
        )
    ]
    conn.close()
    assert seqs == list(range(1, 1201))  # one line, no gap, no repeat, across both writers
    # and the two processes' batches really interleaved in that one chain
    conn = db(written)
    owners = [
        r[0].split("/")[2].isdigit() and int(r[0].split("/")[2]) >= 10_000
        for r in conn.execute(
            "SELECT path FROM policy_decisions WHERE org_id = ? ORDER BY seq", (org_id,)
        )
    ]
    conn.close()
    switches = sum(1 for a, b in itertools.pairwise(owners) if a != b)
    assert switches >= 3
    result = cli("decisions", "verify")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "verified 1224 rows"  # 1200 decisions + 24 audit events
    result = cli("decisions", "verify", "--all-orgs")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"verified {1224 + 2 * 86} rows"  # + no-org decisions


def test_a_changed_row_fails_verify_naming_its_seq(written, cli):
    conn = db(written)
    conn.execute(
        "UPDATE policy_decisions SET decision = 'deny' WHERE id = ?", (seq_id(written, 500),)
    )
    conn.close()
    result = cli("decisions", "verify")
    assert result.exit_code == 1
    assert "decisions chain of org acme: row seq 500 was changed" in result.output


def test_a_changed_chain_value_fails_verify(written, cli):
    conn = db(written)
    conn.execute(
        "UPDATE policy_decisions SET chain = ? WHERE id = ?", ("0" * 64, seq_id(written, 3))
    )
    conn.close()
    result = cli("decisions", "verify")
    assert result.exit_code == 1
    assert "row seq 3 was changed" in result.output


def test_a_deleted_row_fails_verify_naming_its_seq(written, cli):
    conn = db(written)
    conn.execute("DELETE FROM policy_decisions WHERE id = ?", (seq_id(written, 77),))
    conn.close()
    result = cli("decisions", "verify")
    assert result.exit_code == 1
    assert "row seq 77 was removed" in result.output


def test_the_newest_row_deleted_fails_verify(written, cli):
    conn = db(written)
    conn.execute("DELETE FROM policy_decisions WHERE id = ?", (seq_id(written, 1200),))
    conn.close()
    result = cli("decisions", "verify")
    assert result.exit_code == 1
    assert "row seq 1200 was removed" in result.output


def test_two_swapped_rows_fail_verify(written, cli):
    first, second = seq_id(written, 40), seq_id(written, 41)
    conn = db(written)
    with conn:
        conn.execute("BEGIN")
        conn.execute("UPDATE policy_decisions SET id = -1 WHERE id = ?", (first,))
        conn.execute("UPDATE policy_decisions SET id = ? WHERE id = ?", (first, second))
        conn.execute("UPDATE policy_decisions SET id = ? WHERE id = -1", (second,))
    conn.close()
    result = cli("decisions", "verify")
    assert result.exit_code == 1
    assert "row seq 40 was reordered" in result.output


def test_a_changed_audit_event_fails_verify(written, cli):
    conn = db(written)
    conn.execute(
        "UPDATE audit_events SET actor = 'someone-else' WHERE id = ?",
        (seq_id(written, 5, "audit_events"),),
    )
    conn.close()
    result = cli("decisions", "verify")
    assert result.exit_code == 1
    assert "audit chain of org acme: row seq 5 was changed" in result.output


def test_a_changed_no_org_row_fails_only_with_all_orgs(written, cli):
    conn = db(written)
    conn.execute(
        "UPDATE policy_decisions SET host = 'evil.example' WHERE org_id IS NULL AND seq = 10"
    )
    conn.close()
    assert cli("decisions", "verify").exit_code == 0
    result = cli("decisions", "verify", "--all-orgs")
    assert result.exit_code == 1
    assert "decisions chain of no org: row seq 10 was changed" in result.output


def test_the_chain_is_recomputable_from_its_documented_canonical_form(written):
    """DESIGN.md: sha256(previous chain, or 64 zeros, + the row's fields except chain as
    JSON with sorted keys and no whitespace), JSON columns as their JSON values."""
    conn = db(written)
    conn.row_factory = sqlite3.Row
    org_id = conn.execute("SELECT id FROM orgs WHERE name = ?", (ORG,)).fetchone()[0]
    previous = "0" * 64
    rows = conn.execute(
        "SELECT * FROM policy_decisions WHERE org_id = ? ORDER BY seq", (org_id,)
    ).fetchall()
    for row in rows:
        fields = {k: v for k, v in dict(row).items() if k != "chain"}
        for name in ("transforms_applied", "transforms_failed", "auth_failures"):
            fields[name] = json.loads(fields[name])
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        previous_hash = hashlib.sha256((previous + text).encode()).hexdigest()
        assert row["chain"] == previous_hash
        previous = row["chain"]
    conn.close()
    assert (
        chain.link(chain.GENESIS, {"a": 1})
        == hashlib.sha256(("0" * 64 + '{"a":1}').encode()).hexdigest()
    )


def test_an_existing_home_starts_its_chain_at_the_migration(tmp_path):
    result = init_home(tmp_path / "home")
    conn = connect(result.home.control_db)
    migrate(conn, MIGRATIONS[:2])  # a home from before the chain
    conn.execute("INSERT INTO orgs (id, name, created_at) VALUES ('org_1', 'acme', 'then')")
    conn.execute(
        "INSERT INTO policy_decisions (at, org_id, decision, method, scheme, host, port, path)"
        " VALUES (1.0, 'org_1', 'allow', 'GET', 'https', 'old.example', 443, '/')"
    )
    conn.execute(
        "INSERT INTO audit_events (at, org_id, actor, action) VALUES ('then', 'org_1', 'x', 'y')"
    )
    conn.close()

    stores = Stores.open(result.home)  # migrates
    writer = DecisionWriter(stores.home.control_db)
    writer.record(decision(1, "org_1"))
    writer.close()
    events = stores.control.query("SELECT * FROM audit_events ORDER BY id")
    legacy = stores.control.query("SELECT seq, chain FROM policy_decisions ORDER BY id")
    stores.close()
    assert [e["action"] for e in events] == ["y", "log.chain_start"]
    assert (events[0]["seq"], events[1]["seq"]) == (None, 1)
    assert [(r["seq"], r["chain"] is None) for r in legacy] == [(None, True), (1, False)]
    out = Cli(result.home.root, org="acme")("decisions", "verify")
    assert out.exit_code == 0, out.output
    assert "verified 2 rows" in out.output  # the new decision and the chain_start event
    assert "predate the chain" in out.output


def test_verify_of_an_org_that_does_not_exist_is_an_error(home):
    result = Cli(home.root, org="nobody")("decisions", "verify")
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_a_removed_chain_head_fails_verify(written, cli):
    conn = db(written)
    conn.execute("DELETE FROM chain_heads WHERE kind = 'decisions' AND org_key != ''")
    conn.close()
    result = cli("decisions", "verify")
    assert result.exit_code == 1
    assert "head record (chain_heads) was removed" in result.output
