"""End-to-end fixtures: a test PKI, echo upstreams, and capgate proxies on ephemeral ports.

- `pki`: a throwaway CA and a server certificate for localhost, 127.0.0.1, ::1 and the
  `.test` names of certs.SERVER_NAMES.
- `tls_upstream` / `plain_upstream`: echo servers on 127.0.0.1 (see upstream.py).
- `start_proxy(caps_text, broker)`: an in-process capgate proxy (mitmproxy in a thread)
  with its own home; the upstream CA is passed as `--upstream-ca`. The `.test` names and
  `::1` are resolved to 127.0.0.1 by `TestResolver`, a test-only addon, so one upstream
  can play several hosts. Stopped at the end of the test.
- `memory_world`: a MemoryBroker with two orgs, their credentials/secrets and tokens.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from capgate.caps import normalize_host
from capgate.proxy.addon.broker_port import BrokerPort
from capgate.proxy.addon.runner import ProxySettings, ProxyThread, ca_cert_path
from capgate.proxy.replay.memory_broker import MemoryBroker

from .certs import TestPki, make_test_pki
from .clients import proxy_authorization
from .upstream import Upstream, start_upstream

pytestmark = pytest.mark.e2e

# Canary values: long and unique, so a scan of every output finds them if they leak.
GITHUB_TOKEN = "ghp_CANARYcredential0123456789abcdefXYZ"
TENANT_SECRET = "tenant-CANARYsecret-9f8e7d6c5b4a"
JIRA_TOKEN = "jira-CANARYtoken-ab12cd34ef56"
ORG2_TOKEN = "ghp_ORG2credential9876543210zyxwvuTSR"
CANARIES = (GITHUB_TOKEN, TENANT_SECRET, JIRA_TOKEN, ORG2_TOKEN)


class TestResolver:
    __test__ = False

    """Test-only: connect `.test` names and ::1 to 127.0.0.1 (a hosts file for the proxy)."""

    def server_connect(self, data: object) -> None:
        server = data.server  # type: ignore[attr-defined]
        host, port, *_ = server.address
        try:
            normal = normalize_host(host)
        except ValueError:
            return
        if normal.endswith(".test") or normal in ("::1", "localhost"):
            server.address = ("127.0.0.1", port)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tls_upstream(pki: TestPki) -> Iterator[Upstream]:
    upstream = start_upstream(str(pki.server_cert_pem), str(pki.server_key_pem))
    yield upstream
    upstream.stop()


@pytest.fixture(scope="session")
def plain_upstream() -> Iterator[Upstream]:
    upstream = start_upstream()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="session")
def proxy_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One home (and so one CA) for the in-process proxies of the session."""
    home = tmp_path_factory.mktemp("home")
    ca_cert_path(home)
    return home


@dataclass
class RunningProxy:
    thread: ProxyThread
    home: Path
    caps_path: Path
    ca: Path

    @property
    def port(self) -> int:
        return self.thread.port

    def url(self, token: str) -> str:
        return f"http://agent:{token}@127.0.0.1:{self.port}"

    def client(self, token: str, **kw: object) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.ca))
        return httpx.Client(proxy=self.url(token), verify=context, timeout=10, **kw)

    def write_caps(self, text: str) -> None:
        tmp = self.caps_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.caps_path)


StartProxy = Callable[..., RunningProxy]


@pytest.fixture
def start_proxy(proxy_home: Path, pki: TestPki, tmp_path: Path) -> Iterator[StartProxy]:
    running: list[RunningProxy] = []

    def start(caps_text: str, broker: BrokerPort, home: Path | None = None) -> RunningProxy:
        caps_path = tmp_path / f"caps-{len(running)}.yaml"
        caps_path.write_text(caps_text)
        the_home = home or proxy_home
        settings = ProxySettings(
            home=the_home,
            caps_path=caps_path,
            listen_port=0,
            upstream_cas=(pki.ca_pem,),
            extra_addons=(TestResolver(),),
        )
        thread = ProxyThread(settings, broker).start()
        proxy = RunningProxy(thread, the_home, caps_path, ca_cert_path(the_home))
        running.append(proxy)
        return proxy

    yield start
    for proxy in running:
        proxy.thread.stop()


CAPS_TEMPLATE = """\
version: 1
defaults:
  unmatched: {unmatched}
capabilities:
  - name: github-api
    match:
      hosts: ["api.test:{tls}", "[::1]:{tls}", "xn--bcher-kva.test:{tls}"]
      methods: [GET, POST, PUT]
      paths: ["/repos/**", "/user", "/redirect", "/sse", "/large", "/status/**", "/gzip"]
    transforms:
      - auth: {{credential: github, provider: github_pat}}
      - header: {{name: X-Tenant, action: set, value: 'secrets["tenant-id"]'}}
      - header: {{name: X-Request-Source, action: set, value: '"agent-" + workspace.id'}}
      - header: {{name: Cookie, action: remove}}
      - query:  {{name: tenant, action: set, value: 'secrets["tenant-id"]'}}
  - name: jira
    match:
      hosts: ["other.test:{tls}"]
      paths: ["/rest/**"]
    transforms:
      - auth: {{credential: jira, provider: jira}}
  - name: body-edit
    match:
      hosts: ["api.test:{tls}"]
      methods: [POST]
      paths: ["/body"]
    transforms:
      - body: {{pointer: /metadata/tenant, action: set, value: 'secrets["tenant-id"]'}}
      - body: {{pointer: /x/y, action: set, value: '"v"'}}
  - name: broken
    match:
      hosts: ["api.test:{tls}"]
      paths: ["/broken"]
    transforms:
      - header: {{name: X-Broken, action: set, value: 'request.headers["x-absent"]'}}
      - header: {{name: X-From-Query, action: set, value: 'request.query["q"]'}}
      - auth: {{credential: failing, provider: github_pat}}
  - name: plain-local
    match:
      hosts: ["localhost:{plain}"]
      schemes: [http]
      paths: ["/**"]
    allow_plaintext: true
    transforms:
      - header: {{name: X-Plain, action: set, value: '"yes"'}}
  - name: https-only-local
    match:
      hosts: ["127.0.0.1:{plain}"]
      paths: ["/**"]
    transforms:
      - auth: {{credential: github, provider: github_pat}}
roles:
  researcher:
    capabilities: [github-api, jira, body-edit, broken, plain-local, https-only-local]
  reader:
    capabilities: [jira]
"""


def caps_text(tls: Upstream, plain: Upstream, unmatched: str = "deny") -> str:
    return CAPS_TEMPLATE.format(tls=tls.port, plain=plain.port, unmatched=unmatched)


@dataclass
class World:
    broker: MemoryBroker
    token: str  # org "default", role researcher
    org2_token: str  # org "org2", role researcher (no github credential of its own)
    reader_token: str


@pytest.fixture
def memory_world() -> World:
    broker = MemoryBroker()
    broker.add_credential("github", "github_pat", GITHUB_TOKEN)
    broker.add_credential("jira", "jira", JIRA_TOKEN, config={"username": "bot@example.com"})
    broker.add_credential(
        "failing", "github_pat", "ghp_failingvalue_000000", fail_reason="transient"
    )
    broker.add_secret("tenant-id", TENANT_SECRET)
    broker.add_credential("other-org-github", "github_pat", ORG2_TOKEN, org="org2")
    _, token = broker.add_workspace("researcher")
    _, org2_token = broker.add_workspace("researcher", org="org2", user="mallory")
    _, reader_token = broker.add_workspace("reader")
    return World(broker, token, org2_token, reader_token)


@pytest.fixture
def proxy(
    start_proxy: StartProxy,
    memory_world: World,
    tls_upstream: Upstream,
    plain_upstream: Upstream,
) -> RunningProxy:
    return start_proxy(caps_text(tls_upstream, plain_upstream), memory_world.broker)


__all__ = ["CANARIES", "World", "proxy_authorization"]
