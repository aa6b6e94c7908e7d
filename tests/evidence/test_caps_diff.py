"""`capgate caps diff CANDIDATE.yaml [--since T] [--json]` over rows in a real store:
every kind of change, the rows caps.yaml did not decide, and bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from capgate.broker.decisions import DecisionWriter
from capgate.broker.home import Home
from capgate.broker.stores import Stores
from tests.broker.conftest import Cli
from tests.evidence.conftest import ORG, decision

CAPS = """\
version: 1
capabilities:
  - name: github-api
    match: {hosts: ["api.github.com"], paths: ["/repos/**"]}
  - name: plain-ok
    match: {hosts: ["intranet.example"], schemes: [http], paths: ["/**"]}
    allow_plaintext: true
roles:
  dev: {capabilities: [github-api, plain-ok]}
  ops: {capabilities: []}
"""


@pytest.fixture
def recorded(home: Home) -> Cli:
    """Recorded rows of two workspaces (roles dev and ops), as the proxy writes them."""
    stores = Stores.open(home)
    org_id = stores.control.org_id(ORG, create=True)
    stores.workspaces.add_user(org_id, "alice")
    dev, _ = stores.workspaces.create(org_id, "dev", "alice")
    ops, _ = stores.workspaces.create(org_id, "ops", "alice")
    writer = DecisionWriter(home.control_db)
    base = decision(0, org_id, dev.id)
    rows = [
        replace(base, path="/repos/a"),  # allow github-api
        replace(base, at=1_700_000_100, path="/repos/b"),  # allow github-api, later
        replace(base, capability=None, decision="deny", reason="no_capability", path="/user"),
        replace(
            base,
            workspace_id=ops.id,
            capability=None,
            decision="deny",
            reason="no_capability",
            path="/repos/a",
        ),
        replace(
            base, scheme="http", host="intranet.example", port=80, path="/x", capability="plain-ok"
        ),
        replace(
            base,
            method="CONNECT",
            host="evil.example",
            path="",
            capability=None,
            decision="deny",
            reason="no_capability",
        ),
        replace(base, decision="tripwire", reason="secret:token", capability=None),
        replace(base, decision="deny", reason="host_mismatch", capability=None),
        replace(base, org_id=org_id, workspace_id=None, decision="deny", reason="proxy_auth"),
    ]
    for row in rows:
        writer.record(row)
    writer.close()
    stores.close()
    return Cli(home.root, org=ORG)


def run(cli: Cli, tmp_path: Path, text: str, *args: str):
    path = tmp_path / "candidate.yaml"
    path.write_text(text)
    return cli("caps", "diff", str(path), *args)


def test_an_unchanged_candidate_exits_0_and_counts_skipped_rows(recorded, tmp_path):
    result = run(recorded, tmp_path, CAPS, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"changed": [], "unchanged": 6, "skipped": 3}
    text = run(recorded, tmp_path, CAPS)
    assert text.exit_code == 0
    assert text.stdout.strip() == (
        "0 requests would change, 6 unchanged, 3 skipped, not decided by caps.yaml"
        " (tripwire 1, host_mismatch 1, no_workspace 1)"
    )


def test_an_https_only_capability_denies_the_plain_http_request(recorded, tmp_path):
    https_only = CAPS.replace(" schemes: [http],", "").replace("    allow_plaintext: true\n", "")
    result = run(recorded, tmp_path, https_only, "--json")
    assert result.exit_code == 1
    [change] = json.loads(result.stdout)["changed"]
    assert (change["scheme"], change["host"], change["port"]) == ("http", "intranet.example", 80)
    assert change["to"] == {"decision": "deny", "capability": None}


def test_granting_a_role_a_capability_allows_its_denied_request(recorded, tmp_path):
    result = run(
        recorded,
        tmp_path,
        CAPS.replace("ops: {capabilities: []}", "ops: {capabilities: [github-api]}"),
    )
    assert result.exit_code == 1
    assert "deny -> allow github-api: 1 requests (1 distinct)" in result.stdout
    assert "GET https://api.github.com:443/repos/a  (role ops)" in result.stdout


def test_unmatched_allow_opens_the_refused_tunnel_and_the_denied_request(recorded, tmp_path):
    candidate = CAPS.replace("version: 1\n", "version: 1\ndefaults: {unmatched: allow}\n")
    result = run(recorded, tmp_path, candidate, "--json")
    assert result.exit_code == 1, result.output
    changed = json.loads(result.stdout)["changed"]
    assert sorted((c["method"], c["role"], c["path"]) for c in changed) == [
        ("CONNECT", "dev", ""),
        ("GET", "dev", "/user"),
        ("GET", "ops", "/repos/a"),
    ]
    assert all(c["to"] == {"decision": "allow", "capability": None} for c in changed)


def test_since_limits_the_rows_re_decided(recorded, tmp_path):
    candidate = CAPS.replace('paths: ["/repos/**"]', 'paths: ["/nothing"]')
    everything = json.loads(run(recorded, tmp_path, candidate, "--json").stdout)
    assert len(everything["changed"]) == 2  # /repos/a and /repos/b lose github-api
    recent = run(recorded, tmp_path, candidate, "--json", "--since", "2023-11-14T22:15:00Z")
    assert recent.exit_code == 1
    assert [c["path"] for c in json.loads(recent.stdout)["changed"]] == ["/repos/b"]


def test_an_invalid_candidate_is_reported_and_exits_1(recorded, tmp_path):
    result = run(recorded, tmp_path, "version: 1\ncapabilities: [oops\n")
    assert result.exit_code == 1
    assert "candidate.yaml:" in result.output


def test_an_org_without_rows_has_nothing_to_change(home, tmp_path):
    result = run(Cli(home.root, org="nobody"), tmp_path, CAPS, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"changed": [], "unchanged": 0, "skipped": 0}
