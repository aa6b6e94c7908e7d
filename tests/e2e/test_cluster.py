"""Two homes on shared PostgreSQL stores, two `capgate proxy` processes: what one home does
is what the other proxy does on its next request. And a strictly rotating refresh token
refreshed from both at once is never spent twice (advisory lock, re-read, conditional
write)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from capgate.broker.oauth import UNSAFE_TOKEN_ENV
from tests.oauth_server import OAuthServer

from .certs import TestPki
from .cli_harness import CliHome, ProxyProcess, curl, start_proxy_process
from .test_workers import CAPS, CLIENT_SECRET, add_mail_credential, serving_pids
from .upstream import Upstream

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GITHUB = "ghp_CLUSTERcanaryCredential_9f8e7d6c5b4a"


@dataclass
class Cluster:
    a: CliHome
    b: CliHome
    caps: Path
    pki: TestPki
    logs: Path
    proxies: list[ProxyProcess]

    def proxy(self, home: CliHome, name: str) -> ProxyProcess:
        proxy = start_proxy_process(home, self.caps, self.pki.ca_pem, self.logs / name)
        self.proxies.append(proxy)
        return proxy


@pytest.fixture
def cluster(
    tmp_path: Path, pg_urls: tuple[str, str], tls_upstream: Upstream, pki: TestPki
) -> Iterator[Cluster]:
    store, vault = pg_urls
    a, b = CliHome(tmp_path / "a"), CliHome(tmp_path / "b")
    a.cli("init", "--store", store, "--vault", vault)
    b.root.mkdir()
    shutil.copy2(a.root / "key", b.root / "key")  # the same key on every machine
    b.cli("init", "--store", store, "--vault", vault)
    a.cli("user", "add", "alice")
    caps = tmp_path / "caps.yaml"
    caps.write_text(CAPS.format(tls=tls_upstream.port))
    made = Cluster(a, b, caps, pki, tmp_path / "logs", [])
    yield made
    for proxy in made.proxies:
        proxy.terminate()
    for proxy in made.proxies:
        output = proxy.output()
        assert GITHUB not in output and CLIENT_SECRET not in output
        assert store.split(":")[2].split("@")[0] not in output  # the database password


def ca(home: CliHome) -> Path:
    return Path(home.cli("ca").strip())


def authorization(upstream: Upstream) -> list[str]:
    return upstream.log.items[-1].header("Authorization")


def test_add_delete_and_revoke_in_one_home_apply_at_the_other_proxy(
    cluster: Cluster, tls_upstream: Upstream
) -> None:
    a, b = cluster.a, cluster.b
    proxy_b = cluster.proxy(b, "b")
    workspace_id, token = a.workspace("researcher")
    url = tls_upstream.url("/repos/x", host="localhost")
    # a workspace created via home A authenticates at proxy B; nothing to stamp yet
    assert curl(proxy_b.url(token), ca(b), url)[0] == 200
    assert authorization(tls_upstream) == []
    # when a credential is added via A, B stamps it on its next request
    a.cli("cred", "add", "github", "--provider", "github_pat", "--kind", "api_key", stdin=GITHUB)
    assert curl(proxy_b.url(token), ca(b), url)[0] == 200
    assert authorization(tls_upstream) == [f"Bearer {GITHUB}"]
    # when it is deleted via A, B's next request goes without it
    a.cli("cred", "delete", "github")
    assert curl(proxy_b.url(token), ca(b), url)[0] == 200
    assert authorization(tls_upstream) == []
    # when the workspace is revoked via A, B refuses the token
    a.cli("workspace", "revoke", workspace_id)
    status, _ = curl(proxy_b.url(token), ca(b), url)
    assert status in (407, 0)  # curl reports a refused CONNECT as 407
    rows = b.decisions("--all-orgs", at_least=4)
    assert rows[-1]["reason"] == "proxy_auth"


def test_both_proxies_see_each_other_changes(cluster: Cluster, tls_upstream: Upstream) -> None:
    a, b = cluster.a, cluster.b
    proxy_a, proxy_b = cluster.proxy(a, "a"), cluster.proxy(b, "b")
    _, token = b.workspace("researcher")
    url = tls_upstream.url("/repos/y", host="localhost")
    b.cli("cred", "add", "github", "--provider", "github_pat", "--kind", "api_key", stdin=GITHUB)
    for proxy, home in ((proxy_a, a), (proxy_b, b)):
        assert curl(proxy.url(token), ca(home), url)[0] == 200
        assert authorization(tls_upstream) == [f"Bearer {GITHUB}"]
    b.cli("cred", "delete", "github")
    for proxy, home in ((proxy_a, a), (proxy_b, b)):
        assert curl(proxy.url(token), ca(home), url)[0] == 200
        assert authorization(tls_upstream) == []
    # both proxies' decision rows are in the one shared store
    rows = a.decisions("--all-orgs", at_least=4)
    assert len(rows) == 4
    # and, written by two processes on two homes, they form one verifiable chain per org
    assert "verified" in b.cli("decisions", "verify", "--all-orgs")


@pytest.fixture
def strict_server() -> Iterator[OAuthServer]:
    with OAuthServer(rotate_refresh_tokens=True, strict_rotation=True) as srv:
        srv.response_delay = 0.05
        yield srv


def test_strict_rotation_over_two_replicas_keeps_the_grant(
    cluster: Cluster, tls_upstream: Upstream, strict_server: OAuthServer
) -> None:
    # given a Microsoft credential whose refresh token is single-use, and no token cache
    strict_server.add_client("web-1", CLIENT_SECRET)
    first = strict_server.issue_refresh_token("web-1", scope="read")
    add_mail_credential(cluster.a, first)
    for home in (cluster.a, cluster.b):
        home.extra_env.update(
            {
                UNSAFE_TOKEN_ENV: json.dumps({"microsoft": strict_server.token_url}),
                "CAPGATE_TOKEN_TTL": "0",
            }
        )
    proxies = [
        (cluster.proxy(cluster.a, "a"), cluster.a),
        (cluster.proxy(cluster.b, "b"), cluster.b),
    ]
    _, token = cluster.a.workspace("researcher")
    url = tls_upstream.url("/graph/me", host="localhost")
    cas = {id(home): ca(home) for _, home in proxies}
    # when 20 requests arrive at once, split over both replicas
    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(
            pool.map(
                lambda i: curl(proxies[i % 2][0].url(token), cas[id(proxies[i % 2][1])], url)[0],
                range(20),
            )
        )
    # then all were authorised, each refresh token was presented once, the grant lives
    assert statuses == [200] * 20
    tokens = [i.header("Authorization") for i in tls_upstream.log.items[-20:]]
    assert all(t and strict_server.token_info(t[0].removeprefix("Bearer ")) for t in tokens)
    spent = [c.form["refresh_token"] for c in strict_server.grant_calls("refresh_token")]
    assert len(spent) == 20 and len(set(spent)) == 20 and spent[0] == first
    assert not strict_server.revoked_grants
    assert all(c.status == 200 for c in strict_server.calls)
    assert all(serving_pids(p) == set() for p, _ in proxies)  # single processes, no tags
    listed = json.loads(cluster.b.cli("cred", "list", "--json"))
    assert [c["status"] for c in listed if c["name"] == "mail"] == ["active"]


def test_the_cluster_example_shows_a_delete_taking_effect_on_both(postgres: object) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(root / "examples" / "cluster" / "run.py")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: the delete took effect on both proxies" in done.stdout
    assert "ghp_clusterDemoToken" not in done.stdout + done.stderr


def _rows_containing(url: str, needle: str) -> list[str]:
    """Every table of one database whose rows, as text, contain `needle`."""
    found = []
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
        for (table,) in tables:
            sql = f'SELECT count(*) FROM "{table}" t WHERE strpos(t::text, %s) > 0'
            if conn.execute(sql, (needle,)).fetchone()[0]:
                found.append(table)
    return found


def test_cached_tokens_cost_one_refresh_per_expiry_across_replicas(
    cluster: Cluster, tls_upstream: Upstream, strict_server: OAuthServer, pg_urls: tuple[str, str]
) -> None:
    # given a rotating credential and two replicas with the default token cache
    strict_server.add_client("web-1", CLIENT_SECRET)
    first = strict_server.issue_refresh_token("web-1", scope="read")
    add_mail_credential(cluster.a, first)
    for home in (cluster.a, cluster.b):
        home.extra_env[UNSAFE_TOKEN_ENV] = json.dumps({"microsoft": strict_server.token_url})
    proxies = [
        (cluster.proxy(cluster.a, "a"), cluster.a),
        (cluster.proxy(cluster.b, "b"), cluster.b),
    ]
    _, token = cluster.a.workspace("researcher")
    url = tls_upstream.url("/graph/me", host="localhost")
    cas = {id(home): ca(home) for _, home in proxies}
    # when 20 requests arrive at once, split over both replicas
    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(
            pool.map(
                lambda i: curl(proxies[i % 2][0].url(token), cas[id(proxies[i % 2][1])], url)[0],
                range(20),
            )
        )
    # then one refresh served both: the second replica found the first one's token
    assert statuses == [200] * 20
    spent = [c.form["refresh_token"] for c in strict_server.grant_calls("refresh_token")]
    assert spent == [first]
    bearers = {i.header("Authorization")[0] for i in tls_upstream.log.items[-20:]}
    assert len(bearers) == 1
    minted = next(iter(bearers)).removeprefix("Bearer ")
    assert strict_server.token_info(minted) and not strict_server.revoked_grants
    # and its plaintext is in neither database (the vault holds it encrypted) nor any output
    control_url, vault_url = pg_urls
    assert _rows_containing(control_url, minted) == []
    assert _rows_containing(vault_url, minted) == []
    for proxy, _ in proxies:
        assert minted not in proxy.output()
    # when the credential is deleted via B, its shared token is gone from the vault too
    cluster.b.cli("cred", "delete", "mail")
    with psycopg.connect(vault_url) as conn:
        kinds = [r[0] for r in conn.execute("SELECT kind FROM entries").fetchall()]
    assert "minted_token" not in kinds
