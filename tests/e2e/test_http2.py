"""HTTP/2 end to end: an h2 client through capgate to an h2-only upstream."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from .conftest import GITHUB_TOKEN, TENANT_SECRET
from .h2_upstream import H2Upstream, start_h2_upstream

pytestmark = pytest.mark.e2e

CAPS = """\
version: 1
capabilities:
  - name: github-h2
    match: {{hosts: ["api.test:{port}"], paths: ["/repos/**"]}}
    transforms:
      - auth: {{credential: github, provider: github_pat}}
      - header: {{name: X-Tenant, action: set, value: 'secrets["tenant-id"]'}}
roles:
  researcher:
    capabilities: [github-h2]
"""


@pytest.fixture
def h2_upstream(pki) -> Iterator[H2Upstream]:
    upstream = start_h2_upstream(str(pki.server_cert_pem), str(pki.server_key_pem))
    yield upstream
    upstream.stop()


@pytest.fixture
def h2_proxy(start_proxy, memory_world, h2_upstream):
    return start_proxy(CAPS.format(port=h2_upstream.port), memory_world.broker)


def _curl_h2(proxy, token: str, url: str, *headers: str) -> tuple[int, str, str]:
    """(status, HTTP version, body) of one curl call that offers h2 first (ALPN)."""
    args = ["curl", "-sS", "--http2", "--max-time", "10", "--cacert", str(proxy.ca)]
    args += ["-x", proxy.url(token), "-w", "\n%{http_code} %{http_version}"]
    for header in headers:
        args += ["-H", header]
    done = subprocess.run([*args, url], capture_output=True, text=True, timeout=20, check=False)
    body, _, tail = done.stdout.rpartition("\n")
    status, _, version = tail.partition(" ")
    return int(status or 0), version, body


def test_credential_and_secret_are_stamped_over_http2_with_lowercase_names(
    h2_proxy, memory_world, h2_upstream
):
    status, version, body = _curl_h2(
        h2_proxy,
        memory_world.token,
        f"https://api.test:{h2_upstream.port}/repos/x",
        "Authorization: Bearer agent-own",
    )
    assert (status, version) == (200, "2")
    sent = h2_upstream.requests[-1]
    assert ("authorization", f"Bearer {GITHUB_TOKEN}") in sent
    assert ("x-tenant", TENANT_SECRET) in sent
    assert all(name == name.lower() for name, _ in sent)
    assert ("authorization", "Bearer agent-own") not in sent
    # the echo the agent gets back is scrubbed
    assert GITHUB_TOKEN not in body and TENANT_SECRET not in body
    assert "[REDACTED:github]" in body


def test_http2_authority_of_another_host_is_refused(h2_proxy, memory_world, h2_upstream):
    before = len(h2_upstream.requests)
    status, version, body = _curl_h2(
        h2_proxy,
        memory_world.token,
        f"https://api.test:{h2_upstream.port}/repos/x",
        f"Host: other.test:{h2_upstream.port}",  # curl sends it as :authority over h2
    )
    assert (status, version) == (403, "2")
    assert json.loads(body)["reason"] == "host_mismatch"
    assert len(h2_upstream.requests) == before


def test_http2_unmatched_path_is_denied(h2_proxy, memory_world, h2_upstream):
    status, version, body = _curl_h2(
        h2_proxy, memory_world.token, f"https://api.test:{h2_upstream.port}/admin"
    )
    assert (status, version) == (403, "2")
    assert json.loads(body)["reason"] == "no_capability"
