"""The decision log under a real `capgate proxy` process: Prometheus /metrics moving with
real requests (and carrying no canary), and loss made visible when the store refuses
writes: rows retried in order, or with --audit-fail-closed, 503 until the store recovers.

The store is made unwritable the way it happens in production: another connection holds
the SQLite write lock (BEGIN IMMEDIATE), so every write of the proxy waits and fails.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .certs import TestPki
from .cli_harness import CliHome, ProxyProcess, curl, start_proxy_process
from .upstream import Upstream

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GITHUB = "ghp_METRICScanaryCredential_1a2b3c4d5e6f"
CLIENT_SECRET = "ms-METRICScanaryClientSecret-99ff88ee"
CANARIES = (GITHUB, CLIENT_SECRET)

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
      - auth: {{credential: graph, provider: microsoft}}
roles:
  researcher:
    capabilities: [github-api, graph]
"""


@pytest.fixture(scope="module")
def template_home(tmp_path_factory: pytest.TempPathFactory) -> CliHome:
    home = CliHome(
        tmp_path_factory.mktemp("template") / "home",
        # graph's token endpoint is a closed port: its mints fail (network_error).
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
        stdin=CLIENT_SECRET,
    )
    home.cli("ca")
    return home


@pytest.fixture
def cli_home(template_home: CliHome, tmp_path: Path) -> CliHome:
    root = tmp_path / "home"
    shutil.copytree(template_home.root, root)
    return CliHome(root, dict(template_home.extra_env))


@pytest.fixture
def caps_file(tmp_path: Path, tls_upstream: Upstream) -> Path:
    path = tmp_path / "caps.yaml"
    path.write_text(CAPS.format(tls=tls_upstream.port))
    return path


@pytest.fixture
def start(cli_home: CliHome, caps_file: Path, pki: TestPki, tmp_path: Path) -> Iterator[callable]:
    started: list[ProxyProcess] = []

    def run(*extra: str) -> ProxyProcess:
        proxy = start_proxy_process(cli_home, caps_file, pki.ca_pem, tmp_path / "logs", *extra)
        started.append(proxy)
        return proxy

    yield run
    for proxy in started:
        proxy.terminate()


def metrics_url(proxy: ProxyProcess) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = re.search(r"metrics on (http://\S+/metrics)", proxy.stderr.read_text())
        if found:
            return found.group(1)
        time.sleep(0.05)
    raise AssertionError("the proxy did not announce its metrics address")


def scrape(url: str) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _ca(home: CliHome) -> Path:
    return Path(home.cli("ca").strip())


def test_metrics_count_real_requests_and_carry_no_canary(
    cli_home: CliHome, start, tls_upstream: Upstream, caps_file: Path
) -> None:
    proxy = start("--metrics-listen", "127.0.0.1:0")
    url = metrics_url(proxy)
    _, token = cli_home.workspace("researcher")
    ca = _ca(cli_home)
    _, before = scrape(url)
    # given three allowed requests, one denied, one with a bad token, one failed mint
    for i in range(3):
        assert (
            curl(proxy.url(token), ca, tls_upstream.url(f"/repos/{i}", host="localhost"))[0] == 200
        )
    assert curl(proxy.url(token), ca, tls_upstream.url("/secret-path", host="localhost"))[0] == 403
    assert curl(proxy.url("cg_wrong_token"), ca, tls_upstream.url("/repos/x", host="localhost"))[
        0
    ] in (407, 0)
    assert curl(proxy.url(token), ca, tls_upstream.url("/graph/me", host="localhost"))[0] == 200
    # and one rejected and one good caps reload
    good = caps_file.read_text()
    caps_file.write_text("version: 1\ncapabilities: [oops\n")
    time.sleep(1.5)
    caps_file.write_text(good + "\n# touched\n")
    deadline = time.monotonic() + 10
    while True:
        text, after = scrape(url)
        if (
            value(after, "capgate_caps_reloads_total", result="ok") >= 1
            or time.monotonic() > deadline
        ):
            break
        time.sleep(0.2)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # then every counter moved by exactly what happened
    assert moved("capgate_requests_total", decision="allow", reason="none") == 4
    assert moved("capgate_requests_total", decision="deny", reason="no_capability") == 1
    assert moved("capgate_requests_total", decision="deny", reason="proxy_auth") == 1
    assert moved("capgate_mints_total", provider="github_pat", reason="ok") == 3
    assert moved("capgate_mints_total", provider="microsoft", reason="network_error") == 1
    assert moved("capgate_token_endpoint_seconds_count", provider="microsoft") == 1
    assert moved("capgate_caps_reloads_total", result="rejected") == 1
    assert moved("capgate_caps_reloads_total", result="ok") == 1
    assert value(after, "capgate_active_workspaces") == 1
    assert value(after, "capgate_decision_log_writable") == 1
    assert "capgate_decision_queue_depth" in text
    assert "capgate_decision_rows_dropped_total" in text
    deadline = time.monotonic() + 5
    while value(after, "capgate_decision_rows_written_total") < 6 and time.monotonic() < deadline:
        time.sleep(0.2)
        text, after = scrape(url)
    assert value(after, "capgate_decision_rows_written_total") >= 6
    # and no label carries a value, a token, a path or a host
    for secret in (*CANARIES, token, "cg_wrong_token", "/repos", "/graph", "secret-path"):
        assert secret not in text
    assert "localhost" not in text
    logs = proxy.output()
    assert all(c not in logs for c in CANARIES)


def test_a_locked_store_loses_no_row_and_the_proxy_keeps_serving(
    cli_home: CliHome, start, tls_upstream: Upstream
) -> None:
    proxy = start("--metrics-listen", "127.0.0.1:0")
    url = metrics_url(proxy)
    _, token = cli_home.workspace("researcher")
    ca = _ca(cli_home)
    target = lambda i: tls_upstream.url(f"/repos/{i}", host="localhost")  # noqa: E731
    assert curl(proxy.url(token), ca, target(0))[0] == 200
    cli_home.decisions(at_least=1)
    # when another connection holds the write lock
    lock = sqlite3.connect(cli_home.root / "control.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        for i in range(1, 6):
            assert curl(proxy.url(token), ca, target(i))[0] == 200  # still served
            time.sleep(0.5)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            _, samples = scrape(url)
            if value(samples, "capgate_decision_log_writable") == 0:
                break
            time.sleep(0.2)
        assert value(samples, "capgate_decision_write_failures_total") >= 1
        assert value(samples, "capgate_decision_log_writable") == 0
        assert value(samples, "capgate_decision_queue_depth") >= 1
        assert "cannot write policy decisions (database is locked)" in proxy.output()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    # then once the lock is released every row arrives, in order, on one valid chain
    rows = cli_home.decisions(at_least=6, wait=20)
    assert [r["path"] for r in rows] == [f"/repos/{i}" for i in range(6)]
    assert [r["seq"] for r in rows] == list(range(1, 7))
    done = cli_home.run("decisions", "verify", check=False)
    assert done.returncode == 0, done.stderr
    # 6 decisions and 4 audit events (user add, two cred adds, workspace create)
    assert done.stdout.strip() == "verified 10 rows"
    _, samples = scrape(url)
    assert value(samples, "capgate_decision_rows_dropped_total") == 0
    assert value(samples, "capgate_decision_log_writable") == 1
    assert "policy decisions are being written again" in proxy.output()


def test_audit_fail_closed_answers_503_while_the_store_is_unwritable_and_recovers(
    cli_home: CliHome, start, tls_upstream: Upstream
) -> None:
    proxy = start("--audit-fail-closed")
    _, token = cli_home.workspace("researcher")
    ca = _ca(cli_home)
    target = lambda i: tls_upstream.url(f"/repos/{i}", host="localhost")  # noqa: E731
    assert curl(proxy.url(token), ca, target(0))[0] == 200
    cli_home.decisions(at_least=1)
    forwarded = len(tls_upstream.log.items)
    lock = sqlite3.connect(cli_home.root / "control.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        # when a row cannot be written, new requests are refused with capgate's 503
        deadline = time.monotonic() + 20
        status, body, i = 200, "", 1
        while time.monotonic() < deadline:
            status, body = curl(proxy.url(token), ca, target(i))
            i += 1
            if status == 503:
                break
            time.sleep(0.3)
        assert status == 503, body
        refusal = json.loads(body)
        assert refusal["reason"] == "audit_unavailable"
        assert "decision log cannot be written" in refusal["error"]
        forwarded = len(tls_upstream.log.items)
        assert curl(proxy.url(token), ca, target(999))[0] == 503
        assert len(tls_upstream.log.items) == forwarded  # the refused request went nowhere
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    # then the proxy recovers on its own once the store takes rows again
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, body = curl(proxy.url(token), ca, target(1000))
        if status == 200:
            break
        time.sleep(0.3)
    assert status == 200, body
    deadline = time.monotonic() + 20
    rows = cli_home.decisions(at_least=i + 2, wait=20)
    while rows[-1]["decision"] != "allow" and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = cli_home.decisions()
    reasons = [r["reason"] for r in rows]
    assert reasons.count("audit_unavailable") >= 2  # the refusals themselves are on record
    assert rows[-1]["path"] == "/repos/1000" and rows[-1]["decision"] == "allow"
    assert cli_home.run("decisions", "verify", check=False).returncode == 0
    assert all(c not in proxy.output() + body for c in CANARIES)


def test_caps_diff_re_decides_recorded_traffic_under_a_candidate(
    cli_home: CliHome, start, tls_upstream: Upstream, caps_file: Path, tmp_path: Path
) -> None:
    # given real traffic through the proxy: two allowed by github-api, one by graph, one denied
    proxy = start()
    _, token = cli_home.workspace("researcher")
    ca = _ca(cli_home)
    for path, status in (("/repos/a", 200), ("/repos/a", 200), ("/graph/me", 200), ("/other", 403)):
        assert curl(proxy.url(token), ca, tls_upstream.url(path, host="localhost"))[0] == status
    cli_home.decisions(at_least=4, wait=10)
    proxy.terminate()
    original = caps_file.read_text()

    def diff(text: str, *args: str):
        candidate = tmp_path / f"candidate-{len(list(tmp_path.glob('candidate-*')))}.yaml"
        candidate.write_text(text)
        return cli_home.run("caps", "diff", str(candidate), *args, check=False)

    # when the candidate is the same file: nothing changes, exit 0
    same = diff(original)
    assert same.returncode == 0, same.stderr
    assert same.stdout.strip().endswith("0 requests would change, 4 unchanged")
    # when the candidate removes the graph capability: its request would be denied
    removed = diff(
        original.replace("capabilities: [github-api, graph]", "capabilities: [github-api]"),
        "--json",
    )
    assert removed.returncode == 1, removed.stderr
    document = json.loads(removed.stdout)
    assert document["unchanged"] == 3
    [change] = document["changed"]
    assert {k: change[k] for k in ("method", "scheme", "host", "path", "role")} == {
        "method": "GET",
        "scheme": "https",
        "host": "localhost",
        "path": "/graph/me",
        "role": "researcher",
    }
    assert change["port"] == tls_upstream.port and change["seq"] == 3
    assert change["from"] == {"decision": "allow", "capability": "graph"}
    assert change["to"] == {"decision": "deny", "capability": None}
    # when the candidate widens github-api's paths: the denied request is allowed, and
    # graph's request falls under github-api (the first match in file order)
    widened = diff(original.replace('paths: ["/repos/**"]', 'paths: ["/**"]'))
    assert widened.returncode == 1
    out = widened.stdout
    assert "deny -> allow github-api: 1 requests (1 distinct)" in out
    assert f"GET https://localhost:{tls_upstream.port}/other  (role researcher)" in out
    assert "allow graph -> allow github-api: 1 requests (1 distinct)" in out
    assert out.strip().endswith("2 requests would change, 2 unchanged")
