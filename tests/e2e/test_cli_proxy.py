"""The real CLI and broker end to end: `capgate exec`, `capgate proxy` as a process,
cross-process delete and revoke, SIGTERM with requests in flight, and the canary scan."""

from __future__ import annotations

import base64
import json
import shlex
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .certs import TestPki
from .cli_harness import CliHome, ProxyProcess, curl, start_proxy_process, urllib_get
from .upstream import Upstream

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GITHUB = "ghp_CLIcanaryCredential_5e6f7a8b9c0d1e2f"
TENANT = "tenant-CLIcanarySecret-00aa11bb22cc"
MS_CLIENT_SECRET = "ms-CLIcanaryClientSecret-77dd88ee"
CANARIES = (GITHUB, TENANT, MS_CLIENT_SECRET)

CAPS = """\
version: 1
capabilities:
  - name: github-api
    match: {{hosts: ["localhost:{tls}"], paths: ["/repos/**", "/redirect", "/sse"]}}
    transforms:
      - auth: {{credential: github, provider: github_pat}}
      - header: {{name: X-Tenant, action: set, value: 'secrets["tenant-id"]'}}
  - name: graph
    match: {{hosts: ["localhost:{tls}"], paths: ["/graph/**"]}}
    transforms:
      - auth: {{credential: graph, provider: microsoft}}
      - header: {{name: X-Broken, action: set, value: 'request.headers["x-absent"]'}}
  - name: dead
    match: {{hosts: ["localhost:{dead}"]}}
    transforms:
      - auth: {{credential: github, provider: github_pat}}
roles:
  researcher:
    capabilities: [github-api, graph, dead]
"""


def _forms(value: str) -> list[str]:
    raw = value.encode()
    return [value, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()]


@pytest.fixture
def dead_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def template_home(tmp_path_factory: pytest.TempPathFactory) -> CliHome:
    home = CliHome(
        tmp_path_factory.mktemp("template") / "home",
        # The graph credential's token endpoint is a closed port: every mint fails.
        {"CAPGATE_UNSAFE_TOKEN_ENDPOINTS": json.dumps({"microsoft": "http://127.0.0.1:9/t"})},
    )
    home.cli("init")
    home.cli("user", "add", "alice")
    home.cli("cred", "add", "github", "--provider", "github_pat", "--kind", "api_key", stdin=GITHUB)
    home.cli(
        "cred",
        "add",
        "graph",
        "--provider",
        "microsoft",
        "--kind",
        "oauth2_client_credentials",
        "--config",
        "tenant_id=t1",
        "--config",
        "client_id=c1",
        stdin=MS_CLIENT_SECRET,
    )
    home.cli("secret", "set", "tenant-id", stdin=TENANT)
    home.cli("ca")
    return home


@pytest.fixture
def cli_home(template_home: CliHome, tmp_path: Path) -> CliHome:
    """A fresh copy of the template home for each test."""
    root = tmp_path / "home"
    shutil.copytree(template_home.root, root)
    return CliHome(root, dict(template_home.extra_env))


@pytest.fixture
def caps_file(tmp_path: Path, tls_upstream: Upstream, dead_port: int) -> Path:
    path = tmp_path / "caps.yaml"
    path.write_text(CAPS.format(tls=tls_upstream.port, dead=dead_port))
    return path


@pytest.fixture
def proxy_process(
    cli_home: CliHome, caps_file: Path, pki: TestPki, tmp_path: Path
) -> Iterator[ProxyProcess]:
    proxy = start_proxy_process(cli_home, caps_file, pki.ca_pem, tmp_path / "logs")
    yield proxy
    proxy.terminate()


def _ca(home: CliHome) -> Path:
    return Path(home.cli("ca").strip())


def test_exec_runs_curl_with_the_credential_and_revokes_its_token(
    cli_home: CliHome, caps_file: Path, pki: TestPki, tls_upstream: Upstream
) -> None:
    # given a home with a credential, when curl runs under capgate exec
    url = tls_upstream.url("/repos/x?echo_headers=authorization", host="localhost")
    script = f'curl -sS "{url}"; echo; echo "$HTTPS_PROXY" >&2; exit 7'
    done = cli_home.run(
        "exec",
        "--caps",
        str(caps_file),
        "--role",
        "researcher",
        "--user",
        "alice",
        "--upstream-ca",
        str(pki.ca_pem),
        "--",
        "sh",
        "-c",
        script,
        check=False,
    )
    # then CMD's exit code is passed on, the upstream got the credential, CMD did not
    assert done.returncode == 7, done.stderr
    echoed = json.loads(done.stdout.splitlines()[0])
    assert ["Authorization", "Bearer [REDACTED:github]"] in echoed["headers"]
    assert tls_upstream.log.items[-1].header("Authorization") == [f"Bearer {GITHUB}"]
    assert all(c not in done.stdout + done.stderr for c in CANARIES)
    # and the workspace token no longer works
    proxy_url = done.stderr.strip().splitlines()[-1]
    token = proxy_url.split("agent:", 1)[1].split("@", 1)[0]
    row = cli_home.decisions(at_least=1)[-1]
    assert (row["decision"], row["capability"], row["upstream_status"]) == (
        "allow",
        "github-api",
        200,
    )
    assert cli_home.cli("workspace", "list", "--json").count("revoked_at") >= 1
    assert token.startswith("cg")


def test_proxy_process_serves_curl_and_urllib(
    cli_home: CliHome, proxy_process: ProxyProcess, tls_upstream: Upstream
) -> None:
    _, token = cli_home.workspace("researcher")
    ca = _ca(cli_home)
    status, body = curl(
        proxy_process.url(token), ca, tls_upstream.url("/repos/a", host="localhost")
    )
    assert status == 200, body
    status, body = urllib_get(
        proxy_process.url(token), ca, tls_upstream.url("/repos/b", host="localhost")
    )
    assert status == 200, body
    assert [i.header("Authorization") for i in tls_upstream.log.items[-2:]] == [
        [f"Bearer {GITHUB}"],
        [f"Bearer {GITHUB}"],
    ]


def test_delete_and_revoke_in_another_process_apply_to_the_next_request(
    cli_home: CliHome, proxy_process: ProxyProcess, tls_upstream: Upstream
) -> None:
    workspace_id, token = cli_home.workspace("researcher")
    ca, url = _ca(cli_home), tls_upstream.url("/repos/x", host="localhost")
    assert curl(proxy_process.url(token), ca, url)[0] == 200
    assert tls_upstream.log.items[-1].header("Authorization") == [f"Bearer {GITHUB}"]
    # when another process deletes the credential, the very next request goes without it
    cli_home.cli("cred", "delete", "github")
    assert curl(proxy_process.url(token), ca, url)[0] == 200
    assert tls_upstream.log.items[-1].header("Authorization") == []
    # when another process revokes the workspace, the next request is refused
    cli_home.cli("workspace", "revoke", workspace_id)
    status, _ = curl(proxy_process.url(token), ca, url)
    assert status in (407, 0)  # curl reports a refused CONNECT as 407
    rows = cli_home.decisions("--all-orgs", at_least=3)
    assert rows[-1]["reason"] == "proxy_auth"
    assert rows[-2]["auth_failures"] == {"github": "auth_unavailable"}


def test_sigterm_with_requests_in_flight_keeps_every_completed_row(
    cli_home: CliHome, proxy_process: ProxyProcess, tls_upstream: Upstream
) -> None:
    _, token = cli_home.workspace("researcher")
    ca = _ca(cli_home)
    results: dict[str, int] = {}

    def call(path: str) -> None:
        results[path] = curl(
            proxy_process.url(token), ca, tls_upstream.url(path, host="localhost")
        )[0]

    threads = [threading.Thread(target=call, args=(f"/repos/fast{i}",)) for i in range(6)]
    threads += [
        threading.Thread(target=call, args=(f"/repos/slow{i}?delay_ms=1500",)) for i in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads[:6]:
        t.join()
    assert proxy_process.terminate() == 0
    for t in threads:
        t.join()
    completed = {p.partition("?")[0] for p, status in results.items() if status == 200}
    recorded = {row["path"] for row in cli_home.decisions()}
    assert {f"/repos/fast{i}" for i in range(6)} <= completed
    assert completed <= recorded


def test_canary_values_appear_nowhere_but_the_vault(
    cli_home: CliHome, proxy_process: ProxyProcess, tls_upstream: Upstream, dead_port: int
) -> None:
    _, token = cli_home.workspace("researcher")
    ca, proxy = _ca(cli_home), proxy_process.url(token)
    replies = []
    for url, args in [
        (tls_upstream.url("/repos/x?echo_headers=authorization,x-tenant", "localhost"), ()),
        (tls_upstream.url("/repos/x?encoding=gzip", "localhost"), ("--compressed",)),
        (tls_upstream.url("/redirect?echo_headers=authorization", "localhost"), ("-i",)),
        (tls_upstream.url("/sse?events=2&gap_ms=10", "localhost"), ()),
        (tls_upstream.url("/graph/me?echo_headers=authorization", "localhost"), ()),  # mint fails
        (tls_upstream.url("/nowhere", "localhost"), ()),  # denied: no capability
        (f"https://localhost:{dead_port}/", ()),  # upstream error
        (tls_upstream.url(f"/repos/x?leak={TENANT}", "localhost"), ()),  # tripwire
        (tls_upstream.url("/repos/x", "localhost"), ("-H", f"X-Leak: {GITHUB}")),  # tripwire
    ]:
        replies.append(curl(proxy, ca, url, *args))
    statuses = [status for status, _ in replies]
    assert statuses == [200, 200, 302, 200, 200, 403, 502, 403, 403], replies
    assert proxy_process.terminate() == 0

    rows = cli_home.decisions()
    by_path = {r["path"]: r for r in rows}
    assert by_path["/graph/me"]["auth_failures"] == {"graph": "auth_unavailable"}
    assert by_path["/graph/me"]["transforms_failed"] == {"header:X-Broken": "cel_error"}
    assert by_path["/nowhere"]["reason"] == "no_capability"
    assert [r["decision"] for r in rows].count("tripwire") == 2

    seen = "\n".join(body for _, body in replies) + proxy_process.output()
    for path in cli_home.root.rglob("*"):
        if path.is_file() and not path.name.startswith("vault.db"):
            seen += path.read_bytes().decode("latin-1")
    for canary in CANARIES:
        for form in _forms(canary):
            assert form not in seen, f"a form of a canary leaked: {shlex.quote(form[:6])}..."


def test_exec_adds_a_user_it_has_not_seen_and_runs_the_command(
    cli_home: CliHome, caps_file: Path, pki: TestPki, tls_upstream: Upstream
) -> None:
    # given a user name that was never added, when a command runs under capgate exec
    url = tls_upstream.url("/repos/x", host="localhost")
    done = cli_home.run(
        "exec",
        "--caps",
        str(caps_file),
        "--role",
        "researcher",
        "--user",
        "newcomer",
        "--upstream-ca",
        str(pki.ca_pem),
        "--",
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        url,
        check=False,
    )
    # then the user is added, the call goes out authenticated, and the exit code is curl's
    assert done.returncode == 0, done.stderr
    assert "added user 'newcomer'" in done.stderr
    assert tls_upstream.log.items[-1].header("Authorization") == [f"Bearer {GITHUB}"]
    assert "newcomer" in cli_home.cli("user", "list", "--json")


def test_recorded_traffic_replays_green_and_holds_no_value(
    cli_home: CliHome, caps_file: Path, pki: TestPki, tls_upstream: Upstream, tmp_path: Path
) -> None:
    # given a live proxy started with --record
    recorded = tmp_path / "recorded"
    proxy = start_proxy_process(
        cli_home, caps_file, pki.ca_pem, tmp_path / "logs", "--record", str(recorded)
    )
    try:
        _, token = cli_home.workspace("researcher")
        ca = _ca(cli_home)
        # when it handles an allowed call with an echo, and a denied one
        echo = tls_upstream.url("/repos/a?echo_headers=authorization", host="localhost")
        assert curl(proxy.url(token), ca, echo)[0] == 200
        assert curl(proxy.url(token), ca, tls_upstream.url("/other", host="localhost"))[0] == 403
    finally:
        proxy.terminate()
    # then every recorded fixture replays green against the same caps.yaml
    fixtures = sorted(recorded.glob("*.yaml"))
    assert len(fixtures) == 2, proxy.output()
    replay = cli_home.run("replay", *map(str, fixtures), "--caps", str(caps_file), check=False)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    # and no stored value, in any form, is in a fixture
    text = "".join(f.read_text() for f in fixtures)
    for canary in (GITHUB, TENANT, MS_CLIENT_SECRET):
        assert not any(form in text for form in _forms(canary))
    assert "{{credential:github}}" in text


def test_exec_passes_no_capgate_setting_to_the_command(
    cli_home: CliHome, caps_file: Path, pki: TestPki
) -> None:
    # given a home chosen through CAPGATE_HOME (and an unsafe endpoint override set)
    done = cli_home.run(
        "exec",
        "--caps",
        str(caps_file),
        "--role",
        "researcher",
        "--user",
        "alice",
        "--upstream-ca",
        str(pki.ca_pem),
        "--",
        "env",
        check=False,
    )
    # then the agent sees the proxy and CA variables, and nothing of capgate's own
    assert done.returncode == 0, done.stderr
    names = {line.partition("=")[0] for line in done.stdout.splitlines()}
    assert {"HTTPS_PROXY", "SSL_CERT_FILE"} <= names
    assert not [name for name in names if name.startswith("CAPGATE_")]
