"""Class 2: deadlines, not timeouts, on every outbound call; bounded reads.

A token endpoint trickling one byte every 3 s is cut off; a 50 MB token response is not
read; an upstream that never answers, or never accepts the connection, gets capgate's
JSON 504 and a row.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.upstream import Upstream

from .clients import get
from .conftest import CAPS, Proxies, assert_no_canary, ca_of
from .token_server import FaultyTokenServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


class HangingUpstream:
    """Accepts, reads the request, never answers (until stopped)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)

    def close(self) -> None:
        self.stop.set()
        self._thread.join(5)
        for conn in self._conns:
            conn.close()
        self.sock.close()


class BlackHole:
    """A port whose accept queue is full: a connect to it hangs (SYNs are dropped)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", self.port))
            self.fillers.append(filler)

    def close(self) -> None:
        for filler in self.fillers:
            filler.close()
        self.sock.close()


@pytest.fixture
def hanging() -> Iterator[HangingUpstream]:
    upstream = HangingUpstream()
    yield upstream
    upstream.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def _caps_with(caps_file: Path, tls_port: int, port: int) -> None:
    extra = f"""  - name: slow-api
    match: {{hosts: ["localhost:{port}"], schemes: [http]}}
    allow_plaintext: true
    transforms:
      - auth: {{credential: github, provider: github_pat}}
"""
    text = CAPS.format(tls=tls_port).replace("roles:\n", extra + "roles:\n")
    roles = ("[github-api, graph, tenant]", "[github-api, graph, tenant, slow-api]")
    caps_file.write_text(text.replace(*roles))


def test_an_upstream_that_never_answers_gets_a_504_and_a_row(
    proxies: Proxies, caps_file: Path, tls_upstream: Upstream, hanging: HangingUpstream
) -> None:
    _caps_with(caps_file, tls_upstream.port, hanging.port)
    proxy = proxies.start(env={"CAPGATE_UPSTREAM_TIMEOUT": "2"})
    _, token = proxies.home.workspace("researcher")
    reply = httpx.get(
        f"http://localhost:{hanging.port}/v1/thing", proxy=proxy.url(token), timeout=30
    )
    assert reply.status_code == 504
    assert reply.json()["reason"] == "upstream_timeout"
    assert hanging.accepted >= 1
    # and the proxy keeps serving
    ca = ca_of(proxies.home)
    assert get(proxy.url(token), ca, tls_upstream.url("/repos/a", host="localhost")).is_success
    rows = [r for r in proxies.home.decisions(at_least=2) if r["path"] == "/v1/thing"]
    assert len(rows) == 1
    assert (rows[0]["reason"], rows[0]["upstream_status"]) == ("upstream_timeout", 504)
    assert rows[0]["capability"] == "slow-api"
    assert proxy.terminate(timeout=30) == 0
    assert_no_canary(proxy.output(), reply.text)


def test_an_upstream_that_never_accepts_gets_a_504_and_a_row(
    proxies: Proxies, caps_file: Path, tls_upstream: Upstream, black_hole: BlackHole
) -> None:
    _caps_with(caps_file, tls_upstream.port, black_hole.port)
    proxy = proxies.start(env={"CAPGATE_UPSTREAM_CONNECT_TIMEOUT": "2"})
    _, token = proxies.home.workspace("researcher")
    reply = httpx.get(
        f"http://localhost:{black_hole.port}/v1/thing", proxy=proxy.url(token), timeout=60
    )
    assert reply.status_code == 504, reply.text
    assert reply.json()["reason"] == "upstream_timeout"
    rows = [r for r in proxies.home.decisions(at_least=1) if r["path"] == "/v1/thing"]
    assert len(rows) == 1 and rows[0]["reason"] == "upstream_timeout"
    assert proxy.terminate(timeout=30) == 0


def test_a_trickling_token_endpoint_is_cut_off_by_the_deadline(
    proxies: Proxies, token_server: FaultyTokenServer, tls_upstream: Upstream
) -> None:
    # given a token endpoint that sends its (valid) answer one byte every 3 s
    token_server.mode, token_server.delay = "trickle", 3.0
    proxy = proxies.start()
    _, token = proxies.home.workspace("researcher")
    ca = ca_of(proxies.home)
    # then the request goes on without the credential once the token deadline passes
    reply = get(proxy.url(token), ca, tls_upstream.url("/graph/me", host="localhost"), 60)
    assert reply.status_code == 200
    assert tls_upstream.log.items[-1].header("Authorization") == []
    row = [r for r in proxies.home.decisions(at_least=1) if r["path"] == "/graph/me"][-1]
    assert row["auth_failures"] == {"graph": "auth_unavailable"}
    assert proxy.terminate(timeout=30) == 0
    assert "no complete answer within" in proxy.output()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("mode", ["huge", "huge_chunked"])
def test_a_50_mb_token_response_is_not_read(
    proxies: Proxies, token_server: FaultyTokenServer, tls_upstream: Upstream, mode: str
) -> None:
    token_server.mode = mode
    proxy = proxies.start()
    _, token = proxies.home.workspace("researcher")
    ca = ca_of(proxies.home)
    assert get(proxy.url(token), ca, tls_upstream.url("/repos/a", host="localhost")).is_success
    before = _rss_kib(proxy.process.pid)
    reply = get(proxy.url(token), ca, tls_upstream.url("/graph/me", host="localhost"), 60)
    assert reply.status_code == 200
    assert tls_upstream.log.items[-1].header("Authorization") == []
    grown_mib = (_rss_kib(proxy.process.pid) - before) / 1024
    assert grown_mib < 30, f"the proxy grew {grown_mib:.0f} MiB reading a token response"
    assert proxy.terminate(timeout=30) == 0
    assert "larger than" in proxy.output()
