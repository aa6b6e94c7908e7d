"""Red-team cases that do not fit the one-request shape of the attack corpus: several
requests on one connection, HTTP/2, a resolver that behaves like the operating system's,
and upstreams that answer with odd bytes (1xx, trailers, upgrades, stacked encodings).
"""

from __future__ import annotations

import gzip
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from capgate.proxy.addon.runner import ProxySettings, ProxyThread, ca_cert_path

from .certs import TestPki
from .clients import Reply, _read_reply, proxy_authorization, via_absolute, via_tunnel
from .conftest import CANARIES, GITHUB_TOKEN, TENANT_SECRET, TestResolver, World, caps_text
from .raw_upstream import RawUpstream, header_of, start_raw_upstream
from .upstream import Upstream, start_upstream

pytestmark = pytest.mark.e2e

BEARER = f"Bearer {GITHUB_TOKEN}"


def _no_canary(data: bytes | str) -> None:
    text = data if isinstance(data, str) else data.decode("latin-1")
    for canary in CANARIES:
        assert canary not in text


# -- one tunnel, several requests ----------------------------------------------------------


class Tunnel:
    """A kept-alive TLS tunnel through the proxy; `send` writes one request, reads one reply."""

    def __init__(self, proxy_port: int, token: str, connect: str, ca: Path, sni: str) -> None:
        sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
        head = f"CONNECT {connect} HTTP/1.1\r\nHost: {connect}\r\n"
        head += f"Proxy-Authorization: {proxy_authorization(token)}\r\n\r\n"
        sock.sendall(head.encode())
        answer = b""
        while not answer.endswith(b"\r\n\r\n"):
            answer += sock.recv(1)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        context = ssl.create_default_context(cafile=str(ca))
        context.check_hostname = False
        self.conn = context.wrap_socket(sock, server_hostname=sni)
        self.stream = self.conn.makefile("rb")

    def send(self, raw: str) -> Reply:
        self.conn.sendall(raw.encode())
        return _read_reply(self.stream)

    def close(self) -> None:
        self.conn.close()


def test_second_request_in_a_tunnel_is_checked_on_its_own_host(proxy, memory_world, tls_upstream):
    """Each request inside one tunnel is checked; the first one's approval carries nothing."""
    target = f"api.test:{tls_upstream.port}"
    tunnel = Tunnel(proxy.port, memory_world.token, target, proxy.ca, "api.test")
    try:
        first = tunnel.send(f"GET /repos/x HTTP/1.1\r\nHost: {target}\r\n\r\n")
        assert first.status == 200
        second = tunnel.send(
            f"GET /rest/x HTTP/1.1\r\nHost: other.test:{tls_upstream.port}\r\n\r\n"
        )
        assert second.status == 403 and second.json()["reason"] == "host_mismatch"
    finally:
        tunnel.close()


def test_revoking_the_token_mid_tunnel_refuses_the_next_request(proxy, memory_world, tls_upstream):
    """A tunnel authenticated before a revoke: its next request gets 407, no credential."""
    target = f"api.test:{tls_upstream.port}"
    tunnel = Tunnel(proxy.port, memory_world.token, target, proxy.ca, "api.test")
    try:
        assert tunnel.send(f"GET /repos/x HTTP/1.1\r\nHost: {target}\r\n\r\n").status == 200
        tls_upstream.log.clear()
        memory_world.broker.revoke(memory_world.token)
        reply = tunnel.send(f"GET /repos/y HTTP/1.1\r\nHost: {target}\r\n\r\n")
        assert reply.status == 407
        assert tls_upstream.log.items == []
    finally:
        tunnel.close()


def test_plain_keep_alive_authenticates_every_request(proxy, memory_world, plain_upstream):
    """On a plain (non-CONNECT) connection the first request's token is not remembered."""
    url = f"http://localhost:{plain_upstream.port}/x"
    auth = proxy_authorization(memory_world.token)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        stream = sock.makefile("rb")
        host = f"localhost:{plain_upstream.port}"
        head = f"GET {url} HTTP/1.1\r\nHost: {host}\r\n"
        sock.sendall(f"{head}Proxy-Authorization: {auth}\r\n\r\n".encode())
        assert _read_reply(stream).status == 200
        sock.sendall(f"{head}\r\n".encode())
        assert _read_reply(stream).status == 407


def test_pipelined_request_without_token_behind_an_authenticated_one(
    proxy, memory_world, plain_upstream
):
    """Two requests in one write: the second one, unauthenticated, still gets 407."""
    url = f"http://localhost:{plain_upstream.port}/x"
    host = f"localhost:{plain_upstream.port}"
    auth = proxy_authorization(memory_world.token)
    both = (
        f"GET {url} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {auth}\r\n\r\n"
        f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(both.encode())
        stream = sock.makefile("rb")
        assert _read_reply(stream).status == 200
        assert _read_reply(stream).status == 407


# -- HTTP/2 ---------------------------------------------------------------------------------


def test_http2_authority_that_names_another_host_is_denied(proxy, memory_world, tls_upstream):
    """HTTP/2 from the agent: `:authority` (httpx builds it from the Host header) is checked
    like a Host header. mitmproxy mirrors the upstream's ALPN, and the echo upstreams speak
    only HTTP/1.1, so unless an h2 upstream answers the tunnel falls back to HTTP/1.1; the
    check is the same code (`authority_mismatch` reads both `Host` and `:authority`)."""
    context = ssl.create_default_context(cafile=str(proxy.ca))
    with httpx.Client(
        proxy=proxy.url(memory_world.token), verify=context, http2=True, timeout=10
    ) as client:
        ok = client.get(tls_upstream.url("/repos/x", host="api.test"))
        assert ok.status_code == 200
        _no_canary(ok.content)
        tls_upstream.log.clear()
        reply = client.get(
            tls_upstream.url("/rest/x", host="api.test"),
            headers={"Host": f"other.test:{tls_upstream.port}"},
        )
    assert reply.status_code == 403 and reply.json()["reason"] == "host_mismatch"
    assert tls_upstream.log.items == []


# -- destination spelling: what is matched is what is connected to -------------------------


class OsLikeResolver:
    """Test-only: resolves as getaddrinfo would (Python's `idna` codec, IDNA 2003), and
    sends every name but `api.test` to a second upstream (a look-alike domain someone
    else registered)."""

    def __init__(self, evil_port: int) -> None:
        self.evil_port = evil_port
        self.seen: list[str] = []

    def server_connect(self, data: Any) -> None:
        host = data.server.address[0]
        resolved = host.encode("idna").decode("ascii")
        self.seen.append(resolved)
        if resolved != "api.test":
            data.server.address = ("127.0.0.1", self.evil_port)


@pytest.fixture
def evil_upstream(pki: TestPki) -> Iterator[Upstream]:
    upstream = start_upstream(str(pki.server_cert_pem), str(pki.server_key_pem))
    yield upstream
    upstream.stop()


def _start(home: Path, pki: TestPki, tmp_path: Path, caps: str, broker: Any, *extra: Any):
    caps_path = tmp_path / "caps-redteam.yaml"
    caps_path.write_text(caps)
    settings = ProxySettings(
        home=home,
        caps_path=caps_path,
        listen_port=0,
        upstream_cas=(pki.ca_pem,),
        extra_addons=(*extra, TestResolver()),
    )
    return ProxyThread(settings, broker).start()


SPOOF_CAPS = """\
version: 1
capabilities:
  - name: api
    match:
      hosts: ["api.test:{tls}"]
      paths: ["/**"]
    transforms:
      - auth: {{credential: github, provider: github_pat}}
  - name: plain-api
    match:
      hosts: ["api.test:{plain}"]
      schemes: [http]
      paths: ["/**"]
    allow_plaintext: true
    transforms:
      - auth: {{credential: github, provider: github_pat}}
roles:
  researcher:
    capabilities: [api, plain-api]
"""

# `xn--pi-f8r` is the IDNA 2003 A-label of `ᴬpi` (U+1D2C): mitmproxy decodes it to
# `ᴬpi.test`, UTS-46 (how capgate normalises) maps that to `api.test`, and the resolver
# encodes it back to `xn--pi-f8r.test`, a different domain that anyone could register.
# (mitmproxy itself refuses raw UTF-8 targets and A-labels that do not round-trip.)
SPOOFS = ["xn--pi-f8r.test", "XN--PI-F8R.TEST."]


@pytest.mark.parametrize("target", SPOOFS)
def test_connect_to_a_uts46_spelling_goes_where_it_matched(
    target, proxy_home, pki, tmp_path, memory_world, tls_upstream, plain_upstream, evil_upstream
):
    """A CONNECT target that normalises to a capability host is connected to as the
    normalised host, never as written (which the resolver could map elsewhere)."""
    resolver = OsLikeResolver(evil_upstream.port)
    caps = SPOOF_CAPS.format(tls=tls_upstream.port, plain=plain_upstream.port)
    thread = _start(proxy_home, pki, tmp_path, caps, memory_world.broker, resolver)
    try:
        reply = via_tunnel(
            thread.port,
            memory_world.token,
            f"{target}:{tls_upstream.port}",
            path="/repos/x",
            host_header=f"api.test:{tls_upstream.port}",
            sni="api.test",
            ca=str(ca_cert_path(proxy_home)),
        )
    finally:
        thread.stop()
    assert evil_upstream.log.items == []
    assert reply.status in (200, 403), reply.body[:200]  # 403: capgate refuses the name
    if reply.status == 200:
        assert resolver.seen == ["api.test"]
        assert tls_upstream.log.items[-1].header("Authorization") == [BEARER]
    else:
        assert resolver.seen == []


@pytest.mark.parametrize("target", SPOOFS)
def test_absolute_form_to_a_uts46_spelling_goes_where_it_matched(
    target, proxy_home, pki, tmp_path, memory_world, tls_upstream, plain_upstream, evil_upstream
):
    """The same for a plain-http absolute-form URL (a capability with allow_plaintext)."""
    resolver = OsLikeResolver(evil_upstream.port)
    caps = SPOOF_CAPS.format(tls=tls_upstream.port, plain=plain_upstream.port)
    thread = _start(proxy_home, pki, tmp_path, caps, memory_world.broker, resolver)
    try:
        reply = via_absolute(
            thread.port,
            memory_world.token,
            f"http://{target}:{plain_upstream.port}/x",
            host_header=f"api.test:{plain_upstream.port}",
        )
    finally:
        thread.stop()
    assert evil_upstream.log.items == []
    assert reply.status in (200, 400, 403), reply.body[:200]  # a refusal of the name is fine
    assert resolver.seen == (["api.test"] if reply.status == 200 else [])


# -- upstreams that answer with odd bytes ---------------------------------------------------

RAW_CAPS = """\
version: 1
capabilities:
  - name: raw
    match:
      hosts: ["api.test:{port}"]
      paths: ["/**"]
    transforms:
      - auth: {{credential: github, provider: github_pat}}
      - header: {{name: X-Tenant, action: set, value: 'secrets["tenant-id"]'}}
roles:
  researcher:
    capabilities: [raw]
"""


@pytest.fixture
def raw_upstream(pki: TestPki) -> Iterator[RawUpstream]:
    upstream = start_raw_upstream(str(pki.server_cert_pem), str(pki.server_key_pem))
    yield upstream
    upstream.stop()


@pytest.fixture
def raw_proxy(start_proxy, memory_world: World, raw_upstream: RawUpstream):
    return start_proxy(RAW_CAPS.format(port=raw_upstream.port), memory_world.broker)


def _raw_tunnel_bytes(proxy, world: World, upstream: RawUpstream, request: str) -> bytes:
    """CONNECT to the raw upstream, send `request` as is, return every byte that comes back."""
    target = f"api.test:{upstream.port}"
    tunnel = Tunnel(proxy.port, world.token, target, proxy.ca, "api.test")
    try:
        tunnel.conn.sendall(request.replace("{host}", target).encode())
        tunnel.conn.settimeout(0.5)
        received = b""
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                data = tunnel.conn.recv(65536)
            except (TimeoutError, ssl.SSLError, OSError):
                break
            if not data:
                break
            received += data
        return received
    finally:
        tunnel.close()


def _auth_of(raw: bytes) -> bytes:
    return header_of(raw, "Authorization").encode()


def test_request_trailers_cannot_carry_an_agent_authorization(
    raw_proxy, memory_world, raw_upstream
):
    """A chunked body's trailer section is a second header block: an agent's Authorization
    there must not reach the upstream next to the stamped one. (mitmproxy 12 refuses HTTP/1
    request trailers outright: the flow errors and nothing is forwarded.)"""
    request = (
        "POST /repos/x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
        "Trailer: Authorization\r\nConnection: close\r\n\r\n"
        "2\r\nhi\r\n0\r\nAuthorization: Bearer agent-own\r\n\r\n"
    )
    _raw_tunnel_bytes(raw_proxy, memory_world, raw_upstream, request)
    assert all(b"agent-own" not in raw for raw in raw_upstream.requests)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            lambda auth: (
                b"HTTP/1.1 200 OK\r\n" + auth.split(b" ")[1] + b": 1\r\n"
                b"Content-Length: 2\r\nConnection: close\r\n\r\nok"
            ),
            id="value_as_header_name",
        ),
        pytest.param(
            lambda auth: (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                b"Trailer: X-Echo\r\nConnection: close\r\n\r\n2\r\nok\r\n0\r\nX-Echo: "
                + auth
                + b"\r\n\r\n"
            ),
            id="value_in_response_trailer",
        ),
        pytest.param(
            lambda auth: (
                b"HTTP/1.1 103 Early Hints\r\nLink: </x?a="
                + auth.replace(b" ", b"+")
                + b">\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            ),
            id="value_in_1xx_response",
        ),
        pytest.param(
            lambda auth: (
                b"HTTP/1.1 200 OK\r\nSet-Cookie: s="
                + auth.replace(b" ", b"_")
                + b"; Path=/\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            ),
            id="value_in_set_cookie",
        ),
        pytest.param(
            lambda auth: (
                lambda body: (
                    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip, gzip\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
                )
            )(gzip.compress(gzip.compress(b'{"echo": "' + auth + b'"}'))),
            id="value_under_two_stacked_encodings",
        ),
        pytest.param(
            lambda auth: (
                lambda body: (
                    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
                    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                    + b"".join(
                        b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7])
                        for i in range(0, len(body), 7)
                    )
                    + b"0\r\n\r\n"
                )
            )(gzip.compress(b'{"echo": "' + auth + b'"}' * 3)),
            id="value_in_gzip_stream_split_across_chunks",
        ),
        pytest.param(
            lambda auth: (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n"
                + bytes([0x81, len(auth)])
                + auth
            ),
            id="value_in_websocket_message",
        ),
        pytest.param(
            lambda auth: (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\n"
                b"Connection: Upgrade\r\n\r\nraw bytes after the upgrade: " + auth
            ),
            id="value_after_a_non_websocket_upgrade",
        ),
        # -- second pass (issue 11): echo paths beyond headers and bodies
        pytest.param(
            lambda auth: (
                b"HTTP/1.1 200 OK " + auth + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            ),
            id="value_in_reason_phrase",
        ),
        pytest.param(
            lambda auth: (
                b"HTTP/1.1 103 " + auth + b"\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            ),
            id="value_in_1xx_reason_phrase",
        ),
        pytest.param(
            lambda auth: b"HTTP/1.1 200 OK\r\nX-Broken " + auth + b"\r\n\r\nok",
            id="value_in_mitmproxys_error_page_for_a_malformed_head",
        ),
        pytest.param(
            lambda auth: b"HTTP/1.1 " + auth + b"\r\n\r\n",
            id="value_in_a_malformed_status_line",
        ),
        pytest.param(
            lambda auth: (
                lambda body: (
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n"
                    b"Connection: close\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
                )
            )(gzip.compress(b'{"echo": "' + auth + b'"}')),
            id="value_under_transfer_encoding_gzip",
        ),
        pytest.param(
            lambda auth: (
                b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-%d/100\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                % (len(auth) - 1, len(auth))
                + auth
            ),
            id="value_in_a_partial_response",
        ),
    ],
)
def test_upstream_cannot_echo_the_credential_past_the_scrubber(
    answer, raw_proxy, memory_world, raw_upstream
):
    """Whatever shape the upstream's answer takes, the injected value does not reach the
    agent in a form it can read (a refused or cut answer is fine)."""
    raw_upstream.respond = lambda raw: answer(_auth_of(raw))
    upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    upgrade += "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    request = "GET /repos/x HTTP/1.1\r\nHost: {host}\r\nTE: trailers\r\n" + upgrade + "\r\n"
    received = _raw_tunnel_bytes(raw_proxy, memory_world, raw_upstream, request)
    assert raw_upstream.requests and _auth_of(raw_upstream.requests[-1]) == BEARER.encode()
    _no_canary(received)
    for layer in _decoded_layers(received):
        _no_canary(layer)


def _masked_text_frame(payload: bytes) -> bytes:
    """A client-to-server WebSocket text frame (clients must mask)."""
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


@pytest.mark.parametrize(
    ("payload", "forwarded"),
    [
        pytest.param(b"hello upstream", True, id="ordinary_message"),
        pytest.param(b"leak: " + GITHUB_TOKEN.encode(), False, id="message_carrying_credential"),
    ],
)
def test_websocket_messages_from_the_agent_go_through_the_tripwire(
    payload, forwarded, raw_proxy, memory_world, raw_upstream
):
    """After an upgrade, a message from the agent that carries a stored value is dropped
    (the tripwire); other messages are forwarded."""
    raw_upstream.linger = 1.0
    raw_upstream.respond = lambda raw: (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )
    target = f"api.test:{raw_upstream.port}"
    tunnel = Tunnel(raw_proxy.port, memory_world.token, target, raw_proxy.ca, "api.test")
    try:
        tunnel.conn.sendall(
            (
                f"GET /repos/x HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ).encode()
        )
        tunnel.conn.settimeout(2)
        assert b" 101 " in tunnel.conn.recv(65536)
        tunnel.conn.sendall(_masked_text_frame(payload))
        time.sleep(1.2)
    finally:
        tunnel.close()
    arrived = b"".join(raw_upstream.after_answer)
    unmasked = _unmask_all(arrived)
    assert (payload in unmasked) is forwarded
    assert GITHUB_TOKEN.encode() not in unmasked


def _unmask_all(data: bytes) -> bytes:
    """Payloads of the (masked, short) client frames in `data`, concatenated."""
    out, i = b"", 0
    while i + 6 <= len(data):
        length = data[i + 1] & 0x7F
        mask = data[i + 2 : i + 6]
        body = data[i + 6 : i + 6 + length]
        out += bytes(b ^ mask[j % 4] for j, b in enumerate(body))
        i += 6 + length
    return out


def _decoded_layers(received: bytes) -> list[bytes]:
    """Every gzip member the agent could unpack from the reply, repeatedly."""
    found, todo = [], [received]
    while todo:
        data = todo.pop()
        start = data.find(b"\x1f\x8b")
        while start >= 0:
            try:
                inner = gzip.decompress(data[start:])
            except (OSError, EOFError, ValueError):
                inner = b""
            if inner:
                found.append(inner)
                todo.append(inner)
            start = data.find(b"\x1f\x8b", start + 1)
    return found


# -- query credentials --------------------------------------------------------------------

SEARCH_KEY = "AIzaCANARYsearchkey-0123456789abcdef"
SEARCH_CAPS = """\
version: 1
capabilities:
  - name: search
    match:
      hosts: ["api.test:{port}"]
      paths: ["/search"]
    transforms:
      - auth: {{credential: search, provider: google_search}}
roles:
  researcher:
    capabilities: [search]
"""


def test_agent_query_key_is_replaced_in_every_spelling(start_proxy, memory_world, tls_upstream):
    """`key` sent by the agent (also percent-encoded or after `;`) never reaches the
    upstream; the stamped key is the only `key`, and the operator's `cx` the only `cx`.
    `KEY` is another parameter name."""
    memory_world.broker.add_credential(
        "search", "google_search", SEARCH_KEY, config={"cx": "engine-1"}
    )
    running = start_proxy(SEARCH_CAPS.format(port=tls_upstream.port), memory_world.broker)
    target = f"api.test:{tls_upstream.port}"
    reply = via_tunnel(
        running.port,
        memory_world.token,
        target,
        path="/search?key=agent1&k%65y=agent2&q=x;key=agent3&cx=mine",
        ca=str(running.ca),
        sni="api.test",
    )
    assert reply.status == 200
    from urllib.parse import parse_qsl

    sent = tls_upstream.log.items[-1].query
    for value in ("agent1", "agent2"):
        assert value not in sent
    pairs = parse_qsl(sent, separator="&")
    assert [v for k, v in pairs if k == "key"] == [SEARCH_KEY]
    # a `;` inside a value is encoded, so no `;`-splitting upstream sees a second `key`
    assert ";key=" not in sent
    # cx comes from provider_config: the operator pinned it, so it replaces the agent's
    assert [v for k, v in pairs if k == "cx"] == ["engine-1"]
    _no_canary(reply.body)
    assert SEARCH_KEY not in reply.body.decode()


# -- unmatched: allow ------------------------------------------------------------------------


def test_unmatched_allow_on_a_matched_host_but_unlisted_path_injects_nothing(
    start_proxy, memory_world, tls_upstream, plain_upstream
):
    running = start_proxy(
        caps_text(tls_upstream, plain_upstream, unmatched="allow"), memory_world.broker
    )
    reply = via_tunnel(
        running.port,
        memory_world.token,
        f"api.test:{tls_upstream.port}",
        path="/admin?x=1",
        ca=str(running.ca),
    )
    assert reply.status == 200
    seen = tls_upstream.log.items[-1]
    assert seen.header("Authorization") == [] and seen.header("X-Tenant") == []
    assert TENANT_SECRET not in seen.query


def test_unmatched_allow_still_refuses_plain_http_to_an_https_capability(
    start_proxy, memory_world, tls_upstream, plain_upstream
):
    running = start_proxy(
        caps_text(tls_upstream, plain_upstream, unmatched="allow"), memory_world.broker
    )
    reply = via_absolute(
        running.port, memory_world.token, f"http://127.0.0.1:{plain_upstream.port}/x"
    )
    assert reply.status == 403 and reply.json()["reason"] == "plaintext"
