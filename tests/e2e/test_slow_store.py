"""A slow store read (a token lookup, an activation with its vault decryption) runs off
the event loop: other workspaces are served meanwhile, and one that outlives its deadline
is refused with 503 `store_timeout` and a row (issue 13, class 1)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import httpx
import pytest

from capgate.broker.types import Activation, Workspace
from capgate.caps import parse_caps
from capgate.proxy.addon import session
from capgate.proxy.replay.memory_broker import MemoryBroker

from .conftest import GITHUB_TOKEN, RunningProxy, StartProxy, caps_text
from .upstream import Upstream

pytestmark = pytest.mark.e2e


class SlowBroker(MemoryBroker):
    """Activations of workspaces in `slow` block their (pool) thread until released."""

    def __init__(self) -> None:
        super().__init__()
        self.slow: set[str] = set()
        self.release = threading.Event()
        self.entered = threading.Event()

    def activate(
        self, workspace: Workspace, credential_names: Iterable[str], secret_names: Iterable[str]
    ) -> Activation:
        if workspace.id in self.slow:
            self.entered.set()
            self.release.wait(30)
        return super().activate(workspace, credential_names, secret_names)


@pytest.fixture
def slow_world() -> tuple[SlowBroker, str, str]:
    broker = SlowBroker()
    broker.add_credential("github", "github_pat", GITHUB_TOKEN)
    broker.add_secret("tenant-id", "tenant-secret-value-0123456789")
    slow_workspace, slow_token = broker.add_workspace("researcher", user="slow")
    _, fast_token = broker.add_workspace("researcher", user="fast")
    broker.slow.add(slow_workspace.id)
    return broker, slow_token, fast_token


@pytest.fixture
def deadline_proxy(
    start_proxy: StartProxy,
    slow_world: tuple[SlowBroker, str, str],
    tls_upstream: Upstream,
    plain_upstream: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[float], RunningProxy]]:
    """A proxy on the slow world whose store reads may take `seconds`; the slow
    activation is released when the test ends."""
    broker = slow_world[0]

    def start(seconds: float) -> RunningProxy:
        monkeypatch.setattr(session, "STORE_DEADLINE_S", seconds)
        return start_proxy(caps_text(tls_upstream, plain_upstream), broker)

    yield start
    broker.release.set()


def test_a_slow_activation_holds_up_no_other_workspace(
    start_proxy: StartProxy,
    slow_world: tuple[SlowBroker, str, str],
    tls_upstream: Upstream,
    plain_upstream: Upstream,
) -> None:
    broker, slow_token, fast_token = slow_world
    proxy = start_proxy(caps_text(tls_upstream, plain_upstream), broker)
    url = tls_upstream.url("/repos/a", host="api.test")
    results: dict[str, int] = {}

    def slow_request() -> None:
        with proxy.client(slow_token) as client:
            results["slow"] = client.get(url).status_code

    slow = threading.Thread(target=slow_request)
    slow.start()
    try:
        assert broker.entered.wait(10), "the slow activation never started"
        # while that activation blocks its thread, another workspace is served
        with proxy.client(fast_token) as client:
            started = time.monotonic()
            assert client.get(url).status_code == 200
            print(f"\nanother workspace answered in {time.monotonic() - started:.3f} s")
        assert "slow" not in results
    finally:
        broker.release.set()
        slow.join(30)
    assert results["slow"] == 200  # and the slow one goes on once its read is done


def test_an_activation_past_its_deadline_is_refused_with_a_row(
    deadline_proxy: Callable[[float], RunningProxy],
    slow_world: tuple[SlowBroker, str, str],
    tls_upstream: Upstream,
    plain_upstream: Upstream,
) -> None:
    broker, slow_token, fast_token = slow_world
    proxy = deadline_proxy(0.5)
    # a plain request: capgate's JSON answer
    with proxy.client(slow_token) as client:
        answer = client.get(plain_upstream.url("/x", host="localhost"))
    assert answer.status_code == 503
    assert answer.json()["reason"] == "store_timeout"
    assert GITHUB_TOKEN not in answer.text
    # a tunnel: refused at CONNECT (its target's tripwire needs the activation)
    with proxy.client(slow_token) as client, pytest.raises(httpx.ProxyError, match="503"):
        client.get(tls_upstream.url("/repos/a", host="api.test"))
    # another workspace is served as before
    with proxy.client(fast_token) as client:
        assert client.get(tls_upstream.url("/repos/a", host="api.test")).status_code == 200
    rows = [d for d in broker.decisions if d.reason == "store_timeout"]
    assert len(rows) == 2 and all(row.decision == "deny" for row in rows)


def test_waiting_requests_share_one_read() -> None:
    """However many requests wait for one workspace's activation, the store is read once."""
    broker = SlowBroker()
    added, token = broker.add_workspace("r")
    config = parse_caps("version: 1\ncapabilities: []\nroles: {r: {capabilities: []}}\n")
    calls: list[str] = []
    original = broker.activate

    def counting(*args: object) -> Activation:
        calls.append("activate")
        time.sleep(0.05)
        return original(*args)  # type: ignore[arg-type]

    broker.activate = counting  # type: ignore[method-assign]
    sessions = session.Sessions(broker)

    async def many() -> list[Activation]:
        sessions.refresh()
        workspace = await sessions.load_workspace(token)
        assert workspace is not None and workspace.id == added.id
        return await asyncio.gather(
            *(sessions.load_activation(workspace, config, 1) for _ in range(20))
        )

    activations = asyncio.run(many())
    assert calls == ["activate"]
    assert all(a is activations[0] for a in activations)


def test_a_refused_request_reaches_no_upstream(
    deadline_proxy: Callable[[float], RunningProxy],
    slow_world: tuple[SlowBroker, str, str],
    plain_upstream: Upstream,
) -> None:
    proxy = deadline_proxy(0.3)
    path = "/never-arrives-on-a-store-timeout"
    with proxy.client(slow_world[1]) as client:
        assert client.get(plain_upstream.url(path, host="localhost")).status_code == 503
    assert not any(p.startswith(path) for p in plain_upstream.log.paths())
