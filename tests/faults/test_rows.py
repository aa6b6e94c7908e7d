"""Class 4: no lost rows. SIGTERM drains requests in flight (up to the grace period) and
writes their rows; a request still open after it is recorded as `shutdown`."""

from __future__ import annotations

import signal
import time

import pytest

from tests.e2e.upstream import Upstream

from .clients import Burst, WriteLockHolder, get
from .conftest import Proxies, assert_no_canary, ca_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _wait_for_upstream(upstream: Upstream, seen: int, paths: set[str], wait: float = 20) -> None:
    ends = time.monotonic() + wait
    while time.monotonic() < ends:
        got = {i.path for i in upstream.log.items[seen:]}
        if paths <= got:
            return
        time.sleep(0.02)
    raise AssertionError(f"the upstream never saw {paths}")


def test_sigterm_drains_requests_in_flight_and_writes_their_rows(
    proxies: Proxies, tls_upstream: Upstream
) -> None:
    # given requests that reached the upstream (with the credential) when SIGTERM arrives
    proxy = proxies.start()
    _, token = proxies.home.workspace("researcher")
    ca = ca_of(proxies.home)
    seen = len(tls_upstream.log.items)
    bursts = [
        Burst(
            proxy.url(token),
            ca,
            tls_upstream.url(f"/repos/drain{i}?delay_ms=2500", host="localhost"),
            1,
        ).start()
        for i in range(3)
    ]
    _wait_for_upstream(tls_upstream, seen, {f"/repos/drain{i}" for i in range(3)})
    proxy.process.send_signal(signal.SIGTERM)
    # then new connections are refused at once, while the open requests complete
    time.sleep(0.3)
    with pytest.raises(Exception):  # noqa: B017 - connection refused, whatever the client says
        get(proxy.url(token), ca, tls_upstream.url("/repos/late", host="localhost"), 5)
    results = [b.join()[0] for b in bursts]
    assert [r[0] if isinstance(r, tuple) else r for r in results] == [200, 200, 200]
    assert proxy.process.wait(timeout=30) == 0
    # and every one of them has its row, with the upstream's status
    rows = {r["path"]: r for r in proxies.home.decisions()}
    for i in range(3):
        row = rows[f"/repos/drain{i}"]
        assert (row["decision"], row["upstream_status"]) == ("allow", 200)
    out = proxy.output()
    assert "request(s) in flight" in out
    assert "Traceback" not in out
    assert_no_canary(out)


def test_requests_open_beyond_the_grace_period_are_recorded_as_shutdown(
    proxies: Proxies, tls_upstream: Upstream
) -> None:
    # given a short grace period and a request the upstream holds far longer
    proxy = proxies.start(env={"CAPGATE_SHUTDOWN_GRACE": "1"})
    _, token = proxies.home.workspace("researcher")
    ca = ca_of(proxies.home)
    seen = len(tls_upstream.log.items)
    burst = Burst(
        proxy.url(token), ca, tls_upstream.url("/repos/stuck?delay_ms=8000", host="localhost"), 1
    ).start()
    _wait_for_upstream(tls_upstream, seen, {"/repos/stuck"})
    proxy.process.send_signal(signal.SIGTERM)
    # then the proxy stops after the grace period, and the request has a row that says so
    assert proxy.process.wait(timeout=30) == 0
    burst.join()
    rows = [r for r in proxies.home.decisions() if r["path"] == "/repos/stuck"]
    assert len(rows) == 1
    assert rows[0]["reason"] == "shutdown"
    assert rows[0]["capability"] == "github-api"
    assert rows[0]["upstream_status"] is None
    out = proxy.output()
    assert "recorded as `shutdown`" in out
    assert "Traceback" not in out


def test_bad_grace_period_is_an_error_line(proxies: Proxies) -> None:
    home = proxies.home
    home.extra_env["CAPGATE_SHUTDOWN_GRACE"] = "soon"
    done = home.run("proxy", "--caps", str(proxies.caps), "--listen", "127.0.0.1:0", check=False)
    assert done.returncode == 1
    assert "error: CAPGATE_SHUTDOWN_GRACE" in done.stderr


def test_rows_refused_while_another_process_holds_the_write_lock_are_written_in_order(
    proxies: Proxies, tls_upstream: Upstream
) -> None:
    # given a running proxy, when another process holds control.db's write lock for
    # several seconds while requests are answered
    proxy = proxies.start()
    _, token = proxies.home.workspace("researcher")
    ca = ca_of(proxies.home)
    assert get(proxy.url(token), ca, tls_upstream.url("/repos/warm", host="localhost")).is_success
    with WriteLockHolder(proxies.home.root / "control.db"):
        for i in range(12):
            reply = get(proxy.url(token), ca, tls_upstream.url(f"/repos/held{i}", host="localhost"))
            assert reply.status_code == 200
        time.sleep(3)  # longer than the writer's own lock wait: batches are refused
    # then once the lock is released every row is written, in the order answered
    rows = [r["path"] for r in proxies.home.decisions(at_least=13, wait=30)]
    held = [p for p in rows if p.startswith("/repos/held")]
    assert held == [f"/repos/held{i}" for i in range(12)]
    assert proxy.terminate(timeout=30) == 0
    assert "cannot write policy decisions" in proxy.output()


def test_sigterm_while_the_store_is_locked_still_writes_the_rows_once_it_frees(
    proxies: Proxies, tls_upstream: Upstream
) -> None:
    proxy = proxies.start()
    _, token = proxies.home.workspace("researcher")
    ca = ca_of(proxies.home)
    assert get(proxy.url(token), ca, tls_upstream.url("/repos/warm", host="localhost")).is_success
    holder = WriteLockHolder(proxies.home.root / "control.db")
    try:
        for i in range(3):
            assert get(proxy.url(token), ca, tls_upstream.url(f"/repos/late{i}", host="localhost"))
        proxy.process.send_signal(signal.SIGTERM)
        time.sleep(1.0)
    finally:
        holder.release()  # freed within the writer's close() retry window
    assert proxy.process.wait(timeout=60) == 0
    paths = [r["path"] for r in proxies.home.decisions()]
    late = [p for p in paths if p.startswith("/repos/late")]
    assert late == [f"/repos/late{i}" for i in range(3)]
