"""The console's pure pieces (no browser, no server): chips, time formatting, the export
lines, the client_id formats, the Content-Security-Policy, escaping in templates."""

from __future__ import annotations

import shlex
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from capgate.broker.client_ids import client_id_problem
from capgate.broker.identity import Principal
from capgate.proxy.server.console.chips import auth_providers, chips
from capgate.proxy.server.console.pages import _proxy_problem, export_lines
from capgate.proxy.server.console.render import csp, query, relative_time, render

OPERATOR = Principal("org_1", "acme", "user_a", "alice", True, "session", "s", "c" * 64)
MEMBER = Principal("org_1", "acme", "user_b", "bob", False, "session", "s", "d" * 64)


def test_operator_chips_link_to_the_create_forms() -> None:
    made = chips(OPERATOR, ["github", "drive"], ["tenant-id"], {"github": {"github_pat"}})
    assert [(c.ref, c.href) for c in made] == [
        ("credential:github", "/credentials/new?name=github&provider=github_pat"),
        ("credential:drive", "/credentials/new?name=drive"),
        ("secret:tenant-id", "/secrets/new?name=tenant-id"),
    ]


def test_member_chips_link_only_to_what_a_member_can_create() -> None:
    used = {"github": {"github_pat"}, "drive": {"google"}, "mail": {"microsoft"}}
    made = {c.ref: c.href for c in chips(MEMBER, ["github", "drive", "mail", "cel"], ["t"], used)}
    assert made["credential:github"] is None  # api_key: org-scoped only
    assert made["credential:cel"] is None  # not used by an auth transform
    assert made["secret:t"] is None  # secrets are for operators
    assert made["credential:drive"] == (
        "/credentials/new?name=drive&provider=google&kind=oauth2_authorization_code&user=bob"
    )
    assert "provider=microsoft" in (made["credential:mail"] or "")


def test_auth_providers_reads_the_roles_auth_transforms(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from capgate.caps import load_caps

    path = tmp_path / "caps.yaml"
    path.write_text(
        "version: 1\ncapabilities:\n"
        "  - name: a\n    match: {hosts: [x.example]}\n"
        "    transforms: [{auth: {credential: one, provider: google}}]\n"
        "  - name: b\n    match: {hosts: [y.example]}\n"
        "    transforms: [{auth: {credential: two, provider: github_pat}}]\n"
        "roles:\n  r: {capabilities: [a]}\n"
    )
    config = load_caps(path)
    assert auth_providers([config], "r") == {"one": {"google"}}
    assert auth_providers([config]) == {"one": {"google"}, "two": {"github_pat"}}


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=5), "just now"),
        (timedelta(minutes=1), "1 minute ago"),
        (timedelta(minutes=5), "5 minutes ago"),
        (timedelta(hours=3), "3 hours ago"),
        (timedelta(days=2), "2 days ago"),
        (timedelta(days=-1), "in 1 day"),
        (timedelta(days=400), "1 year ago"),
    ],
)
def test_relative_time(delta: timedelta, text: str) -> None:
    now = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
    assert relative_time((now - delta).isoformat(), now) == text
    assert relative_time(None) == "never" and relative_time("garbage") == "never"


def test_export_lines_are_shell_safe_and_wire_both_cases() -> None:
    lines = export_lines("ws_1", "cg_tok'en", "http://127.0.0.1:8080")
    assert "export HTTPS_PROXY=" in lines and "export https_proxy=" in lines
    done = subprocess.run(
        [
            "sh",
            "-c",
            lines.replace('"$(capgate ca --bundle)"', "x").replace('"$(capgate ca)"', "y")
            + '\nprintf %s "$HTTPS_PROXY"',
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "http://agent:cg_tok'en@127.0.0.1:8080"
    assert shlex.split(lines.splitlines()[0]) == ["export", "CAPGATE_WORKSPACE=ws_1"]


@pytest.mark.parametrize(
    "proxy",
    ["127.0.0.1:8080", "ftp://h:1", "http://u:p@h:1", "http://h:1/x", "http://h:$(id)"],
)
def test_a_bad_proxy_url_is_refused(proxy: str) -> None:
    assert _proxy_problem(proxy) is not None
    assert _proxy_problem("http://127.0.0.1:8080") is None


@pytest.mark.parametrize(
    ("provider", "client_id", "ok"),
    [
        ("google", "123-abc.apps.googleusercontent.com", True),
        ("google", "123-abc", False),
        ("google", "https://evil.example/.apps.googleusercontent.com", False),
        ("microsoft", "0f5c0d6e-1a2b-4c3d-8e9f-001122334455", True),
        ("microsoft", "contoso.onmicrosoft.com", False),
        ("github_pat", "anything-goes", True),
        ("google", "", False),
        ("microsoft", "0f5c0d6e-1a2b-4c3d-8e9f-001122334455\n", False),
    ],
)
def test_client_id_formats(provider: str, client_id: str, ok: bool) -> None:
    assert (client_id_problem(provider, client_id) is None) is ok


def test_the_policy_allows_only_our_own_scripts() -> None:
    policy = csp({"https://accounts.google.com"})
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy
    assert "form-action 'self' https://accounts.google.com" in policy
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy


def test_templates_escape_everything() -> None:
    evil = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    page = render(
        "secret_new.html", caller=OPERATOR, name=evil, errors={"name": evil}, may_change=True
    )
    html = page.body.decode()
    assert "<script>alert(1)" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert page.headers["x-frame-options"] == "DENY"
    assert query("/x", {"a": "b&c", "d": None}) == "/x?a=b%26c"
