"""The cross-process change signal and the batched policy-decision writer."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import time

from capgate.broker import decisions
from capgate.broker.decisions import DecisionWriter, list_decisions
from capgate.broker.secretvalue import SecretValue
from capgate.broker.store import connect
from capgate.broker.stores import Stores
from capgate.broker.types import PolicyDecision


def _delete_secret_in_another_process(root: str, org: str, name: str) -> None:
    stores = Stores.open(root)
    stores.secrets.delete(stores.control.org_id(org), name)
    stores.close()


def test_generation_moves_after_a_delete_in_another_process(stores, org):
    stores.secrets.set(org, "s", SecretValue("v"))
    before = stores.changes.generation()
    assert stores.changes.generation() == before
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(
        target=_delete_secret_in_another_process, args=(str(stores.home.root), "acme", "s")
    )
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    assert stores.changes.generation() != before
    assert stores.secrets.values(org, ["s"]) == {}


def test_generation_moves_after_a_change_through_a_second_connection(stores, org):
    other = Stores.open(stores.home)
    before = stores.changes.generation()
    other.workspaces.add_user(org, "alice")
    assert stores.changes.generation() == before  # users do not change activations
    other.workspaces.create(org, "r", "alice")
    assert stores.changes.generation() > before
    other.close()


def test_generation_moves_after_a_change_in_this_process(stores, org):
    before = stores.changes.generation()
    stores.secrets.set(org, "s", SecretValue("v"))
    assert stores.changes.generation() > before


def test_generation_is_cheap(stores):
    """generation() is a local read: no write, no new connection (its cost is measured by
    `make bench`, not asserted here: no timing thresholds in the pass/fail suite)."""
    before = stores.changes.generation()
    for _ in range(1_000):
        assert stores.changes.generation() == before


def decision(i: int, org_id: str, workspace_id: str = "ws_1") -> PolicyDecision:
    return PolicyDecision(
        at=1000.0 + i,
        org_id=org_id,
        workspace_id=workspace_id,
        capability="github-api",
        decision="allow",
        reason=None,
        method="GET",
        scheme="https",
        host="api.github.com",
        port=443,
        path=f"/repos/{i}",
        transforms_applied=("auth:github",),
        auth_failures={"jira": "auth_unavailable"},
        upstream_status=200,
        duration_ms=1.5,
    )


def test_decisions_are_written_in_the_background_and_read_back(stores, org, monkeypatch):
    writer = DecisionWriter(stores.home.control_db)
    for i in range(5):
        writer.record(decision(i, org))
    writer.record(decision(9, "org_other"))
    writer.close()
    rows = list_decisions(stores.control, org)
    assert [r.decision.path for r in rows] == [f"/repos/{i}" for i in range(5)]
    assert rows[0].decision == decision(0, org)
    assert len(list_decisions(stores.control, None)) == 6
    since = list_decisions(stores.control, org, since_id=rows[2].id)
    assert [r.id for r in since] == [rows[3].id, rows[4].id]
    newest = list_decisions(stores.control, org, limit=2)
    assert [r.id for r in newest] == [rows[3].id, rows[4].id]
    assert list_decisions(stores.control, org, workspace_id="ws_none") == []


def test_decisions_flush_without_close_within_the_interval(stores, org):
    writer = DecisionWriter(stores.home.control_db)
    writer.record(decision(0, org))
    deadline = time.monotonic() + 5
    while not list_decisions(stores.control, org) and time.monotonic() < deadline:
        time.sleep(decisions.FLUSH_INTERVAL_S / 4)
    assert len(list_decisions(stores.control, org)) == 1
    writer.close()


def _add_secrets(root: str, org: str, prefix: str, count: int) -> None:
    stores = Stores.open(root)
    org_id = stores.control.org_id(org, create=True)
    for i in range(count):
        stores.secrets.set(org_id, f"{prefix}-{i}", SecretValue("v"))
    stores.close()


def test_two_processes_write_at_once_without_losing_a_row(stores, org):
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_add_secrets, args=(str(stores.home.root), "acme", p, 15))
        for p in ("a", "b")
    ]
    for proc in procs:
        proc.start()
    _add_secrets(str(stores.home.root), "acme", "c", 15)
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert len(stores.secrets.list_secrets(org)) == 45
    assert len(stores.vault.refs()) == 45


def test_a_full_queue_drops_rows_loudly_and_counts_them(stores, org, caplog):
    """Given a writer whose disk is stuck (another connection holds the write lock) and a
    queue bound of 5, rows beyond the bound are dropped: counted, warned about the first
    time and then once per interval, never with a row's content."""
    now = [0.0]
    writer = DecisionWriter(stores.home.control_db, max_queued=5, clock=lambda: now[0])
    blocker = connect(stores.home.control_db)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with caplog.at_level(logging.WARNING, logger="capgate.broker.decisions"):
            writer.record(decision(0, org))
            deadline = time.monotonic() + 10
            while writer.queued and time.monotonic() < deadline:  # the thread took row 0
                time.sleep(0.01)
            assert writer.queued == 0
            for i in range(1, 9):  # 5 fit, 3 are dropped: one warning
                writer.record(decision(i, org))
            assert (writer.queued, writer.dropped) == (5, 3)
            now[0] += decisions.DROP_WARNING_INTERVAL_S
            writer.record(decision(9, org))  # the interval passed: a second warning
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    writer.close()
    assert writer.dropped == 4
    logged = [r.getMessage() for r in caplog.records if r.name == "capgate.broker.decisions"]
    warnings = [m for m in logged if "queue full" in m]  # (the refused writes log too)
    assert len(warnings) == 2
    assert "dropped 1 rows (1 in total)" in warnings[0]
    assert "dropped 3 rows (4 in total)" in warnings[1]
    assert not any("/repos/" in m or "api.github.com" in m for m in logged)
    assert [r.decision.path for r in list_decisions(stores.control, org)] == [
        f"/repos/{i}" for i in range(6)
    ]


def test_a_row_the_store_cannot_take_does_not_stop_the_writer(stores, org):
    """A path with a lone surrogate (mitmproxy keeps a raw 0xFF of an HTTP/2 `:path` so)
    cannot be encoded for SQLite or the chain: it is stored escaped, and the writer goes
    on with every later row."""
    writer = DecisionWriter(stores.home.control_db)
    bad = dataclasses.replace(decision(1, org), path="/repos/\udcff")
    writer.record(decision(0, org))
    writer.record(bad)
    writer.record(decision(2, org))
    time.sleep(0.5)
    writer.record(decision(3, org))
    writer.close()
    rows = list_decisions(stores.control, org)
    assert [r.decision.path for r in rows] == ["/repos/0", "/repos/\\udcff", "/repos/2", "/repos/3"]
    assert writer.dropped == 0
