"""The second red-team pass (issue 11), cases that need more than one raw HTTP/1.1
request: the upstream's TLS identity, HTTP/2 shapes (the `h2` library), a real nginx
with two virtual hosts, non-HTTP bytes in a tunnel, and faults inside capgate's hooks.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capgate.broker.decisions import StoredDecision
from capgate.broker.secretvalue import SecretValue
from capgate.broker.types import MintOutcome, PolicyDecision, WireCredential, leak_patterns
from capgate.proxy.addon import inject
from capgate.proxy.addon.runner import ProxySettings, ProxyThread, ca_cert_path
from capgate.proxy.cli.decisions import _row_line
from capgate.proxy.replay.memory_broker import MemoryBroker
from tests.proxy.test_scrub_forms import ENCODERS

from .certs import TestPki, issue_server_cert
from .clients import via_tunnel
from .conftest import CANARIES, GITHUB_TOKEN, TENANT_SECRET, TestResolver, World
from .h2_client import h2_via_tunnel
from .h2_upstream import H2Upstream, start_h2_upstream
from .nginx_vhosts import Nginx, nginx_binary, start_nginx
from .raw_upstream import RawUpstream, header_of, start_raw_upstream
from .test_redteam import RAW_CAPS, Tunnel

pytestmark = pytest.mark.e2e

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def _no_canary(data: bytes | str) -> None:
    text = data if isinstance(data, str) else data.decode("latin-1")
    for canary in CANARIES:
        assert canary not in text


def _rows_after(world: World, before: int, wait: float = 3.0) -> list:
    decisions = world.broker.decisions
    deadline = time.monotonic() + wait
    while len(decisions) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    return decisions[before:]


@pytest.fixture
def raw_upstream(pki: TestPki) -> Iterator[RawUpstream]:
    upstream = start_raw_upstream(str(pki.server_cert_pem), str(pki.server_key_pem))
    upstream.respond = lambda raw: OK
    yield upstream
    upstream.stop()


@pytest.fixture
def raw_proxy(start_proxy, memory_world: World, raw_upstream: RawUpstream):
    return start_proxy(RAW_CAPS.format(port=raw_upstream.port), memory_world.broker)


# -- class 1: the upstream is the host that matched -----------------------------------------


def test_upstream_sni_is_the_matched_host_not_the_agents(raw_proxy, memory_world, raw_upstream):
    """CONNECT api.test with a ClientHello naming other.test: the upstream is asked for
    api.test (an SNI router would otherwise hand the credential to other.test)."""
    reply = via_tunnel(
        raw_proxy.port,
        memory_world.token,
        f"api.test:{raw_upstream.port}",
        path="/repos/x",
        sni="other.test",
        ca=str(raw_proxy.ca),
    )
    assert reply.status == 200
    assert raw_upstream.snis == ["api.test"]
    assert header_of(raw_upstream.requests[-1], "Authorization") == f"Bearer {GITHUB_TOKEN}"


def test_upstream_certificate_is_verified_against_the_matched_host(
    start_proxy, memory_world, pki: TestPki, tmp_path: Path
):
    """An upstream whose certificate is valid for evil.test only, reached as api.test with
    the agent's SNI evil.test: verification is against api.test, so it fails (502) and
    the credential is never sent."""
    cert, key = issue_server_cert(pki, tmp_path / "evil", ("evil.test",))
    evil = start_raw_upstream(str(cert), str(key))
    evil.respond = lambda raw: OK
    try:
        running = start_proxy(RAW_CAPS.format(port=evil.port), memory_world.broker)
        reply = via_tunnel(
            running.port,
            memory_world.token,
            f"api.test:{evil.port}",
            path="/repos/x",
            sni="evil.test",
            ca=str(running.ca),
        )
    finally:
        evil.stop()
    assert reply.status == 502
    assert evil.requests == []
    _no_canary(reply.body)


@pytest.fixture
def nginx(pki: TestPki, tmp_path: Path) -> Iterator[Nginx]:
    if nginx_binary() is None:
        pytest.fail("nginx is not installed: `make test` installs nginx-light")
    server = start_nginx(tmp_path / "nginx", pki.server_cert_pem, pki.server_key_pem)
    yield server
    server.stop()


NGINX_CAPS = """\
version: 1
capabilities:
  - name: api
    match: {{hosts: ["api.test:{port}"], paths: ["/**"]}}
    transforms:
      - auth: {{credential: github, provider: github_pat}}
roles:
  researcher:
    capabilities: [api]
"""


def _h2_get(running, world: World, port: int, path: bytes) -> object:
    return h2_via_tunnel(
        running.port,
        world.token,
        f"api.test:{port}",
        ca=str(running.ca),
        headers=[
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", f"api.test:{port}".encode()),
            (b":path", path),
        ],
    )


def test_http2_absolute_form_path_never_reaches_another_virtual_host(
    start_proxy, memory_world, nginx: Nginx
):
    """An HTTP/2 `:path` of `https://other.test/...` inside a tunnel to api.test would be
    the HTTP/1.1 request line, and nginx routes by it: refused (400 bad_target), and
    neither virtual host sees the credential."""
    running = start_proxy(NGINX_CAPS.format(port=nginx.port), memory_world.broker)
    # control: origin form reaches the api vhost with the credential
    ok = _h2_get(running, memory_world, nginx.port, b"/x")
    assert ok.status == 200 and ok.body == b"vhost api\n"  # type: ignore[attr-defined]
    assert GITHUB_TOKEN in nginx.log("api")
    before = len(memory_world.broker.decisions)
    for target in (f"https://other.test:{nginx.port}/x", "other.test/x", "*"):
        reply = _h2_get(running, memory_world, nginx.port, target.encode())
        assert reply.status == 400, target  # type: ignore[attr-defined]
        assert json.loads(reply.body)["reason"] == "bad_target"  # type: ignore[attr-defined]
    assert nginx.log("other") == ""
    assert nginx.log("api").count("\n") == 1
    rows = _rows_after(memory_world, before)
    assert [r.reason for r in rows] == ["bad_target"] * 3


# -- class 2: framing ----------------------------------------------------------------------


def test_http2_body_without_length_is_framed_for_an_http1_upstream(
    raw_proxy, memory_world, raw_upstream
):
    """An HTTP/2 body without content-length goes to an HTTP/1.1 upstream with one: the
    bytes of a second request inside it stay body, never a request capgate did not see."""
    smuggled = (
        f"GET /admin HTTP/1.1\r\nHost: api.test:{raw_upstream.port}\r\nX-Smuggled: 1\r\n\r\n"
    ).encode()
    reply = h2_via_tunnel(
        raw_proxy.port,
        memory_world.token,
        f"api.test:{raw_upstream.port}",
        ca=str(raw_proxy.ca),
        headers=[
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", f"api.test:{raw_upstream.port}".encode()),
            (b":path", b"/repos/x"),
        ],
        body=smuggled,
        chunks=3,
    )
    assert reply.status == 200
    raw = raw_upstream.requests[-1]
    assert header_of(raw, "Content-Length") == str(len(smuggled))
    assert raw.endswith(smuggled)


def test_non_http_bytes_in_a_tunnel_are_refused_and_audited(raw_proxy, memory_world, raw_upstream):
    """A leading blank line makes mitmproxy see raw TCP, which would skip policy, the
    tripwire and the row: refused, one row with reason not_http, nothing upstream."""
    before = len(memory_world.broker.decisions)
    target = f"api.test:{raw_upstream.port}"
    tunnel = Tunnel(raw_proxy.port, memory_world.token, target, raw_proxy.ca, "api.test")
    try:
        head = f"GET /repos/x HTTP/1.1\r\nHost: {target}\r\nX-Leak: {TENANT_SECRET}\r\n\r\n"
        tunnel.conn.sendall(b"\r\n" + head.encode())
        tunnel.conn.settimeout(2)
        try:
            received = tunnel.conn.recv(65536)
        except (TimeoutError, OSError):
            received = b""
    finally:
        tunnel.close()
    time.sleep(0.3)
    assert raw_upstream.requests == []
    _no_canary(received)
    rows = _rows_after(memory_world, before)
    assert [(r.decision, r.reason) for r in rows] == [("deny", "not_http")]
    assert rows[0].workspace_id is not None


# -- class 3: hooks fail closed ------------------------------------------------------------


def test_raw_bytes_in_an_http2_path_are_recorded_printable(raw_proxy, memory_world, raw_upstream):
    """A raw 0xFF and a terminal escape in `:path` reach the row (and the log) percent-
    encoded: nothing a terminal would act on, nothing a store cannot encode."""
    before = len(memory_world.broker.decisions)
    reply = _h2_get(raw_proxy, memory_world, raw_upstream.port, b"/repos/\xff\x1b[2J")
    assert reply.status in (200, 400)  # type: ignore[attr-defined]
    rows = _rows_after(memory_world, before)
    assert len(rows) == 1
    assert rows[0].path == "/repos/%FF%1B[2J"


def test_an_exception_in_a_response_hook_answers_502_and_writes_a_row(
    raw_proxy, memory_world, raw_upstream, monkeypatch
):
    """Fault injection: scrubbing raises. The agent gets capgate's 502 JSON, never the
    upstream's unscrubbed body, and the row says internal_error."""
    raw_upstream.respond = lambda raw: (
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % len(header_of(raw, "Authorization"))
        + header_of(raw, "Authorization").encode()
    )

    def broken(*args: object) -> None:
        raise RuntimeError("injected fault " + GITHUB_TOKEN)

    monkeypatch.setattr(inject, "scrub_buffered", broken)
    before = len(memory_world.broker.decisions)
    reply = via_tunnel(
        raw_proxy.port,
        memory_world.token,
        f"api.test:{raw_upstream.port}",
        path="/repos/x",
        ca=str(raw_proxy.ca),
    )
    assert reply.status == 502
    assert reply.json()["reason"] == "internal_error"
    _no_canary(reply.body)
    rows = _rows_after(memory_world, before)
    assert [(r.decision, r.reason) for r in rows] == [("deny", "internal_error")]


# -- class 7: operator-pinned values win -----------------------------------------------------

ANTHROPIC_KEY = "sk-ant-CANARYanthropic-0123456789abcdef"
OPENAI_KEY = "sk-CANARYopenai-0123456789abcdefghij"
GRAFANA_KEY = "glsa_CANARYgrafana-0123456789abcdef"
PINNED_CAPS = """\
version: 1
capabilities:
  - name: anthropic
    match: {{hosts: ["api.test:{port}"], paths: ["/v1/messages"]}}
    transforms:
      - auth: {{credential: anthropic, provider: anthropic}}
  - name: openai
    match: {{hosts: ["api.test:{port}"], paths: ["/v1/chat/**"]}}
    transforms:
      - auth: {{credential: openai, provider: openai}}
  - name: grafana
    match: {{hosts: ["api.test:{port}"], paths: ["/api/**"]}}
    transforms:
      - auth: {{credential: grafana, provider: grafana}}
roles:
  researcher:
    capabilities: [anthropic, openai, grafana]
"""


@pytest.fixture
def pinned_proxy(start_proxy, memory_world: World, tls_upstream):
    broker = memory_world.broker
    broker.add_credential("anthropic", "anthropic", ANTHROPIC_KEY)
    broker.add_credential(
        "openai", "openai", OPENAI_KEY, config={"organization": "org-op", "project": "proj-op"}
    )
    broker.add_credential("grafana", "grafana", GRAFANA_KEY, config={"org_id": "7"})
    return start_proxy(PINNED_CAPS.format(port=tls_upstream.port), broker)


def _send(running, world: World, upstream, path: str, headers: list[tuple[str, str]]):
    reply = via_tunnel(
        running.port,
        world.token,
        f"api.test:{upstream.port}",
        path=path,
        headers=headers,
        ca=str(running.ca),
    )
    assert reply.status == 200, reply.body[:200]
    for value in (ANTHROPIC_KEY, OPENAI_KEY, GRAFANA_KEY):
        assert value not in reply.body.decode("latin-1")
    return upstream.log.items[-1]


def test_auth_removes_every_header_the_provider_reads_a_credential_from(
    pinned_proxy, memory_world, tls_upstream
):
    """The anthropic SDK sends `Authorization: Bearer <dummy>` beside `x-api-key`: only
    capgate's x-api-key reaches the upstream, no Authorization at all."""
    seen = _send(
        pinned_proxy,
        memory_world,
        tls_upstream,
        "/v1/messages",
        [("Authorization", "Bearer sk-ant-dummy"), ("X-Api-Key", "agent-own")],
    )
    assert seen.header("x-api-key") == [ANTHROPIC_KEY]
    assert seen.header("Authorization") == []
    assert seen.header("anthropic-version") == ["2023-06-01"]


def test_an_agent_may_choose_a_default_companion_but_not_a_pinned_one(
    pinned_proxy, memory_world, tls_upstream
):
    """anthropic-version is the provider's default (the agent's own wins); OpenAI's
    organization and project were set by the operator (theirs replace the agent's)."""
    seen = _send(
        pinned_proxy,
        memory_world,
        tls_upstream,
        "/v1/messages",
        [("anthropic-version", "2025-01-01")],
    )
    assert seen.header("anthropic-version") == ["2025-01-01"]
    seen = _send(
        pinned_proxy,
        memory_world,
        tls_upstream,
        "/v1/chat/completions",
        [("OpenAI-Organization", "org-agent"), ("openai-project", "proj-agent")],
    )
    assert seen.header("OpenAI-Organization") == ["org-op"]
    assert seen.header("OpenAI-Project") == ["proj-op"]
    assert seen.header("Authorization") == [f"Bearer {OPENAI_KEY}"]
    seen = _send(
        pinned_proxy, memory_world, tls_upstream, "/api/dashboards", [("X-Grafana-Org-Id", "1")]
    )
    assert seen.header("X-Grafana-Org-Id") == ["7"]


# -- class 4: every echo path ----------------------------------------------------------------

ECHO_CAPS = """\
version: 1
capabilities:
  - name: store
    match: {{hosts: ["api.test:{port}"], paths: ["/store"]}}
    transforms:
      - header: {{name: X-Tenant, action: set, value: 'secrets["tenant-id"]'}}
  - name: read
    match: {{hosts: ["api.test:{port}"], paths: ["/read/**"]}}
  - name: github
    match: {{hosts: ["other.test:{port}"], paths: ["/**"]}}
    transforms:
      - auth: {{credential: github, provider: github_pat}}
roles:
  researcher:
    capabilities: [store, read, github]
"""


@pytest.fixture
def echo_proxy(start_proxy, memory_world: World, raw_upstream: RawUpstream):
    return start_proxy(ECHO_CAPS.format(port=raw_upstream.port), memory_world.broker)


def _serve_body(upstream: RawUpstream, body: bytes, chunked: bool = False) -> None:
    if chunked:
        pieces = [body[i : i + 5] for i in range(0, len(body), 5)]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        upstream.respond = lambda raw: head + framed
    else:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        upstream.respond = lambda raw: head + body


def _read(running, world: World, upstream: RawUpstream, path: str = "/read/x", **kw):
    return via_tunnel(
        running.port,
        world.token,
        f"api.test:{upstream.port}",
        path=path,
        ca=str(running.ca),
        **kw,
    )


def test_a_value_stored_through_one_capability_is_scrubbed_when_read_through_another(
    echo_proxy, memory_world, raw_upstream
):
    """`read` injects nothing, yet its responses are scrubbed of every value the
    workspace holds: the tenant secret `store` wrote upstream, the GitHub credential."""
    for value in (TENANT_SECRET, GITHUB_TOKEN):
        _serve_body(raw_upstream, b'{"stored": "' + value.encode() + b'"}')
        reply = _read(echo_proxy, memory_world, raw_upstream)
        assert reply.status == 200
        _no_canary(reply.body)
        assert b"[REDACTED:" in reply.body


def test_range_is_stripped_from_requests_whose_responses_are_scrubbed(
    echo_proxy, memory_world, raw_upstream
):
    """Partial answers could hand a value out a few bytes at a time, each piece too short
    to match: Range and If-Range never reach the upstream (it answers 200, whole)."""
    _serve_body(raw_upstream, b"ok")
    reply = _read(
        echo_proxy,
        memory_world,
        raw_upstream,
        headers=[("Range", "bytes=0-3"), ("If-Range", '"etag"')],
    )
    assert reply.status == 200
    assert header_of(raw_upstream.requests[-1], "Range") == ""
    assert header_of(raw_upstream.requests[-1], "If-Range") == ""


ECHO_ENCODERS = ENCODERS


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    encoder=st.sampled_from(sorted(ECHO_ENCODERS)),
    value=st.sampled_from([TENANT_SECRET, GITHUB_TOKEN, f"Bearer {GITHUB_TOKEN}"]),
    chunked=st.booleans(),
    filler=st.text(alphabet='ab\\%u0" /', max_size=20),
)
def test_no_echo_form_of_a_held_value_reaches_the_agent(
    echo_proxy, memory_world, raw_upstream, encoder, value, chunked, filler
):
    """Through a real proxy: whichever standard encoding the upstream echoes a held value
    in, buffered or chunked, the agent never receives the value or that form of it."""
    encoded = ECHO_ENCODERS[encoder](value).encode()
    _serve_body(raw_upstream, filler.encode() + encoded + filler.encode(), chunked=chunked)
    reply = _read(echo_proxy, memory_world, raw_upstream)
    assert reply.status == 200
    assert encoded not in reply.body
    _no_canary(reply.body)


# -- class 5: the tripwire and the logs ------------------------------------------------------


def test_a_value_in_the_sni_trips_and_refuses_the_connection(raw_proxy, memory_world, raw_upstream):
    """The ClientHello's server name carries a stored value: audited as a tripwire row
    (host redacted), and the request on that connection is refused; nothing upstream."""
    before = len(memory_world.broker.decisions)
    reply = via_tunnel(
        raw_proxy.port,
        memory_world.token,
        f"api.test:{raw_upstream.port}",
        path="/repos/x",
        sni=f"{TENANT_SECRET}.api.test",
        ca=str(raw_proxy.ca),
    )
    assert reply.status == 403
    assert raw_upstream.requests == []
    rows = _rows_after(memory_world, before)
    time.sleep(0.2)
    rows = memory_world.broker.decisions[before:]
    assert [(r.decision, r.reason) for r in rows] == [("tripwire", "secret:tenant-id")] * 2
    for row in rows:
        assert TENANT_SECRET.lower() not in repr(row).lower()


MINTED_TOKEN = "ya29.CANARYminted-access-token-0123456789"


class MintingBroker(MemoryBroker):
    """The memory broker with one OAuth credential whose mint returns an access token
    (the addon's handling of minted tokens is what is under test, not the token call)."""

    async def mint(self, activation, credential_name):  # type: ignore[no-untyped-def]
        if credential_name != "google":
            return await super().mint(activation, credential_name)
        token = SecretValue(MINTED_TOKEN)
        wire = WireCredential(
            headers=(("Authorization", SecretValue(f"Bearer {MINTED_TOKEN}")),),
            scrub=leak_patterns("credential:google", token),
            oauth=True,
        )
        return MintOutcome(credential_name, wire)


OAUTH_CAPS = """\
version: 1
capabilities:
  - name: google
    match: {{hosts: ["api.test:{port}"], paths: ["/drive/**"]}}
    transforms:
      - auth: {{credential: google, provider: google}}
  - name: other
    match: {{hosts: ["api.test:{port}"], paths: ["/other/**"]}}
roles:
  researcher:
    capabilities: [google, other]
"""


def test_a_minted_access_token_sent_back_by_the_agent_trips(
    start_proxy, pki: TestPki, raw_upstream: RawUpstream, tmp_path: Path
):
    broker = MintingBroker()
    broker.add_credential(
        "google",
        "google",
        '{"refresh_token": "1//CANARYrefresh"}',
        kind="oauth2_authorization_code",
        config={"client_id": "cid"},
    )
    _, token = broker.add_workspace("researcher")
    running = start_proxy(OAUTH_CAPS.format(port=raw_upstream.port), broker)
    target = f"api.test:{raw_upstream.port}"
    first = via_tunnel(running.port, token, target, path="/drive/x", ca=str(running.ca))
    assert first.status == 200
    assert header_of(raw_upstream.requests[-1], "Authorization") == f"Bearer {MINTED_TOKEN}"
    raw_upstream.requests.clear()
    before = len(broker.decisions)
    leak = via_tunnel(
        running.port,
        token,
        target,
        path="/other/x",
        headers=[("X-Debug", MINTED_TOKEN)],
        ca=str(running.ca),
    )
    assert leak.status == 403
    assert raw_upstream.requests == []
    rows = broker.decisions[before:]
    assert [(r.decision, r.reason) for r in rows] == [("tripwire", "credential:google")]


def test_control_characters_never_reach_the_access_log(
    raw_proxy, memory_world, raw_upstream, caplog
):
    caplog.set_level("INFO", logger="capgate.access")
    _h2_get(raw_proxy, memory_world, raw_upstream.port, b"/repos/\x1b]0;owned\x07\x1b[2J")
    time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if r.name == "capgate.access"]
    assert lines and all(line.isprintable() for line in lines), lines
    assert any("%1B]0;owned%07%1B[2J" in line for line in lines)


def test_capgate_decisions_shows_old_rows_without_their_control_characters():
    """A row written before rows were made printable still prints safely."""
    row = PolicyDecision(
        at=0.0, org_id="o", workspace_id="w", capability=None, decision="deny",
        reason="no_capability", method="GET", scheme="https", host="api.test", port=443,
        path="/x\x1b[2J\x07", transforms_applied=(), transforms_failed={}, auth_failures={},
        upstream_status=None, duration_ms=1.0,
    )  # fmt: skip
    line = _row_line(StoredDecision(1, row))
    assert line.isprintable() and "\\x1b[2J\\x07" in line


# -- class 6: bounded resources before authentication ----------------------------------------


def _raw_exchange(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Send `data` (no end of head), then read what the proxy answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        with contextlib.suppress(OSError):  # the proxy may close while we still send
            sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass
        return received


def test_an_unfinished_request_head_is_not_buffered_without_bound(proxy, plain_upstream):
    """No token, no end of head, 200 KB of one header: 431 and the connection closes
    (it used to be buffered for as long as the client kept sending)."""
    head = f"GET http://localhost:{plain_upstream.port}/x HTTP/1.1\r\nX-Fill: ".encode()
    answer = _raw_exchange(proxy.port, head + b"a" * 200_000)
    assert answer.startswith(b"HTTP/1.1 431")


def test_a_request_head_with_too_many_header_lines_is_refused(proxy, plain_upstream):
    head = f"GET http://localhost:{plain_upstream.port}/x HTTP/1.1\r\n".encode()
    answer = _raw_exchange(proxy.port, head + b"X-A: 1\r\n" * 1000 + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431")


def test_body_limit_applies_to_http2_bodies_without_length(
    proxy_home, pki: TestPki, tmp_path: Path, memory_world, raw_upstream
):
    """`--body-limit 1k`: an HTTP/2 body without content-length is buffered (to be
    framed) only up to the limit; past it 413, nothing upstream, row body_too_large."""
    caps = tmp_path / "caps.yaml"
    caps.write_text(RAW_CAPS.format(port=raw_upstream.port))
    settings = ProxySettings(
        home=proxy_home,
        caps_path=caps,
        listen_port=0,
        upstream_cas=(pki.ca_pem,),
        body_limit="1k",
        extra_addons=(TestResolver(),),
    )
    thread = ProxyThread(settings, memory_world.broker).start()
    try:
        before = len(memory_world.broker.decisions)
        reply = h2_via_tunnel(
            thread.port,
            memory_world.token,
            f"api.test:{raw_upstream.port}",
            ca=str(ca_cert_path(proxy_home)),
            headers=[
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", f"api.test:{raw_upstream.port}".encode()),
                (b":path", b"/repos/x"),
            ],
            body=b"x" * 8192,
            chunks=8,
        )
        rows = _rows_after(memory_world, before)
    finally:
        thread.stop()
    assert reply.status == 413 or reply.reset
    assert raw_upstream.requests == []
    assert [(r.decision, r.reason) for r in rows] == [("deny", "body_too_large")]


GLOB_CAPS = """\
version: 1
capabilities:
  - name: globbed
    match: {{hosts: ["api.test:{port}"], paths: ["/a*a*a*b"]}}
roles:
  researcher:
    capabilities: [globbed]
"""


def test_a_path_built_to_make_a_glob_backtrack_is_answered(start_proxy, memory_world, raw_upstream):
    """12 KB of `a` against `/a*a*a*b`: a backtracking matcher needs minutes (cubic) on
    the proxy's single event loop; the linear one answers, and so does the next agent."""
    running = start_proxy(GLOB_CAPS.format(port=raw_upstream.port), memory_world.broker)
    target = f"api.test:{raw_upstream.port}"
    slow = via_tunnel(
        running.port, memory_world.token, target, path="/" + "a" * 12_000, ca=str(running.ca)
    )
    assert slow.status == 403
    ok = via_tunnel(running.port, memory_world.token, target, path="/aXaYaZb", ca=str(running.ca))
    assert ok.status == 200


# -- the same with curl ----------------------------------------------------------------------


def _curl(running, token: str, url: str, *args: str) -> tuple[int, bytes]:
    command = ["curl", "-sS", "--max-time", "10", "--cacert", str(running.ca)]
    command += ["-x", running.url(token), "-o", "-", "-w", "\n%{http_code}", *args, url]
    done = subprocess.run(command, capture_output=True, timeout=20, check=False)
    body, _, status = done.stdout.rpartition(b"\n")
    return int(status or 0), body


def test_curl_sdk_style_dummy_authorization_never_reaches_the_upstream(
    pinned_proxy, memory_world, tls_upstream
):
    status, body = _curl(
        pinned_proxy,
        memory_world.token,
        f"https://api.test:{tls_upstream.port}/v1/messages",
        "-H",
        "Authorization: Bearer sk-ant-dummy",
        "-H",
        "x-api-key: agent-own",
    )
    assert status == 200
    seen = tls_upstream.log.items[-1]
    assert seen.header("x-api-key") == [ANTHROPIC_KEY]
    assert seen.header("Authorization") == []
    assert ANTHROPIC_KEY.encode() not in body


@pytest.mark.parametrize("encoder", ["quote", "json_escaped_slash", "json_u_non_alnum"])
@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_curl_never_receives_an_encoded_echo(
    echo_proxy, memory_world, raw_upstream, encoder, version
):
    value = f"Bearer {GITHUB_TOKEN}/{TENANT_SECRET}"
    encoded = ENCODERS[encoder](value).encode()
    _serve_body(raw_upstream, b'{"echo": "' + encoded + b'"}')
    status, body = _curl(
        echo_proxy, memory_world.token, f"https://api.test:{raw_upstream.port}/read/x", version
    )
    assert status == 200
    assert encoded not in body
    _no_canary(body)


@pytest.mark.parametrize("length", [True, False])
def test_http2_request_trailers_carry_nothing_upstream(
    raw_proxy, memory_world, raw_upstream, length
):
    """An HTTP/2 trailer section is a second header block: an agent's Authorization or a
    stored value there must not reach the upstream beside the stamped credential."""
    body = b'{"a": 1}'
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", f"api.test:{raw_upstream.port}".encode()),
        (b":path", b"/repos/x"),
    ]
    if length:
        headers.append((b"content-length", str(len(body)).encode()))
    reply = h2_via_tunnel(
        raw_proxy.port,
        memory_world.token,
        f"api.test:{raw_upstream.port}",
        ca=str(raw_proxy.ca),
        headers=headers,
        body=body,
        trailers=[(b"authorization", b"Bearer agent-own"), (b"x-note", TENANT_SECRET.encode())],
    )
    assert reply.status in (200, 400, 403, 502) or reply.reset
    for raw in raw_upstream.requests:
        assert b"agent-own" not in raw
        assert TENANT_SECRET.encode() not in raw.partition(b"\r\n\r\n")[2]


@pytest.fixture
def h2_upstream(pki: TestPki) -> Iterator[H2Upstream]:
    upstream = start_h2_upstream(str(pki.server_cert_pem), str(pki.server_key_pem))
    yield upstream
    upstream.stop()


@pytest.mark.parametrize("length", [True, False])
def test_http2_request_trailers_never_reach_an_http2_upstream(
    start_proxy, memory_world, h2_upstream, length
):
    running = start_proxy(RAW_CAPS.format(port=h2_upstream.port), memory_world.broker)
    body = b'{"a": 1}'  # (mitmproxy sends request trailers after `request`, streamed or not)
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", f"api.test:{h2_upstream.port}".encode()),
        (b":path", b"/repos/x"),
    ]
    if length:
        headers.append((b"content-length", str(len(body)).encode()))
    reply = h2_via_tunnel(
        running.port,
        memory_world.token,
        f"api.test:{h2_upstream.port}",
        ca=str(running.ca),
        headers=headers,
        body=body,
        chunks=4,
        alpn=("h2",),
        trailers=[(b"authorization", b"Bearer agent-own")],
    )
    assert reply.status == 200
    time.sleep(0.3)
    assert h2_upstream.requests
    assert all("agent-own" not in repr(t) for t in h2_upstream.trailers)


def test_an_upstream_response_head_without_end_is_not_buffered_without_bound(
    raw_proxy, memory_world, raw_upstream
):
    """The upstream sends 300 KB of one header and keeps the connection open: capgate
    answers 502 while the upstream still holds it (it used to wait for the upstream,
    buffering all it sent), and the client's read does not time out."""
    raw_upstream.respond = lambda raw: b"HTTP/1.1 200 OK\r\nX-Fill: " + b"a" * 300_000
    raw_upstream.linger = 30.0  # far beyond the client's 10 s timeout
    reply = via_tunnel(
        raw_proxy.port,
        memory_world.token,
        f"api.test:{raw_upstream.port}",
        path="/repos/x",
        ca=str(raw_proxy.ca),
    )
    assert reply.status == 502
    _no_canary(reply.body)
