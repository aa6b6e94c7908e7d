"""`capgate proxy --workers 2` as a real process tree: both workers serve on one port, a
killed worker is restarted, SIGTERM stops both with every decision row written, and a
rotating refresh token is never spent twice across workers."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from capgate.broker.credential_rows import CredentialSpec
from capgate.broker.oauth import UNSAFE_TOKEN_ENV
from capgate.broker.secretvalue import SecretValue
from capgate.broker.stores import Stores
from tests.oauth_server import OAuthServer

from .certs import TestPki
from .cli_harness import CliHome, ProxyProcess, curl, start_proxy_process
from .upstream import Upstream

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GITHUB = "ghp_WORKERScanaryCredential_0a1b2c3d4e5f"
CLIENT_SECRET = "ms-WORKERScanaryClientSecret-99aa88bb"

CAPS = """\
version: 1
capabilities:
  - name: github-api
    match: {{hosts: ["localhost:{tls}"], paths: ["/repos/**"]}}
    transforms:
      - auth: {{credential: github, provider: github_pat}}
  - name: graph
    match: {{hosts: ["localhost:{tls}"], paths: ["/graph/**"]}}
    transforms:
      - auth: {{credential: mail, provider: microsoft}}
roles:
  researcher:
    capabilities: [github-api, graph]
"""
WORKER_TAG = re.compile(r"\[worker (\d+) pid (\d+)\]")


@pytest.fixture
def home(tmp_path: Path) -> CliHome:
    home = CliHome(tmp_path / "home")
    home.cli("init")
    home.cli("user", "add", "alice")
    home.cli("cred", "add", "github", "--provider", "github_pat", "--kind", "api_key", stdin=GITHUB)
    return home


@pytest.fixture
def caps_file(tmp_path: Path, tls_upstream: Upstream) -> Path:
    path = tmp_path / "caps.yaml"
    path.write_text(CAPS.format(tls=tls_upstream.port))
    return path


@pytest.fixture
def workers(home: CliHome, caps_file: Path, pki: TestPki, tmp_path: Path) -> Iterator[ProxyProcess]:
    proxy = start_proxy_process(home, caps_file, pki.ca_pem, tmp_path / "logs", "--workers", "2")
    yield proxy
    proxy.terminate()


def worker_pids(proxy: ProxyProcess) -> set[int]:
    """The live children of the supervisor (its workers)."""
    pid = proxy.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(c) for c in children}


def serving_pids(proxy: ProxyProcess) -> set[int]:
    """Pids of the workers whose access log shows a request they handled."""
    pids = set()
    for line in proxy.stderr.read_text().splitlines():
        tag = WORKER_TAG.search(line)
        if tag and "capgate.access" in line:
            pids.add(int(tag.group(2)))
    return pids


def get_many(proxy: ProxyProcess, token: str, ca: Path, url: str, count: int) -> list[int]:
    """`count` curl calls, each its own process and so its own connection."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda _: curl(proxy.url(token), ca, url)[0], range(count)))


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_both_workers_serve_the_one_port(
    home: CliHome, workers: ProxyProcess, tls_upstream: Upstream
) -> None:
    # given two workers behind one port
    pids = worker_pids(workers)
    assert len(pids) == 2
    _, token = home.workspace("researcher")
    ca = Path(home.cli("ca").strip())
    # when 24 clients connect, each on a new connection
    statuses = get_many(workers, token, ca, tls_upstream.url("/repos/x", host="localhost"), 24)
    # then every request was stamped, and both workers handled some of them
    assert statuses == [200] * 24
    assert [i.header("Authorization") for i in tls_upstream.log.items[-24:]] == [
        [f"Bearer {GITHUB}"]
    ] * 24
    wait_for(lambda: serving_pids(workers) == pids)
    assert GITHUB not in workers.output()


def test_a_killed_worker_is_restarted_and_serves(
    home: CliHome, workers: ProxyProcess, tls_upstream: Upstream
) -> None:
    before = worker_pids(workers)
    victim = min(before)
    # when one worker is killed outright (no chance to clean up)
    os.kill(victim, signal.SIGKILL)
    # then the supervisor starts a replacement on the same port
    wait_for(lambda: len(worker_pids(workers) - before) == 1 and victim not in worker_pids(workers))
    replacement = (worker_pids(workers) - before).pop()
    wait_for(lambda: f"pid {replacement}) listening" in workers.stderr.read_text())
    assert workers.process.poll() is None
    _, token = home.workspace("researcher")
    ca = Path(home.cli("ca").strip())
    statuses = get_many(workers, token, ca, tls_upstream.url("/repos/y", host="localhost"), 24)
    assert statuses == [200] * 24
    wait_for(lambda: replacement in serving_pids(workers))
    assert victim not in serving_pids(workers)


def test_sigterm_stops_both_workers_with_every_row_written(
    home: CliHome, workers: ProxyProcess, tls_upstream: Upstream
) -> None:
    pids = worker_pids(workers)
    _, token = home.workspace("researcher")
    ca = Path(home.cli("ca").strip())
    statuses = get_many(workers, token, ca, tls_upstream.url("/repos/z", host="localhost"), 30)
    assert statuses == [200] * 30
    # when the supervisor gets SIGTERM right after the last response
    assert workers.terminate() == 0
    # then both workers are gone and every decision row reached the store
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    rows = home.decisions("--all-orgs", at_least=30, wait=0)
    assert len(rows) == 30
    assert {r["decision"] for r in rows} == {"allow"}


def test_a_worker_that_cannot_start_fails_the_whole_start(
    home: CliHome, caps_file: Path, pki: TestPki, tmp_path: Path
) -> None:
    # given an upstream CA file that only the workers read (and refuse: not a PEM)
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("hello\n")
    logs = tmp_path / "logs"
    with pytest.raises(AssertionError, match="exited"):
        start_proxy_process(
            home, caps_file, pki.ca_pem, logs, "--workers", "2", "--upstream-ca", str(bad)
        )
    # then the supervisor stopped instead of restarting them forever
    stderr = (logs / "proxy.stderr").read_text()
    assert "exited with code 1 before listening" in stderr
    assert "not a PEM certificate file" in stderr


def add_mail_credential(home: CliHome, refresh_token: str) -> None:
    """A Microsoft authorization-code credential holding `refresh_token`."""
    stores = Stores.open(home.root)
    try:
        spec = CredentialSpec(
            name="mail",
            provider="microsoft",
            kind="oauth2_authorization_code",
            scopes=("read",),
            provider_config={"client_id": "web-1", "tenant_id": "contoso"},
        )
        stores.credentials.add(
            stores.control.org_id("default"),
            spec,
            SecretValue(refresh_token),
            client_secret=SecretValue(CLIENT_SECRET),
        )
    finally:
        stores.close()


@pytest.fixture
def strict_server() -> Iterator[OAuthServer]:
    with OAuthServer(rotate_refresh_tokens=True, strict_rotation=True, expires_in=3600) as srv:
        srv.response_delay = 0.05
        yield srv


def test_rotating_refresh_under_two_workers_never_spends_a_token_twice(
    home: CliHome,
    caps_file: Path,
    pki: TestPki,
    tmp_path: Path,
    tls_upstream: Upstream,
    strict_server: OAuthServer,
) -> None:
    # given a Microsoft credential whose refresh token rotates strictly, and no token cache
    strict_server.add_client("web-1", CLIENT_SECRET)
    first = strict_server.issue_refresh_token("web-1", scope="read")
    add_mail_credential(home, first)
    home.extra_env.update(
        {
            UNSAFE_TOKEN_ENV: json.dumps({"microsoft": strict_server.token_url}),
            "CAPGATE_TOKEN_TTL": "0",
        }
    )
    proxy = start_proxy_process(home, caps_file, pki.ca_pem, tmp_path / "logs", "--workers", "2")
    try:
        _, token = home.workspace("researcher")
        ca = Path(home.cli("ca").strip())
        # when 20 requests arrive at once, spread over both workers
        url = tls_upstream.url("/graph/me", host="localhost")
        with ThreadPoolExecutor(max_workers=20) as pool:
            statuses = list(pool.map(lambda _: curl(proxy.url(token), ca, url)[0], range(20)))
        # then all were authorised with a valid token, and no refresh token was reused
        assert statuses == [200] * 20
        bearers = [i.header("Authorization") for i in tls_upstream.log.items[-20:]]
        tokens = [b[0].removeprefix("Bearer ") for b in bearers if b]
        assert len(tokens) == 20 and all(strict_server.token_info(t) for t in tokens)
        assert len(set(tokens)) == 20  # TTL 0: every request minted its own
        spent = [c.form["refresh_token"] for c in strict_server.grant_calls("refresh_token")]
        assert len(spent) == 20 and len(set(spent)) == 20 and spent[0] == first
        assert not strict_server.revoked_grants
        assert all(c.status == 200 for c in strict_server.calls)
        assert len(serving_pids(proxy)) == 2
        # and the credential is still active
        listed = json.loads(home.cli("cred", "list", "--json"))
        assert [c["status"] for c in listed if c["name"] == "mail"] == ["active"]
    finally:
        assert proxy.terminate() == 0
    assert CLIENT_SECRET not in proxy.output() and first not in proxy.output()


def test_cached_tokens_cost_one_refresh_per_expiry_across_workers(
    home: CliHome,
    caps_file: Path,
    pki: TestPki,
    tmp_path: Path,
    tls_upstream: Upstream,
    strict_server: OAuthServer,
) -> None:
    # given the same rotating credential with the default token cache
    strict_server.add_client("web-1", CLIENT_SECRET)
    first = strict_server.issue_refresh_token("web-1", scope="read")
    add_mail_credential(home, first)
    home.extra_env[UNSAFE_TOKEN_ENV] = json.dumps({"microsoft": strict_server.token_url})
    proxy = start_proxy_process(home, caps_file, pki.ca_pem, tmp_path / "logs", "--workers", "2")
    try:
        _, token = home.workspace("researcher")
        ca = Path(home.cli("ca").strip())
        url = tls_upstream.url("/graph/me", host="localhost")
        # when 20 requests arrive at once, spread over both workers
        with ThreadPoolExecutor(max_workers=20) as pool:
            statuses = list(pool.map(lambda _: curl(proxy.url(token), ca, url)[0], range(20)))
        assert statuses == [200] * 20
        assert len(serving_pids(proxy)) == 2
        # then one refresh served both workers: the second found the first's shared token
        spent = [c.form["refresh_token"] for c in strict_server.grant_calls("refresh_token")]
        assert spent == [first]
        bearers = [i.header("Authorization") for i in tls_upstream.log.items[-20:]]
        tokens = {b[0].removeprefix("Bearer ") for b in bearers if b}
        assert len(tokens) == 1 and strict_server.token_info(next(iter(tokens)))
        assert not strict_server.revoked_grants
    finally:
        assert proxy.terminate() == 0
    # and the shared token is in no log, output or file of the home (vault: encrypted)
    (minted,) = tokens
    assert minted not in proxy.output()
    for path in [*home.root.rglob("*"), *(tmp_path / "logs").rglob("*")]:
        if path.is_file():
            assert minted.encode() not in path.read_bytes(), path


def test_a_second_supervisor_cannot_join_the_port(
    home: CliHome, workers: ProxyProcess, caps_file: Path
) -> None:
    # given workers on a port, when another `--workers` proxy of the same user asks for it
    done = home.run(
        "proxy", "--caps", str(caps_file), "--listen", f"127.0.0.1:{workers.port}",
        "--workers", "2", check=False, timeout=60,
    )  # fmt: skip
    # then it is refused, instead of silently sharing the SO_REUSEPORT group
    assert done.returncode == 1
    assert f"127.0.0.1:{workers.port} is in use" in done.stderr
    assert len(worker_pids(workers)) == 2
