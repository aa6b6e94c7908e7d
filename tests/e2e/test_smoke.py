from __future__ import annotations

import pytest

from .conftest import GITHUB_TOKEN, TENANT_SECRET

pytestmark = pytest.mark.e2e


def test_allowed_request_is_stamped_with_the_credential(proxy, memory_world, tls_upstream):
    with proxy.client(memory_world.token) as client:
        reply = client.get(
            tls_upstream.url("/repos/x?tenant=agent", host="api.test"),
            headers={"Authorization": "Bearer agent-supplied"},
        )
    assert reply.status_code == 200, reply.text
    sent = reply.json()
    headers = {k.lower(): v for k, v in sent["headers"]}
    # the echo body shows what left the proxy; the values are scrubbed in the response
    assert headers["authorization"] == "Bearer [REDACTED:github]"
    assert headers["x-tenant"] == "[REDACTED:tenant-id]"
    assert GITHUB_TOKEN not in reply.text and TENANT_SECRET not in reply.text
    last = tls_upstream.log.items[-1]
    assert last.header("Authorization") == [f"Bearer {GITHUB_TOKEN}"]
