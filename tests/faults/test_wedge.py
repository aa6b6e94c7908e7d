"""Class 1: nothing blocks the event loop or starves a shared pool.

Each test runs `capgate proxy` as a process and a real token endpoint on 127.0.0.1.
"""

from __future__ import annotations

import pytest

from tests.e2e.upstream import Upstream

from .clients import Burst, WriteLockHolder, get
from .conftest import Proxies, assert_no_canary, ca_of
from .token_server import ACCESS_TOKEN, FaultyTokenServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_ttl0_burst_on_one_oauth_credential_does_not_wedge_the_proxy(
    proxies: Proxies, token_server: FaultyTokenServer, tls_upstream: Upstream
) -> None:
    # given TTL 0 and a slow token endpoint, and more concurrent requests for one OAuth
    # credential than asyncio's default executor has workers (6 on 2 cores)
    token_server.mode, token_server.delay = "slow", 0.3
    proxy = proxies.start(env={"CAPGATE_TOKEN_TTL": "0"})
    _, token = proxies.home.workspace("researcher")
    ca = ca_of(proxies.home)
    burst = Burst(proxy.url(token), ca, tls_upstream.url("/graph/me", host="localhost"), 16)
    burst.start()
    # then an unrelated capability keeps answering meanwhile (it used to hang for good)
    reply = get(proxy.url(token), ca, tls_upstream.url("/repos/a", host="localhost"), 15)
    assert reply.status_code == 200
    # and every request of the burst is served with a token minted for it (TTL 0)
    results = burst.join()
    assert [r[0] if isinstance(r, tuple) else r for r in results] == [200] * 16
    assert token_server.calls >= 16
    # and SIGTERM still stops the proxy
    assert proxy.terminate(timeout=30) == 0
    assert_no_canary(proxy.output())
    assert ACCESS_TOKEN not in proxy.output()


def test_a_hung_token_endpoint_slows_only_its_own_credential(
    proxies: Proxies, token_server: FaultyTokenServer, tls_upstream: Upstream
) -> None:
    # given a token endpoint that accepts and never answers, and a burst on that credential
    token_server.mode = "hang"
    proxy = proxies.start(env={"CAPGATE_TOKEN_TTL": "0"})
    _, token = proxies.home.workspace("researcher")
    ca = ca_of(proxies.home)
    seen = len(tls_upstream.log.items)
    burst = Burst(proxy.url(token), ca, tls_upstream.url("/graph/me", host="localhost"), 12)
    burst.start()
    # then static credentials and secrets keep being served
    for path in ("/repos/a", "/tenant/x", "/repos/b"):
        assert get(proxy.url(token), ca, tls_upstream.url(path, host="localhost"), 15).is_success
    # and the wedged credential's requests end (deadline), each without the credential
    results = burst.join()
    assert all(isinstance(r, tuple) for r in results), results
    graph_calls = [i for i in tls_upstream.log.items[seen:] if i.path == "/graph/me"]
    assert all(i.header("Authorization") == [] for i in graph_calls)
    # and once the endpoint answers again, the credential recovers on the next request
    token_server.mode = "ok"
    reply = get(proxy.url(token), ca, tls_upstream.url("/graph/me", host="localhost"), 40)
    assert reply.status_code == 200
    assert tls_upstream.log.items[-1].header("Authorization") == [f"Bearer {ACCESS_TOKEN}"]
    rows = proxies.home.decisions(at_least=16)
    failures = [r["auth_failures"] for r in rows if r["capability"] == "graph"]
    assert {"graph": "auth_unavailable"} in failures or any(failures), failures
    assert proxy.terminate(timeout=30) == 0


def test_another_process_holding_the_write_lock_does_not_stall_agents(
    proxies: Proxies, token_server: FaultyTokenServer, tls_upstream: Upstream
) -> None:
    # given a running proxy and fresh agent tokens (their first use writes last_used_at)
    proxy = proxies.start()
    _, token = proxies.home.workspace("researcher")
    _, other = proxies.home.workspace("researcher")
    ca = ca_of(proxies.home)
    with WriteLockHolder(proxies.home.root / "control.db"):
        # when another process holds control.db's write lock (10 s busy timeout), a new
        # token and a new OAuth mint (which records its outcome) are served well within it
        for t, path in ((token, "/repos/a"), (other, "/graph/me"), (token, "/graph/x")):
            reply = get(proxy.url(t), ca, tls_upstream.url(path, host="localhost"), 5)
            assert reply.status_code == 200
    assert tls_upstream.log.items[-1].header("Authorization") == [f"Bearer {ACCESS_TOKEN}"]
    assert proxy.terminate(timeout=30) == 0
