"""The control plane and the proxy on one home, both real processes: what the API creates,
the proxy injects; what the API deletes or revokes, the proxy's next request goes without;
the decisions the proxy writes come back through the API, paged, per role."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.conftest import make_home
from tests.server.harness import ServeProcess, api_key, start_serve

from .certs import TestPki
from .cli_harness import CliHome, ProxyProcess, curl, start_proxy_process
from .upstream import Upstream

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GITHUB = "ghp_APIcanaryCredential_77aa66bb55cc44dd"
TENANT = "tenant-APIcanarySecret-1029384756"

CAPS = """\
version: 1
capabilities:
  - name: github-api
    match: {{hosts: ["localhost:{tls}"], paths: ["/repos/**"]}}
    transforms:
      - auth: {{credential: github, provider: github_pat}}
      - header: {{name: X-Tenant, action: set, value: 'secrets["tenant-id"]'}}
roles:
  researcher:
    capabilities: [github-api]
"""


@pytest.fixture
def both(
    tmp_path: Path, pki: TestPki, tls_upstream: Upstream
) -> Iterator[tuple[CliHome, ServeProcess, ProxyProcess, Path]]:
    home = make_home(tmp_path / "home")
    caps = tmp_path / "caps.yaml"
    caps.write_text(CAPS.format(tls=tls_upstream.port))
    served = start_serve(home, tmp_path / "logs", "--caps", str(caps))
    proxy = start_proxy_process(home, caps, pki.ca_pem, tmp_path / "logs")
    try:
        yield home, served, proxy, caps
    finally:
        proxy.terminate()
        served.stop()
    output = served.output() + proxy.output()
    for canary in (GITHUB, TENANT):
        assert canary not in output


def test_api_changes_reach_the_proxys_next_request(both, tls_upstream: Upstream) -> None:
    home, served, proxy, _ = both
    ca = Path(home.cli("ca").strip())
    url = tls_upstream.url("/repos/x", host="localhost")
    with served.client(api_key(home, "alice")) as op, served.client(api_key(home, "bob")) as bob:
        ws = bob.post("/v1/workspaces", json={"role": "researcher"}).json()
        assert ws["preflight"] == {
            "missing_credentials": ["github"],
            "missing_secrets": ["tenant-id"],
        }
        made = op.post(
            "/v1/credentials",
            json={"name": "github", "provider": "github_pat", "kind": "api_key", "value": GITHUB},
        )
        assert made.status_code == 201
        assert op.post("/v1/secrets", json={"name": "tenant-id", "value": TENANT}).status_code == (
            201
        )
        roles = bob.get("/v1/roles").json()["roles"]
        assert roles[0]["missing_credentials"] == [] and roles[0]["missing_secrets"] == []

        assert curl(proxy.url(ws["token"]), ca, url)[0] == 200
        seen = tls_upstream.log.items[-1]
        assert seen.header("Authorization") == [f"Bearer {GITHUB}"]
        assert seen.header("X-Tenant") == [TENANT]

        # an API delete: the very next request goes without the credential
        assert op.delete(f"/v1/credentials/{made.json()['id']}").status_code == 204
        assert curl(proxy.url(ws["token"]), ca, url)[0] == 200
        assert tls_upstream.log.items[-1].header("Authorization") == []

        # an API revoke: the next request is refused at the proxy
        assert bob.delete(f"/v1/workspaces/{ws['id']}").status_code == 204
        status, _ = curl(proxy.url(ws["token"]), ca, url)
        assert status in (407, 0)

        # the decisions come back through the API: the member sees their workspace's
        rows = home.decisions(at_least=2)
        assert len(rows) >= 2
        mine = bob.get("/v1/decisions", params={"limit": 1})
        assert mine.status_code == 200
        page = mine.json()
        assert len(page["decisions"]) == 1 and page["next"]
        newest = page["decisions"][0]
        assert newest["workspace_id"] == ws["id"]
        everything = op.get("/v1/decisions", params={"limit": 1000}).json()["decisions"]
        ids = [d["id"] for d in everything]
        assert ids == sorted(ids)  # newest last
        assert newest["id"] == max(d["id"] for d in everything if d["workspace_id"] == ws["id"])
        first = op.get("/v1/decisions", params={"after": "0", "limit": 1}).json()
        second = op.get("/v1/decisions", params={"after": first["next"], "limit": 10}).json()
        assert [d["id"] for d in first["decisions"] + second["decisions"]] == ids
        assert op.get("/v1/decisions", params={"after": second["next"]}).json() == {
            "decisions": [],
            "next": second["next"],
        }
        # another user's workspace is not theirs to read
        carols = op.post("/v1/workspaces", json={"role": "researcher", "user": "carol"}).json()
        assert bob.get("/v1/decisions", params={"workspace": carols["id"]}).status_code == 403
        assert bob.get("/v1/decisions", params={"workspace": "ws_nothere"}).status_code == 404

        # the audit trail names the API callers, and never a value
        events = op.get("/v1/audit", params={"limit": 1000}).json()["events"]
        actions = {(e["action"], e["actor"]) for e in events}
        assert ("credential.create", "api:alice") in actions
        assert ("credential.delete", "api:alice") in actions
        assert ("workspace.revoke", "api:bob") in actions
        assert GITHUB not in json.dumps(events) and TENANT not in json.dumps(events)


def test_workspace_ttl_expires_the_token(both, tls_upstream: Upstream) -> None:
    home, served, proxy, _ = both
    ca = Path(home.cli("ca").strip())
    with served.client(api_key(home, "bob")) as bob:
        ws = bob.post("/v1/workspaces", json={"role": "researcher", "ttl_s": 1}).json()
        assert ws["expires_at"]
        listed = bob.get("/v1/workspaces").json()["workspaces"]
        assert next(w for w in listed if w["id"] == ws["id"])["expires_at"] == ws["expires_at"]
        bad = bob.post("/v1/workspaces", json={"role": "researcher", "ttl_s": 0})
        assert bad.status_code == 422
    time.sleep(1.5)  # past the 1 s lease
    status, _ = curl(proxy.url(ws["token"]), ca, tls_upstream.url("/repos/x", host="localhost"))
    assert status in (407, 0)
