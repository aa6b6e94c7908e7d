"""The hot-path rule for the hash chain: rows are hashed in the decision writer's thread,
never on mitmproxy's event loop (an in-process proxy with the real broker and store)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from capgate.broker import chain
from capgate.broker.evidence import verify_store
from capgate.broker.home import Home, init_home
from capgate.broker.service import Broker
from capgate.broker.stores import Stores

from .upstream import Upstream

pytestmark = pytest.mark.e2e

CAPS = """\
version: 1
capabilities:
  - name: plain-local
    match: {{hosts: ["localhost:{port}"], schemes: [http], paths: ["/**"]}}
    allow_plaintext: true
roles:
  dev: {{capabilities: [plain-local]}}
"""


def test_rows_are_hashed_in_the_writer_thread_not_on_the_event_loop(
    start_proxy, plain_upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "home"
    init_home(root)
    stores = Stores.open(Home(root))
    org_id = stores.control.org_id("default", create=True)
    stores.workspaces.add_user(org_id, "alice")
    _, token = stores.workspaces.create(org_id, "dev", "alice")
    hashed_in: list[str] = []
    real_link = chain.link

    def recording_link(previous: str, row: object) -> str:
        hashed_in.append(threading.current_thread().name)
        return real_link(previous, row)  # type: ignore[arg-type]

    monkeypatch.setattr(chain, "link", recording_link)
    broker = Broker.open(Home(root))
    proxy = start_proxy(CAPS.format(port=plain_upstream.port), broker, home=root)
    with proxy.client(token) as client:
        for i in range(5):
            url = plain_upstream.url(f"/x/{i}", host="localhost")
            assert client.get(url).status_code == 200
    deadline = time.monotonic() + 10
    while len(hashed_in) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    proxy.thread.stop()
    broker.close()
    assert len(hashed_in) == 5
    assert set(hashed_in) == {"capgate-decisions"}  # never "capgate-proxy" (the event loop)
    assert all(report.ok for report in verify_store(stores.control, org_id))
    stores.close()
