"""Class 7: descriptors and connections. The soft descriptor limit is raised to the hard
one; 1,100 idle connections under a 1,024 limit do not stop an authenticated agent being
served; connections idle before authenticating are closed."""

from __future__ import annotations

import base64
import resource
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.cli_harness import CAPGATE, ProxyProcess
from tests.e2e.upstream import Upstream

from .clients import get
from .conftest import Proxies, ca_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def start_limited(
    proxies: Proxies, soft: int, hard: int, env: dict[str, str] | None = None
) -> ProxyProcess:
    """`capgate proxy` started under RLIMIT_NOFILE (soft, hard)."""
    home = proxies.home
    logs = proxies.logs / f"limited{len(proxies.running)}"
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / "proxy.stdout", logs / "proxy.stderr"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    process = subprocess.Popen(
        [
            *CAPGATE,
            "proxy",
            "--caps",
            str(proxies.caps),
            "--listen",
            "127.0.0.1:0",
            "--upstream-ca",
            str(proxies.pki.ca_pem),
        ],
        stdout=out.open("wb"),
        stderr=err.open("wb"),
        env={**home.env(), **(env or {})},
        preexec_fn=limit,
    )
    ends = time.monotonic() + 30
    while time.monotonic() < ends:
        for line in err.read_text(errors="replace").splitlines():
            if "listening on " in line:
                proxy = ProxyProcess(process, int(line.rsplit(":", 1)[1]), out, err)
                proxies.running.append(proxy)
                return proxy
        if process.poll() is not None:
            raise AssertionError(err.read_text())
        time.sleep(0.05)
    process.kill()
    raise AssertionError("capgate proxy did not start listening")


def _limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files limit")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _open_idle(port: int, count: int) -> list[socket.socket]:
    conns = []
    for _ in range(count):
        s = socket.socket()
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        conns.append(s)
    return conns


def test_the_soft_descriptor_limit_is_raised_to_the_hard_limit(proxies: Proxies) -> None:
    proxy = start_limited(proxies, 1024, 4096)
    assert _limits(proxy.process.pid) == (4096, 4096)
    assert proxy.terminate(timeout=30) == 0


def test_1100_idle_connections_under_a_1024_limit_do_not_stop_an_agent(
    proxies: Proxies, tls_upstream: Upstream
) -> None:
    # given a proxy whose hard limit is 1,024 descriptors (nothing to raise it to)
    # (the per-address cap is lifted: every client here is 127.0.0.1, and this is about
    # the descriptor reserve)
    env = {"CAPGATE_PREAUTH_IDLE_TIMEOUT": "600", "CAPGATE_MAX_PREAUTH_PER_ADDRESS": "100000"}
    proxy = start_limited(proxies, 1024, 1024, env=env)
    _, token = proxies.home.workspace("researcher")
    ca = ca_of(proxies.home)
    assert get(proxy.url(token), ca, tls_upstream.url("/repos/a", host="localhost")).is_success
    before = _rss_kib(proxy.process.pid)
    # when 1,100 clients connect and send nothing
    idle = _open_idle(proxy.port, 1100)
    try:
        time.sleep(1.0)
        # then an authenticated agent is still served (idle unauthenticated ones make room)
        reply = get(proxy.url(token), ca, tls_upstream.url("/repos/b", host="localhost"), 30)
        assert reply.status_code == 200
        held = len(list(Path(f"/proc/{proxy.process.pid}/fd").iterdir()))
        grown = _rss_kib(proxy.process.pid) - before
        print(f"\nfds held: {held}; RSS +{grown} KiB for 1100 idle ({grown / 1100:.1f} KiB each)")
    finally:
        for s in idle:
            s.close()
    out = proxy.output()
    assert "idle unauthenticated connection(s)" in out
    assert proxy.terminate(timeout=30) == 0


def test_connections_idle_before_authentication_are_closed(
    proxies: Proxies, tls_upstream: Upstream
) -> None:
    proxy = proxies.start(env={"CAPGATE_PREAUTH_IDLE_TIMEOUT": "1"})
    _, token = proxies.home.workspace("researcher")
    silent = _open_idle(proxy.port, 3)
    slow = _open_idle(proxy.port, 1)[0]
    slow.sendall(b"GET http://localhost/ HTTP/1.1\r\nHost: loc")  # never finishes its head
    for s in [*silent, slow]:
        s.settimeout(15)
        assert s.recv(100) == b""  # closed by the proxy
        s.close()
    # and an agent that authenticates is served as before
    ca = ca_of(proxies.home)
    assert get(proxy.url(token), ca, tls_upstream.url("/repos/a", host="localhost")).is_success
    assert "idle 1 s without authenticating" in proxy.output()
    assert proxy.terminate(timeout=30) == 0


def _closed_by_peer(s: socket.socket) -> bool:
    s.settimeout(0.2)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False  # still open: nothing to read yet
    except OSError:
        return True


def test_one_address_holds_at_most_its_cap_of_unauthenticated_connections(
    proxies: Proxies, tls_upstream: Upstream
) -> None:
    # given a cap of 20 unauthenticated connections per client address
    env = {"CAPGATE_PREAUTH_IDLE_TIMEOUT": "600", "CAPGATE_MAX_PREAUTH_PER_ADDRESS": "20"}
    proxy = proxies.start(env=env)
    _, token = proxies.home.workspace("researcher")
    ca = ca_of(proxies.home)
    # an agent's kept-alive, authenticated connection is never counted against the cap
    agent = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    auth = base64.b64encode(f"agent:{token}".encode()).decode()
    target = tls_upstream.url("/repos/a", host="localhost").split("://", 1)[1].split("/", 1)[0]
    agent.sendall(
        f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode()
    )
    assert agent.recv(100).startswith(b"HTTP/1.1 200")
    # when one address opens 50 connections and sends nothing
    silent = _open_idle(proxy.port, 50)
    try:
        time.sleep(1.0)
        # then the 30 oldest are closed by the proxy and the 20 newest are kept
        closed = [_closed_by_peer(s) for s in silent]
        assert closed == [True] * 30 + [False] * 20, closed
        assert not _closed_by_peer(agent)
        # and a new agent connection is served
        assert get(proxy.url(token), ca, tls_upstream.url("/repos/b", host="localhost")).is_success
    finally:
        for s in [*silent, agent]:
            s.close()
    assert "unauthenticated connections (the cap): closed its oldest" in proxy.output()
    assert proxy.terminate(timeout=30) == 0
