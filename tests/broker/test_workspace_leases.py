"""Workspace leases: `expires_at`, renew, expiry at authentication, and provisioning."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest

from capgate.broker.errors import Conflict, InvalidInput, NotFound
from capgate.broker.home import init_home
from capgate.broker.provision import provision_workspace
from capgate.broker.store import MIGRATIONS, connect, migrate
from capgate.broker.stores import Stores
from capgate.broker.types import Workspace
from capgate.proxy.addon.session import Sessions
from capgate.proxy.cli.durations import parse_duration

CAPS = """\
version: 1
capabilities:
  - name: api
    match: {hosts: ["api.example.com"]}
roles:
  researcher:
    capabilities: [api]
"""


def _expire_now(stores: Stores, workspace_id: str) -> None:
    """Move a lease's end into the past, as the clock would."""
    with stores.control.write() as conn:
        conn.execute(
            "UPDATE workspaces SET expires_at = '2000-01-01T00:00:00.000000Z' WHERE id = ?",
            (workspace_id,),
        )


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_workspace_without_ttl_never_expires(stores, org):
    stores.workspaces.add_user(org, "alice")
    ws, token = stores.workspaces.create(org, "r", "alice")
    assert ws.expires_at is None and ws.to_json()["expires_at"] is None
    assert stores.workspaces.authenticate(token).expires_at is None


def test_ttl_sets_expires_at_and_the_token_carries_it(stores, org):
    stores.workspaces.add_user(org, "alice")
    before = time.time()
    ws, token = stores.workspaces.create(org, "r", "alice", ttl_s=3600)
    assert before + 3600 <= _unix(ws.expires_at) <= time.time() + 3600
    assert stores.workspaces.get(org, ws.id).expires_at == ws.expires_at
    found = stores.workspaces.authenticate(token)
    assert found.expires_at == pytest.approx(_unix(ws.expires_at))


def test_expired_token_does_not_authenticate(stores, org):
    stores.workspaces.add_user(org, "alice")
    ws, token = stores.workspaces.create(org, "r", "alice", ttl_s=3600)
    _expire_now(stores, ws.id)
    assert stores.workspaces.authenticate(token) is None


def test_a_one_second_lease_runs_out_by_itself(stores, org):
    stores.workspaces.add_user(org, "alice")
    _, token = stores.workspaces.create(org, "r", "alice", ttl_s=1)
    assert stores.workspaces.authenticate(token) is not None
    time.sleep(1.1)
    assert stores.workspaces.authenticate(token) is None


def test_renew_moves_the_end_forward(stores, org):
    stores.workspaces.add_user(org, "alice")
    ws, token = stores.workspaces.create(org, "r", "alice", ttl_s=5)
    renewed = stores.workspaces.renew(org, ws.id, 3600)
    assert _unix(renewed.expires_at) > _unix(ws.expires_at) + 3000
    assert stores.workspaces.authenticate(token) is not None


def test_renew_refuses_expired_revoked_and_foreign_workspaces(stores, org):
    stores.workspaces.add_user(org, "alice")
    expired, token = stores.workspaces.create(org, "r", "alice", ttl_s=60)
    _expire_now(stores, expired.id)
    with pytest.raises(Conflict, match="expired"):
        stores.workspaces.renew(org, expired.id, 60)
    assert stores.workspaces.authenticate(token) is None  # stays dead
    revoked, _ = stores.workspaces.create(org, "r", "alice", ttl_s=60)
    stores.workspaces.revoke(org, revoked.id)
    with pytest.raises(Conflict, match="revoked"):
        stores.workspaces.renew(org, revoked.id, 60)
    other = stores.control.org_id("other", create=True)
    live, _ = stores.workspaces.create(org, "r", "alice", ttl_s=60)
    with pytest.raises(NotFound):
        stores.workspaces.renew(other, live.id, 60)


@pytest.mark.parametrize("ttl", [0, -1, True, 1.5, 10**10])
def test_bad_ttl_is_refused_and_nothing_is_written(stores, org, ttl):
    stores.workspaces.add_user(org, "alice")
    with pytest.raises(InvalidInput, match="ttl_s"):
        stores.workspaces.create(org, "r", "alice", ttl_s=ttl)
    assert stores.workspaces.list_workspaces(org) == []


def test_lease_migration_is_safe_on_a_version_2_home_with_rows(tmp_path: Path):
    result = init_home(tmp_path / "home")
    conn = connect(result.home.control_db)
    migrate(conn, MIGRATIONS[:2])
    conn.execute("INSERT INTO orgs (id, name, created_at) VALUES ('org_1', 'acme', 't')")
    conn.execute(
        "INSERT INTO users (id, org_id, name, operator, created_at)"
        " VALUES ('user_1', 'org_1', 'alice', 0, 't')"
    )
    conn.execute(
        "INSERT INTO workspaces (id, org_id, role, user_id, created_at)"
        " VALUES ('ws_1', 'org_1', 'r', 'user_1', 't')"
    )
    conn.close()
    stores = Stores.open(result.home)
    assert stores.workspaces.get("org_1", "ws_1").expires_at is None
    stores.close()


def test_provision_adds_a_new_user_only_when_asked(stores):
    with pytest.raises(NotFound):
        provision_workspace(stores, "fresh", "r", "bob")
    assert stores.control.find_org_id("fresh") is None  # nothing written
    made = provision_workspace(stores, "fresh", "r", "bob", add_user=True, ttl_s=60)
    assert made.added_user and made.workspace.user == "bob" and made.workspace.expires_at
    again = provision_workspace(stores, "fresh", "r", "bob")
    assert not again.added_user


def test_provision_refuses_a_role_the_caps_file_does_not_define(stores):
    with pytest.raises(InvalidInput, match=r"'admin' is not defined.*researcher"):
        provision_workspace(
            stores, "acme", "admin", "alice", add_user=True, known_roles={"researcher"}
        )
    assert stores.control.find_org_id("acme") is None


class _CountingBroker:
    """The three BrokerPort calls Sessions makes, over real stores."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.lookups = 0

    def generation(self) -> int:
        return self.stores.changes.generation()

    def authenticate(self, token: str) -> Workspace | None:
        self.lookups += 1
        return self.stores.workspaces.authenticate(token)


def test_cached_session_is_refused_once_its_lease_ends_without_a_generation_change(stores, org):
    stores.workspaces.add_user(org, "alice")
    ws, token = stores.workspaces.create(org, "r", "alice", ttl_s=3600)
    broker = _CountingBroker(stores)
    sessions = Sessions(broker)  # type: ignore[arg-type]
    sessions.refresh()
    assert sessions.workspace(token) is not None
    assert sessions.workspace(token) is not None and broker.lookups == 1  # cached
    generation = broker.generation()
    _expire_now(stores, ws.id)
    # The cached copy still says "an hour": emulate the hour passing for the cache too.
    sessions._workspaces[token] = Workspace(
        **{**vars(sessions._workspaces[token]), "expires_at": 1.0}
    )
    sessions.refresh()
    assert broker.generation() == generation
    assert sessions.workspace(token) is None


def test_parse_duration_units_and_bounds():
    assert [parse_duration(t) for t in ("1s", "2m", "3h", "1d")] == [1, 120, 10800, 86400]
    for bad in ("0s", "", "5", "1w", "-1s", "1.5h", "1 h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_cli_workspace_create_ttl_and_list_show_the_lease(cli):
    assert cli("user", "add", "alice").exit_code == 0
    created = cli("workspace", "create", "--role", "r", "--user", "alice", "--ttl", "2h", "--json")
    assert created.exit_code == 0, created.output
    doc = json.loads(created.stdout)
    assert set(doc) == {"id", "token"}
    listed = json.loads(cli("workspace", "list", "--json").stdout)
    assert listed[0]["id"] == doc["id"]
    assert _unix(listed[0]["expires_at"]) == pytest.approx(time.time() + 7200, abs=60)
    assert "expires " in cli("workspace", "list").stdout


@pytest.mark.parametrize("ttl", ["0s", "10", "1w", "-5m"])
def test_cli_bad_ttl_is_a_usage_error_and_writes_nothing(cli, ttl):
    assert cli("user", "add", "alice").exit_code == 0
    result = cli("workspace", "create", "--role", "r", "--user", "alice", "--ttl", ttl)
    assert result.exit_code == 2 and "duration" in result.output
    assert json.loads(cli("workspace", "list", "--json").stdout) == []


def test_cli_workspace_create_with_caps_refuses_an_undefined_role(cli, tmp_path: Path):
    caps = tmp_path / "caps.yaml"
    caps.write_text(CAPS)
    result = cli("workspace", "create", "--role", "admin", "--user", "alice", "--caps", str(caps))
    assert result.exit_code == 2
    assert "'admin' is not defined in the caps file (roles: researcher)" in result.output
    assert json.loads(cli("workspace", "list", "--json").stdout) == []
    assert cli("user", "add", "alice").exit_code == 0
    ok = cli("workspace", "create", "--role", "researcher", "--user", "alice", "--caps", str(caps))
    assert ok.exit_code == 0, ok.output
