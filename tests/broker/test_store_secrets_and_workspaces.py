"""Secrets, users, workspaces and agent tokens through the public API."""

from __future__ import annotations

import sqlite3

import pytest

from capgate.broker import audit
from capgate.broker import workspaces as ws_module
from capgate.broker.errors import Conflict, InvalidInput, NotFound
from capgate.broker.secretvalue import SecretValue


def test_secret_set_and_values(stores, org):
    stores.secrets.set(org, "tenant-id", SecretValue("t-123"))
    assert stores.secrets.values(org, ["tenant-id", "missing"]) == {
        "tenant-id": SecretValue("t-123")
    }


def test_setting_an_existing_secret_says_delete_first(stores, org):
    stores.secrets.set(org, "s", SecretValue("one"))
    with pytest.raises(Conflict, match="delete it first"):
        stores.secrets.set(org, "s", SecretValue("two"))
    assert len(stores.vault.refs()) == 1


def test_empty_secret_is_rejected(stores, org):
    with pytest.raises(InvalidInput):
        stores.secrets.set(org, "s", SecretValue(""))


def test_secret_names_are_per_org(stores, org):
    other = stores.control.org_id("other", create=True)
    stores.secrets.set(org, "s", SecretValue("a"))
    stores.secrets.set(other, "s", SecretValue("b"))
    assert stores.secrets.values(other, ["s"])["s"].reveal() == "b"
    assert [r.name for r in stores.secrets.list_secrets(org)] == ["s"]


def test_secret_delete_removes_row_and_vault_entry_and_audits(stores, org):
    stores.secrets.set(org, "s", SecretValue("a"))
    stores.secrets.delete(org, "s")
    assert stores.vault.refs() == [] and stores.secrets.list_secrets(org) == []
    assert [e.action for e in audit.list_events(stores.control, org)] == [
        "secret.create",
        "secret.delete",
    ]
    with pytest.raises(NotFound):
        stores.secrets.delete(org, "s")


def test_duplicate_user_is_a_conflict(stores, org):
    stores.workspaces.add_user(org, "alice", operator=True)
    with pytest.raises(Conflict):
        stores.workspaces.add_user(org, "alice")
    assert stores.workspaces.list_users(org)[0].operator


def test_workspace_token_authenticates_to_its_workspace(stores, org):
    stores.workspaces.add_user(org, "alice")
    ws, token = stores.workspaces.create(org, "researcher", "alice")
    assert token.startswith("cg_") and len(token) >= 3 + 43
    found = stores.workspaces.authenticate(token)
    assert (found.id, found.org, found.role, found.user) == (ws.id, "acme", "researcher", "alice")


def test_token_is_not_recoverable_from_the_store(stores, org):
    stores.workspaces.add_user(org, "alice")
    _, token = stores.workspaces.create(org, "r", "alice")
    stores.close()
    for path in stores.home.root.glob("*.db*"):
        data = path.read_bytes()
        assert token.encode() not in data and token[3:].encode() not in data


def test_wrong_or_malformed_tokens_fail(stores, org):
    stores.workspaces.add_user(org, "alice")
    _, token = stores.workspaces.create(org, "r", "alice")
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (tampered, "", "cg_", "nope", token + "x"):
        assert stores.workspaces.authenticate(bad) is None


def test_revoked_workspace_token_fails(stores, org):
    stores.workspaces.add_user(org, "alice")
    ws, token = stores.workspaces.create(org, "r", "alice")
    stores.workspaces.revoke(org, ws.id)
    assert stores.workspaces.authenticate(token) is None
    assert stores.workspaces.get(org, ws.id).revoked_at


def test_workspace_of_another_org_cannot_be_revoked(stores, org):
    stores.workspaces.add_user(org, "alice")
    ws, _ = stores.workspaces.create(org, "r", "alice")
    other = stores.control.org_id("other", create=True)
    with pytest.raises(NotFound):
        stores.workspaces.revoke(other, ws.id)


def test_last_used_is_recorded_at_most_once_per_interval(stores, org, monkeypatch):
    stores.workspaces.add_user(org, "alice")
    _, token = stores.workspaces.create(org, "r", "alice")

    def last_used():
        return stores.control.query("SELECT last_used_at FROM agent_tokens")[0][0]

    stores.workspaces.authenticate(token)
    first = last_used()
    assert first
    stores.workspaces.authenticate(token)
    assert last_used() == first
    monkeypatch.setattr(ws_module, "LAST_USED_INTERVAL_S", 0.0)
    stores.workspaces.authenticate(token)
    assert last_used() > first


def test_token_rows_hold_prefix_and_sha256_only(stores, org):
    stores.workspaces.add_user(org, "alice")
    _, token = stores.workspaces.create(org, "r", "alice")
    conn = sqlite3.connect(stores.home.control_db)
    prefix, digest = conn.execute("SELECT prefix, sha256 FROM agent_tokens").fetchone()
    conn.close()
    assert prefix == token[3:11] and digest == ws_module.token_sha256(token)
