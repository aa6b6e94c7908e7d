"""Recording: each handled request becomes a fixture that replays green and holds no real
credential or secret value, in any form."""

from __future__ import annotations

import asyncio
import base64
import ssl
from pathlib import Path

import httpx
import pytest

from capgate.proxy.addon.runner import ProxySettings, ProxyThread, ca_cert_path
from capgate.proxy.replay.fixtures import load_fixture, parse_fixture
from capgate.proxy.replay.harness import Harness
from capgate.proxy.replay.memory_broker import MemoryBroker
from capgate.proxy.replay.record import RecordAddon
from tests.e2e.conftest import TestResolver
from tests.e2e.upstream import Upstream

ROOT = Path(__file__).resolve().parents[2]
REAL = {
    "internal-token": "REAL-internal-CANARY-aaaa1111",
    "tenant-id": "REAL-tenant-CANARY-bbbb2222",
    "jira": "REAL-jira-CANARY-cccc3333",
    "slack": "xoxb-REAL-CANARY-dddd4444",
    "github": "ghp_REALliveCANARY0123456789abcdef",
}


def real_forms() -> list[str]:
    forms = []
    for value in REAL.values():
        forms += [value, base64.b64encode(value.encode()).decode()]
    forms.append(base64.b64encode(f"bot@example.com:{REAL['jira']}".encode()).decode())
    return forms


def assert_no_real_value(text: str) -> None:
    for form in real_forms():
        assert form not in text


def with_real_values(example_fixture: str, test_values: dict[str, str]) -> str:
    text = (ROOT / "examples" / example_fixture).read_text()
    for test_value, name in test_values.items():
        text = text.replace(test_value, REAL[name])
    return text


def replay_ok(fixture_path: Path, caps: Path) -> list:
    from capgate.proxy.replay.expectations import compare

    outcome = asyncio.run(Harness(caps).run(load_fixture(fixture_path)))
    return compare(load_fixture(fixture_path), outcome)


CASES = [  # (example caps, fixture with "real" values swapped in)
    (
        "internal-api",
        "internal-api/fixtures/01-create-order-header-and-body-secrets.yaml",
        {"test-internal-token-0006": "internal-token", "test-tenant-0007": "tenant-id"},
    ),
    (
        "internal-api",
        "internal-api/fixtures/03-secrets-echo-scrubbed.yaml",
        {"test-internal-token-0006": "internal-token", "test-tenant-0007": "tenant-id"},
    ),
    ("jira", "jira/fixtures/04-basic-echo-scrubbed.yaml", {"test-jira-api-token-0004": "jira"}),
    (
        "slack",
        "slack/fixtures/03-token-in-body-tripwire.yaml",
        {"xoxb-test-0000-0000-slack": "slack"},
    ),
    ("slack", "slack/fixtures/02-denied-admin-api.yaml", {"xoxb-test-0000-0000-slack": "slack"}),
]


@pytest.mark.parametrize("caps_dir, source, values", CASES, ids=[c[1] for c in CASES])
def test_recorded_fixture_replays_green_without_real_values(
    tmp_path: Path, caps_dir: str, source: str, values: dict[str, str]
) -> None:
    caps = ROOT / "examples" / caps_dir / "caps.yaml"
    recorder = RecordAddon(tmp_path / "recorded")
    live = parse_fixture(with_real_values(source, values), Path(source))

    asyncio.run(Harness(caps, extra_addons=lambda: [recorder]).run(live))

    (recorded,) = recorder.written
    text = recorded.read_text()
    assert_no_real_value(text)
    assert "test-" in text
    assert replay_ok(recorded, caps) == []


def test_recording_through_a_live_proxy_replays_green(
    tmp_path: Path,
    proxy_home: Path,
    pki,
    tls_upstream: Upstream,
) -> None:
    port = tls_upstream.port
    caps = tmp_path / "caps.yaml"
    caps.write_text(f"""\
version: 1
capabilities:
  - name: api
    match:
      hosts: ["api.test:{port}"]
      methods: [GET, POST]
      paths: ["/repos/**", "/user", "/sse"]
    transforms:
      - auth: {{credential: github, provider: github_pat}}
      - header: {{name: X-Tenant, action: set, value: 'secrets["tenant-id"]'}}
      - body: {{pointer: /tenant, action: set, value: 'secrets["tenant-id"]'}}
roles:
  dev: {{capabilities: [api]}}
""")
    broker = MemoryBroker()
    broker.add_credential("github", "github_pat", REAL["github"])
    broker.add_secret("tenant-id", REAL["tenant-id"])
    _, token = broker.add_workspace("dev", user="erin")
    out = tmp_path / "recorded"
    recorder = RecordAddon(out)
    settings = ProxySettings(
        home=proxy_home,
        caps_path=caps,
        listen_port=0,
        upstream_cas=(pki.ca_pem,),
        extra_addons=(TestResolver(), recorder),
    )
    verify = ssl.create_default_context(cafile=str(ca_cert_path(proxy_home)))
    base = f"https://api.test:{port}"
    with (
        ProxyThread(settings, broker) as proxy,
        httpx.Client(
            proxy=f"http://agent:{token}@127.0.0.1:{proxy.port}", verify=verify, timeout=10
        ) as client,
    ):
        client.get(
            f"{base}/user?echo_headers=authorization,x-tenant",
            headers={"Authorization": "Bearer agent-guess"},
        )
        client.post(f"{base}/repos/o/r", json={"title": "x"})
        client.delete(f"{base}/repos/o/r")
        streamed = client.get(f"{base}/sse?events=3")  # scrubbed chunk by chunk

    assert "[REDACTED:github]" in streamed.text

    written = sorted(out.glob("*.yaml"))
    assert len(written) == 4
    for path in written:
        assert_no_real_value(path.read_text())
        assert replay_ok(path, caps) == [], path.read_text()
    echoed = written[0].read_text()
    assert "Bearer [REDACTED:github]" in echoed
    assert "Bearer {{credential:github}}" in echoed
