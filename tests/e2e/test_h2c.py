"""mitmproxy's h2c refusal still runs now that it sits inside capgate's addon group."""

from __future__ import annotations

from tests.e2e.conftest import RunningProxy, World
from tests.e2e.upstream import Upstream


def test_an_h2c_upgrade_request_reaches_the_upstream_without_its_upgrade(
    proxy: RunningProxy, memory_world: World, plain_upstream: Upstream
) -> None:
    with proxy.client(memory_world.token) as client:
        answer = client.get(f"http://localhost:{plain_upstream.port}/x", headers={"Upgrade": "h2c"})
    assert answer.status_code == 200
    sent = {name.lower() for name, _ in answer.json()["headers"]}
    assert "upgrade" not in sent
    assert "x-plain" in sent  # capgate's own transform ran on the same request
