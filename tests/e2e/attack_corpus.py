"""The attack corpus: request shapes that try to break DESIGN.md's security invariants,
each with the outcome capgate must produce. Every transport or matching change runs
against all of them (test_attack_corpus.py).

A case sends one request through a running proxy (raw client: any CONNECT target, SNI,
Host header or request line) and states the status the agent must get, the decision and
reason of the policy_decision row, and which canary values must not reach the upstream
or come back to the agent.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from .clients import Reply, via_absolute, via_tunnel
from .conftest import (
    GITHUB_TOKEN,
    JIRA_TOKEN,
    ORG2_TOKEN,
    TENANT_SECRET,
    RunningProxy,
    World,
)
from .upstream import Upstream


@dataclass
class Ctx:
    proxy: RunningProxy
    world: World
    tls: Upstream
    plain: Upstream

    def tunnel(self, connect: str, token: str | None = None, **kw: object) -> Reply:
        return via_tunnel(
            self.proxy.port,
            self.world.token if token is None else token,
            connect,
            ca=str(self.proxy.ca),
            **kw,  # type: ignore[arg-type]
        )

    def api(self, path: str, **kw: object) -> Reply:
        return self.tunnel(f"api.test:{self.tls.port}", path=path, **kw)


Check = Callable[[Reply, Ctx], None]


@dataclass(frozen=True)
class Attack:
    name: str
    send: Callable[[Ctx], Reply]
    status: int
    decision: str | None  # of the request's policy_decision row (None: no row expected)
    reason: str | None = None
    reaches_upstream: bool = False
    # Values the upstream must not receive on this request (the injected one is fine).
    upstream_never_sees: tuple[str, ...] = (GITHUB_TOKEN, TENANT_SECRET, JIRA_TOKEN, ORG2_TOKEN)
    checks: tuple[Check, ...] = field(default=())


def _upstream_saw_exactly(name: str, values: list[str]) -> Check:
    def check(reply: Reply, ctx: Ctx) -> None:
        assert ctx.tls.log.items[-1].header(name) == values, name

    return check


def _agent_sees(name: str, value: str) -> Check:
    def check(reply: Reply, ctx: Ctx) -> None:
        assert reply.header(name) == value, (name, reply.header(name))

    return check


def _body_contains(text: str) -> Check:
    def check(reply: Reply, ctx: Ctx) -> None:
        assert text in reply.body.decode("utf-8", "replace")

    return check


def _row_free_of(*forms: str) -> Check:
    def check(reply: Reply, ctx: Ctx) -> None:
        row = repr(ctx.world.broker.decisions[-1]).lower()
        for form in forms:
            assert form.lower() not in row, form

    return check


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


BEARER = f"Bearer {GITHUB_TOKEN}"
ALL_BUT_GITHUB = (TENANT_SECRET, JIRA_TOKEN, ORG2_TOKEN)
NOTHING_BUT_INJECTED = (JIRA_TOKEN, ORG2_TOKEN)

ATTACKS: tuple[Attack, ...] = (
    # -- destination confusion: CONNECT target vs Host ---------------------------------------
    Attack(
        "connect_api_with_host_of_other",
        lambda c: c.api("/rest/x", host_header=f"other.test:{c.tls.port}"),
        403,
        "deny",
        "host_mismatch",
    ),
    Attack(
        "connect_other_with_host_of_api",
        lambda c: c.tunnel(
            f"other.test:{c.tls.port}", path="/repos/x", host_header=f"api.test:{c.tls.port}"
        ),
        403,
        "deny",
        "host_mismatch",
    ),
    Attack(
        "connect_unmatched_host_with_host_of_api",
        lambda c: c.tunnel(
            f"evil.test:{c.tls.port}", path="/repos/x", host_header=f"api.test:{c.tls.port}"
        ),
        403,
        "deny",
        "no_capability",
    ),
    Attack(
        "sni_of_api_inside_tunnel_to_other",
        lambda c: c.tunnel(
            f"other.test:{c.tls.port}",
            path="/repos/x",
            sni="api.test",
            host_header=f"other.test:{c.tls.port}",
        ),
        403,
        "deny",
        "no_capability",  # matched on the CONNECT target, never on SNI
    ),
    Attack(
        "host_without_port_for_non_default_port",
        lambda c: c.api("/repos/x", host_header="api.test"),
        403,
        "deny",
        "host_mismatch",
    ),
    Attack(
        "duplicate_host_headers",
        lambda c: c.api("/repos/x", headers=[("Host", "other.test")]),
        403,
        "deny",
        "host_mismatch",
    ),
    Attack(
        "absolute_form_with_foreign_host",
        lambda c: via_absolute(
            c.proxy.port,
            c.world.token,
            f"http://localhost:{c.plain.port}/x",
            host_header=f"api.test:{c.tls.port}",
        ),
        403,
        "deny",
        "host_mismatch",
    ),
    Attack(
        "absolute_form_ip_with_host_of_name",
        lambda c: via_absolute(
            c.proxy.port,
            c.world.token,
            f"http://127.0.0.1:{c.plain.port}/x",
            host_header=f"localhost:{c.plain.port}",
        ),
        403,
        "deny",
        "host_mismatch",
    ),
    Attack(
        "host_header_with_port_and_trailing_dot_after_port",
        lambda c: c.api("/repos/x", host_header=f"api.test:{c.tls.port}."),
        403,
        "deny",
        "host_mismatch",
    ),
    Attack(
        "host_header_with_userinfo",
        lambda c: c.api("/repos/x", host_header=f"agent@api.test:{c.tls.port}"),
        403,
        "deny",
        "host_mismatch",
    ),
    Attack(
        "host_header_percent_encoded",
        lambda c: c.api("/repos/x", host_header=f"api%2etest:{c.tls.port}"),
        403,
        "deny",
        "host_mismatch",
    ),
    Attack(
        "host_header_with_two_authorities",
        lambda c: c.api("/repos/x", host_header=f"api.test:{c.tls.port}, other.test"),
        403,
        "deny",
        "host_mismatch",
    ),
    Attack(
        "host_header_empty",
        lambda c: c.api("/repos/x", host_header=""),
        403,
        "deny",
        "host_mismatch",
    ),
    Attack(
        "absolute_form_inside_tunnel_names_other_host",
        lambda c: c.api(f"https://other.test:{c.tls.port}/rest/x"),
        403,
        "deny",
        "host_mismatch",
    ),
    Attack(
        "absolute_form_inside_tunnel_names_other_port",
        lambda c: c.api(
            f"http://api.test:{c.plain.port}/repos/x", host_header=f"api.test:{c.plain.port}"
        ),
        403,
        "deny",
        "host_mismatch",
    ),
    Attack(
        "connect_decimal_ipv4_to_unlisted_port",
        lambda c: c.tunnel(f"2130706433:{c.tls.port}", path="/repos/x", sni="localhost"),
        403,
        "deny",
        "no_capability",
    ),
    Attack(
        "absolute_form_hex_ipv4_over_plain_http_to_https_capability",
        lambda c: via_absolute(c.proxy.port, c.world.token, f"http://0x7f.1:{c.plain.port}/x"),
        403,
        "deny",
        "plaintext",
    ),
    Attack(
        "absolute_form_userinfo_in_url",
        lambda c: via_absolute(
            c.proxy.port,
            c.world.token,
            f"http://api.test@localhost:{c.plain.port}/x",
            host_header=f"localhost:{c.plain.port}",
        ),
        400,
        None,
    ),
    # -- paths: a glob must not be escaped by what the upstream resolves ---------------------
    Attack(
        "dot_dot_segment_escapes_glob",
        lambda c: c.api("/repos/../admin"),
        403,
        "deny",
        "no_capability",
    ),
    Attack(
        "encoded_dot_dot_segment_escapes_glob",
        lambda c: c.api("/repos/%2e%2E/admin"),
        403,
        "deny",
        "no_capability",
    ),
    Attack(
        "encoded_slash_dot_dot_escapes_glob",
        lambda c: c.api("/repos/x%2f..%2f..%2fadmin"),
        403,
        "deny",
        "no_capability",
    ),
    Attack(
        "dot_dot_with_path_parameter_escapes_glob",
        # Tomcat/Spring (and others) drop `;params` and then resolve `..`.
        lambda c: c.api("/repos/x/..;/..;/admin"),
        403,
        "deny",
        "no_capability",
    ),
    Attack(
        "fragment_in_request_target_hides_dot_dot",
        # A target with `#` is not valid HTTP; an upstream that keeps it as a path
        # character resolves `/user#/../admin` to `/admin`. Refused outright.
        lambda c: c.api("/user#/../admin"),
        400,
        "deny",
        "bad_target",
    ),
    Attack(
        "lower_case_method_matches_its_upper_case",
        # Methods are matched upper-cased; `get` is forwarded as sent. Only a method whose
        # upper case is listed can match, so this widens nothing (judgement: allowed; the
        # echo upstream, case-sensitive as RFC 9110 says, answers 501 itself and so logs
        # nothing: `reaches_upstream` reads that log).
        lambda c: c.api("/repos/x", method="get"),
        501,
        "allow",
        None,
    ),
    Attack(
        "unlisted_method_in_lower_case",
        lambda c: c.api("/repos/x", method="delete"),
        403,
        "deny",
        "no_capability",
    ),
    # -- framing: request smuggling through the proxy ----------------------------------------
    Attack(
        "content_length_and_transfer_encoding",
        lambda c: c.api(
            "/repos/x",
            method="POST",
            headers=[("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
            body=b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: api.test\r\n\r\n",
        ),
        400,
        None,
    ),
    Attack(
        "duplicate_differing_content_length",
        lambda c: c.api(
            "/repos/x",
            method="POST",
            headers=[("Content-Length", "3"), ("Content-Length", "40")],
            body=b"abcGET /admin HTTP/1.1\r\nHost: api.test\r\n\r\n",
        ),
        400,
        None,
    ),
    Attack(
        "transfer_encoding_not_chunked_last",
        lambda c: c.api(
            "/repos/x",
            method="POST",
            headers=[("Transfer-Encoding", "chunked, identity")],
            body=b"0\r\n\r\n",
        ),
        400,
        None,
    ),
    Attack(
        "obs_fold_hides_a_second_authorization",
        # mitmproxy keeps an obs-fold as CRLF+SP inside the value and would forward it; an
        # upstream that reads the folded line as a header of its own would get the agent's
        # Authorization next to the stamped one. Refused (RFC 9112 5.2 allows 400).
        lambda c: c.api(
            "/repos/x",
            headers=[("X-Note", "a\r\n Authorization: Bearer agent-own")],
        ),
        400,
        "deny",
        "bad_header",
    ),
    # -- second pass (issue 11): targets, framing, fail-closed hooks --------------------------
    Attack(
        "asterisk_target_for_get",
        # Only OPTIONS may use `*`; anything else that is not origin-form is refused.
        lambda c: c.api("*"),
        400,
        "deny",
        "bad_target",
    ),
    Attack(
        "transfer_coding_other_than_chunked",
        lambda c: c.api(
            "/repos/x",
            method="POST",
            headers=[("Transfer-Encoding", "gzip, chunked")],
            body=b"0\r\n\r\n",
        ),
        400,
        "deny",
        "bad_framing",
    ),
    Attack(
        "two_transfer_encoding_headers",
        lambda c: c.api(
            "/repos/x",
            method="POST",
            headers=[("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
            body=b"0\r\n\r\n",
        ),
        400,
        "deny",
        "bad_framing",
    ),
    Attack(
        "connection_nominates_a_header_capgate_sets",
        # An intermediary upstream would drop the nominated X-Tenant that capgate set (and
        # the agent's own X-Nominated is hop-by-hop: it ends at capgate).
        lambda c: c.api(
            "/repos/x",
            headers=[("Connection", "X-Tenant, x-nominated"), ("X-Nominated", "agent")],
        ),
        200,
        "allow",
        None,
        reaches_upstream=True,
        upstream_never_sees=NOTHING_BUT_INJECTED,
        checks=(
            _upstream_saw_exactly("X-Tenant", [TENANT_SECRET]),
            _upstream_saw_exactly("X-Nominated", []),
            _upstream_saw_exactly("Connection", ["close"]),
        ),
    ),
    Attack(
        "deeply_nested_json_body_fails_closed",
        # json.loads raises RecursionError: every body transform would be skipped and the
        # agent's own /metadata/tenant forwarded. Any hook exception denies instead.
        lambda c: c.api(
            "/body",
            method="POST",
            headers=[("Content-Type", "application/json")],
            body=b'{"metadata": {"tenant": "agent-own"}, "x": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        ),
        500,
        "deny",
        "internal_error",
    ),
    # -- normalisation: other spellings of the same destination are that destination --------
    Attack(
        "upper_case_and_trailing_dot",
        lambda c: c.tunnel(
            f"API.Test.:{c.tls.port}",
            path="/repos/x",
            host_header=f"api.TEST.:{c.tls.port}",
            sni="api.test",
        ),
        200,
        "allow",
        None,
        reaches_upstream=True,
        upstream_never_sees=NOTHING_BUT_INJECTED,
        checks=(_upstream_saw_exactly("Authorization", [BEARER]),),
    ),
    Attack(
        "ipv6_brackets_and_zero_compression",
        lambda c: c.tunnel(
            f"[0:0:0:0:0:0:0:1]:{c.tls.port}",
            path="/repos/x",
            host_header=f"[::1]:{c.tls.port}",
            sni="localhost",
        ),
        200,
        "allow",
        None,
        reaches_upstream=True,
        upstream_never_sees=NOTHING_BUT_INJECTED,
        checks=(_upstream_saw_exactly("Authorization", [BEARER]),),
    ),
    Attack(
        "idna_a_label_target_with_unicode_host",
        lambda c: c.tunnel(
            f"xn--bcher-kva.test:{c.tls.port}",
            path="/repos/x",
            host_header=f"BÜCHER.test:{c.tls.port}",
            sni="xn--bcher-kva.test",
        ),
        200,
        "allow",
        None,
        reaches_upstream=True,
        upstream_never_sees=NOTHING_BUT_INJECTED,
        checks=(_upstream_saw_exactly("Authorization", [BEARER]),),
    ),
    Attack(
        "explicit_port_in_host_header",
        lambda c: c.api("/repos/x", host_header=f"API.test:{c.tls.port}"),
        200,
        "allow",
        None,
        reaches_upstream=True,
        upstream_never_sees=NOTHING_BUT_INJECTED,
    ),
    # -- agent-supplied credentials are replaced, never forwarded ---------------------------
    Attack(
        "agent_authorization_is_replaced",
        lambda c: c.api(
            "/repos/x",
            headers=[
                ("Authorization", "Bearer agent-own"),
                ("authorization", "token agent-second"),
            ],
        ),
        200,
        "allow",
        None,
        reaches_upstream=True,
        upstream_never_sees=NOTHING_BUT_INJECTED,
        checks=(_upstream_saw_exactly("Authorization", [BEARER]),),
    ),
    Attack(
        "agent_authorization_removed_when_mint_fails",
        lambda c: c.api("/broken", headers=[("Authorization", "Bearer agent-own")]),
        200,
        "allow",
        None,
        reaches_upstream=True,
        checks=(_upstream_saw_exactly("Authorization", []),),
    ),
    Attack(
        "crlf_from_request_data_cannot_add_a_header",
        lambda c: c.api("/broken?q=a%0d%0aX-Injected:%20yes"),
        200,
        "allow",
        None,
        reaches_upstream=True,
        checks=(_upstream_saw_exactly("X-Injected", []), _upstream_saw_exactly("X-From-Query", [])),
    ),
    Attack(
        "proxy_authorization_inside_tunnel_is_not_forwarded",
        lambda c: c.api("/repos/x", headers=[("Proxy-Authorization", "Basic Zm9vOmJhcg==")]),
        200,
        "allow",
        None,
        reaches_upstream=True,
        upstream_never_sees=NOTHING_BUT_INJECTED,
        checks=(_upstream_saw_exactly("Proxy-Authorization", []),),
    ),
    # -- plaintext ----------------------------------------------------------------------------
    Attack(
        "plain_http_to_https_only_capability",
        lambda c: via_absolute(c.proxy.port, c.world.token, f"http://127.0.0.1:{c.plain.port}/x"),
        403,
        "deny",
        "plaintext",
    ),
    Attack(
        "plain_http_inside_a_tunnel_to_https_capability",
        lambda c: c.api("/repos/x", tls=False),
        403,
        "deny",
        "plaintext",
    ),
    # -- tenancy and tokens -------------------------------------------------------------------
    Attack(
        "other_org_token_gets_no_credential_of_this_org",
        lambda c: c.api("/repos/x", token=c.world.org2_token),
        200,
        "allow",
        None,
        reaches_upstream=True,
        checks=(_upstream_saw_exactly("Authorization", []),),
    ),
    Attack(
        "role_without_capability",
        lambda c: c.api("/repos/x", token=c.world.reader_token),
        403,
        "deny",
        "no_capability",
    ),
    Attack("no_proxy_token", lambda c: c.api("/repos/x", token=""), 407, "deny", "proxy_auth"),
    Attack(
        "wrong_proxy_token",
        lambda c: c.api("/repos/x", token="cg_not-a-token"),
        407,
        "deny",
        "proxy_auth",
    ),
    # -- echo: injected values never come back to the agent --------------------------------
    Attack(
        "upstream_echoes_authorization_header",
        lambda c: c.api("/repos/x?echo_headers=authorization,x-tenant"),
        200,
        "allow",
        None,
        reaches_upstream=True,
        upstream_never_sees=NOTHING_BUT_INJECTED,
        checks=(
            _agent_sees("X-Echo-authorization", "Bearer [REDACTED:github]"),
            _agent_sees("X-Echo-x-tenant", "[REDACTED:tenant-id]"),
        ),
    ),
    Attack(
        "upstream_echoes_in_gzip_body",
        lambda c: c.api("/repos/x?encoding=gzip"),
        200,
        "allow",
        None,
        reaches_upstream=True,
        upstream_never_sees=NOTHING_BUT_INJECTED,
        checks=(_body_contains("Bearer [REDACTED:github]"),),
    ),
    Attack(
        "upstream_echoes_in_brotli_body",
        lambda c: c.api("/repos/x?encoding=br"),
        200,
        "allow",
        None,
        reaches_upstream=True,
        upstream_never_sees=NOTHING_BUT_INJECTED,
    ),
    Attack(
        "upstream_echoes_in_redirect_location",
        lambda c: c.api("/redirect?echo_headers=authorization"),
        302,
        "allow",
        None,
        reaches_upstream=True,
        upstream_never_sees=NOTHING_BUT_INJECTED,
        checks=(_agent_sees("Location", "https://api.test/landing?auth=Bearer [REDACTED:github]"),),
    ),
    Attack(
        "upstream_echoes_basic_credentials",
        lambda c: c.tunnel(f"other.test:{c.tls.port}", path="/rest/x?echo_headers=authorization"),
        200,
        "allow",
        None,
        reaches_upstream=True,
        upstream_never_sees=(GITHUB_TOKEN, TENANT_SECRET, ORG2_TOKEN),
        checks=(_agent_sees("X-Echo-authorization", "Basic [REDACTED:jira]"),),
    ),
    # -- tripwire: values the agent must never have ------------------------------------------
    Attack(
        "tripwire_credential_in_header",
        lambda c: c.api("/repos/x", headers=[("X-Debug", GITHUB_TOKEN)]),
        403,
        "tripwire",
        "credential:github",
    ),
    Attack(
        "tripwire_secret_in_query",
        lambda c: c.api(f"/repos/x?q={TENANT_SECRET}"),
        403,
        "tripwire",
        "secret:tenant-id",
    ),
    Attack(
        "tripwire_secret_percent_encoded_in_path",
        lambda c: c.api("/repos/" + "".join(f"%{b:02x}" for b in TENANT_SECRET.encode())),
        403,
        "tripwire",
        "secret:tenant-id",
        # the row and the log hold no form the tripwire matched, encoded ones included
        checks=(_row_free_of(quote(TENANT_SECRET, safe=""), "%74%65%6e%61%6e%74"),),
    ),
    Attack(
        "tripwire_secret_upper_percent_encoded_in_query_value",
        lambda c: c.api("/repos/x?q=" + quote(f"{TENANT_SECRET}/x", safe="")),
        403,
        "tripwire",
        "secret:tenant-id",
    ),
    Attack(
        "tripwire_in_the_connect_target",
        # Before the tunnel exists: a value in the CONNECT host. The row's host is
        # redacted (lower-cased, the value would otherwise pass a case-sensitive scan).
        lambda c: c.tunnel(f"{TENANT_SECRET}.api.test:{c.tls.port}", path="/repos/x"),
        403,
        "tripwire",
        "secret:tenant-id",
        checks=(_row_free_of(TENANT_SECRET.lower()),),
    ),
    Attack(
        "tripwire_in_a_connect_header",
        lambda c: c.tunnel(
            f"api.test:{c.tls.port}",
            path="/repos/x",
            connect_headers=[("User-Agent", f"agent/1 ({GITHUB_TOKEN})")],
        ),
        403,
        "tripwire",
        "credential:github",
    ),
    Attack(
        "tripwire_in_the_connect_target_base64",
        lambda c: c.tunnel(
            f"{_b64(TENANT_SECRET).rstrip('=')}.api.test:{c.tls.port}", path="/repos/x"
        ),
        403,
        "tripwire",
        "secret:tenant-id",
    ),
    Attack(
        "tripwire_secret_base64_encoded_inside_a_longer_string",
        lambda c: c.api("/repos/x", headers=[("X-Blob", _b64("ctx=" + TENANT_SECRET + ";"))]),
        403,
        "tripwire",
        "secret:tenant-id",
    ),
    Attack(
        "tripwire_credential_hex_encoded_in_query",
        lambda c: c.api(f"/repos/x?d={GITHUB_TOKEN.encode().hex()}"),
        403,
        "tripwire",
        "credential:github",
    ),
    Attack(
        "tripwire_base64_secret_in_header",
        lambda c: c.api("/repos/x", headers=[("X-Blob", _b64(TENANT_SECRET))]),
        403,
        "tripwire",
        "secret:tenant-id",
    ),
    Attack(
        "tripwire_credential_inside_basic_auth",
        lambda c: c.api(
            "/repos/x", headers=[("Authorization", "Basic " + _b64(f"u:{GITHUB_TOKEN}"))]
        ),
        403,
        "tripwire",
        "credential:github",
    ),
    Attack(
        "tripwire_secret_in_json_body",
        lambda c: c.api(
            "/repos/x",
            method="POST",
            headers=[("Content-Type", "application/json")],
            body=json.dumps({"note": TENANT_SECRET}).encode(),
        ),
        403,
        "tripwire",
        "secret:tenant-id",
    ),
    Attack(
        "tripwire_secret_in_gzip_request_body",
        lambda c: c.api(
            "/repos/x",
            method="POST",
            headers=[("Content-Encoding", "gzip")],
            body=gzip.compress(json.dumps({"note": TENANT_SECRET}).encode()),
        ),
        403,
        "tripwire",
        "secret:tenant-id",
    ),
    Attack(
        "tripwire_secret_in_multipart_body",
        lambda c: c.api(
            "/repos/x",
            method="POST",
            headers=[("Content-Type", "multipart/form-data; boundary=b")],
            body=(
                f"--b\r\nContent-Disposition: form-data; name=f\r\n\r\n{TENANT_SECRET}\r\n--b--\r\n"
            ).encode(),
        ),
        403,
        "tripwire",
        "secret:tenant-id",
    ),
    Attack(
        "tripwire_on_unmatched_request_too",
        lambda c: c.api(f"/elsewhere?leak={GITHUB_TOKEN}"),
        403,
        "tripwire",
        "credential:github",
    ),
)
