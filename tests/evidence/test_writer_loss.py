"""The decision writer when the store refuses rows: kept, retried in order, counted, and
given up on (counted as dropped) only at shutdown; and the metric labels it feeds."""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY

from capgate.broker import decisions, metrics
from capgate.broker.decisions import DecisionWriter, list_decisions
from capgate.broker.evidence import verify_store
from capgate.broker.home import Home
from capgate.broker.store import connect
from capgate.broker.stores import Stores
from tests.evidence.conftest import decision


def wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def fast_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decisions, "WRITE_BUSY_TIMEOUT_MS", 100)
    monkeypatch.setattr(decisions, "RETRY_MAX_S", 0.2)
    monkeypatch.setattr(decisions, "CLOSE_RETRY_S", 0.5)


def test_refused_rows_are_retried_in_order_once_the_lock_is_released(home: Home, fast_writer):
    stores = Stores.open(home)
    org_id = stores.control.org_id("acme", create=True)
    writer = DecisionWriter(home.control_db)
    failures_before = REGISTRY.get_sample_value("capgate_decision_write_failures_total") or 0
    blocker = connect(home.control_db)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        writer.record(decision(0, org_id))
        assert wait_for(lambda: not writer.writable())
        for i in range(1, 4):
            writer.record(decision(i, org_id))
        assert writer.queue_depth() == 4
        assert REGISTRY.get_sample_value("capgate_decision_log_writable") == 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert wait_for(writer.writable)
    assert wait_for(lambda: writer.queue_depth() == 0)
    writer.close()
    rows = list_decisions(stores.control, org_id)
    assert [r.decision.path for r in rows] == [f"/repos/{i}" for i in range(4)]
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    assert all(report.ok for report in verify_store(stores.control, org_id))
    assert writer.dropped == 0 and writer.failures >= 1
    assert REGISTRY.get_sample_value("capgate_decision_write_failures_total") > failures_before
    stores.close()


def test_rows_still_refused_at_shutdown_are_counted_as_dropped(home: Home, fast_writer, caplog):
    writer = DecisionWriter(home.control_db)
    blocker = connect(home.control_db)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        for i in range(3):
            writer.record(decision(i, "org_x"))
        writer.close()  # gives up after CLOSE_RETRY_S
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert writer.dropped == 3
    assert "3 policy decisions could not be written and are lost" in caplog.text
    assert "/repos/" not in caplog.text


@pytest.mark.parametrize(
    ("decision_", "reason", "label"),
    [
        ("allow", None, "none"),
        ("deny", "no_capability", "no_capability"),
        ("tripwire", "secret:api-token", "tripwire"),  # names a secret: never a label
        ("deny", "/etc/passwd", "other"),
        ("deny", "x" * 100, "other"),
    ],
)
def test_request_labels_are_code_words_only(decision_, reason, label):
    before = REGISTRY.get_sample_value(
        "capgate_requests_total", {"decision": decision_, "reason": label}
    )
    metrics.count_request(decision_, reason)
    after = REGISTRY.get_sample_value(
        "capgate_requests_total", {"decision": decision_, "reason": label}
    )
    assert after == (before or 0) + 1


def test_mint_labels_strip_the_unavailable_prefix_and_refuse_odd_providers():
    metrics.count_mint("github_pat", None)
    metrics.count_mint("microsoft", "auth_unavailable:network_error")
    metrics.count_mint("Evil Provider/x", "auth_unavailable:timeout")
    sample = REGISTRY.get_sample_value
    assert sample("capgate_mints_total", {"provider": "github_pat", "reason": "ok"}) >= 1
    assert sample("capgate_mints_total", {"provider": "microsoft", "reason": "network_error"}) >= 1
    assert sample("capgate_mints_total", {"provider": "other", "reason": "timeout"}) >= 1
