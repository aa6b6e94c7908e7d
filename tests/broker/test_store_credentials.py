"""Credentials through the public API: creation rules, updates, mint-side writes."""

from __future__ import annotations

import json

import pytest

from capgate.broker import audit
from capgate.broker.credentials import CredentialSpec
from capgate.broker.errors import Conflict, InvalidInput, NotFound
from capgate.broker.secretvalue import SecretValue

SA_JSON = json.dumps({"client_email": "sa@x.iam", "private_key": "-----BEGIN PRIVATE KEY-----"})


def spec(name="gh", provider="github_pat", kind="api_key", **kw) -> CredentialSpec:
    return CredentialSpec(name=name, provider=provider, kind=kind, **kw)


def google_code(user=None, override=False, name="gmail") -> CredentialSpec:
    return CredentialSpec(
        name=name,
        provider="google",
        kind="oauth2_authorization_code",
        user=user,
        provider_config={"client_id": "cid"},
        allow_user_override=override,
    )


@pytest.fixture
def alice(stores, org):
    return stores.workspaces.add_user(org, "alice")


def test_api_key_credential_is_active_and_its_value_is_in_the_vault(stores, org):
    row = stores.credentials.add(org, spec(), SecretValue("ghp_value"))
    assert row.status == "active" and row.user_id is None
    assert stores.credentials.durable_value(row).reveal() == "ghp_value"


@pytest.mark.parametrize(
    ("provider", "kind", "config", "field"),
    [
        ("github_pat", "oauth2_authorization_code", {}, "kind"),
        ("nosuch", "api_key", {}, "provider"),
        ("github_pat", "nosuch", {}, "kind"),
        ("jira", "basic_auth", {}, "config.username"),
        ("microsoft", "oauth2_client_credentials", {"client_id": "c"}, "config.tenant_id"),
        ("google", "oauth2_jwt_bearer_with_subject", {}, "config.subject"),
        (
            "google",
            "oauth2_authorization_code",
            {"client_id": "c", "client_secret_ref": "x"},
            "config.client_secret_ref",
        ),
    ],
)
def test_invalid_spec_is_a_field_error_and_leaves_the_vault_untouched(
    stores, org, provider, kind, config, field, file_bytes
):
    before = file_bytes(stores.home.vault_db)
    s = spec(provider=provider, kind=kind, provider_config=config)
    with pytest.raises(InvalidInput) as info:
        stores.credentials.add(org, s, SecretValue(SA_JSON))
    assert field in {e.field for e in info.value.errors}
    assert info.value.exit_code == 2
    assert file_bytes(stores.home.vault_db) == before
    assert stores.vault.refs() == []


def test_empty_value_is_rejected(stores, org):
    with pytest.raises(InvalidInput, match="value"):
        stores.credentials.add(org, spec(), SecretValue(""))
    with pytest.raises(InvalidInput, match="value"):
        stores.credentials.add(org, spec(), None)


def test_service_account_value_must_be_a_key_json(stores, org):
    with pytest.raises(InvalidInput, match="service account") as info:
        stores.credentials.add(
            org, spec(provider="google", kind="oauth2_jwt_bearer"), SecretValue("CANARY-x")
        )
    assert "CANARY" not in str(info.value)
    row = stores.credentials.add(
        org, spec(provider="google", kind="oauth2_jwt_bearer"), SecretValue(SA_JSON)
    )
    assert row.status == "active"


def test_user_scoped_api_key_is_rejected(stores, org, alice):
    with pytest.raises(InvalidInput, match="always org-scoped"):
        stores.credentials.add(org, spec(user="alice"), SecretValue("v"))


def test_allow_user_override_on_an_org_scoped_kind_is_rejected(stores, org):
    with pytest.raises(InvalidInput, match="allow_user_override"):
        stores.credentials.add(org, spec(allow_user_override=True), SecretValue("v"))


def test_allow_user_override_on_a_user_row_is_rejected(stores, org, alice):
    with pytest.raises(InvalidInput, match="allow_user_override"):
        stores.credentials.add(org, google_code(user="alice", override=True), None)


def test_authorization_code_without_refresh_token_is_pending_consent(stores, org):
    row = stores.credentials.add(
        org, google_code(), None, client_secret=SecretValue("client-secret")
    )
    assert row.status == "pending_consent" and row.durable_ref is None
    assert stores.credentials.durable_value(row) is None
    assert stores.credentials.client_secret(row).reveal() == "client-secret"


def test_client_secret_is_only_for_authorization_code(stores, org):
    with pytest.raises(InvalidInput, match="client_secret"):
        stores.credentials.add(org, spec(), SecretValue("v"), client_secret=SecretValue("s"))


def test_unknown_user_is_not_found(stores, org):
    with pytest.raises(NotFound, match="capgate user add"):
        stores.credentials.add(org, google_code(user="bob"), None)


def test_duplicate_row_is_a_conflict(stores, org, file_bytes):
    stores.credentials.add(org, spec(), SecretValue("v"))
    before = file_bytes(stores.home.vault_db)
    with pytest.raises(Conflict, match="already exists"):
        stores.credentials.add(org, spec(), SecretValue("v2"))
    assert file_bytes(stores.home.vault_db) == before


def test_user_row_under_org_row_without_override_is_rejected(stores, org, alice):
    stores.credentials.add(org, google_code(override=False), None)
    with pytest.raises(Conflict, match="does not allow user overrides"):
        stores.credentials.add(org, google_code(user="alice"), SecretValue("rt"))


def test_org_row_without_override_over_user_rows_is_rejected(stores, org, alice):
    stores.credentials.add(org, google_code(user="alice"), SecretValue("rt"))
    with pytest.raises(Conflict, match="--allow-user-override"):
        stores.credentials.add(org, google_code(override=False), None)


def test_org_row_with_override_over_user_rows_is_accepted(stores, org, alice):
    stores.credentials.add(org, google_code(user="alice"), SecretValue("rt"))
    row = stores.credentials.add(org, google_code(override=True), None)
    assert row.allow_user_override


def test_user_row_with_other_provider_than_org_row_is_rejected(stores, org, alice):
    stores.credentials.add(org, google_code(override=True), None)
    other = CredentialSpec(
        name="gmail",
        provider="microsoft",
        kind="oauth2_authorization_code",
        user="alice",
        provider_config={"client_id": "c", "tenant_id": "t"},
    )
    with pytest.raises(Conflict, match="same provider and kind"):
        stores.credentials.add(org, other, SecretValue("rt"))


def test_delete_removes_row_and_vault_entries_and_audits(stores, org):
    row = stores.credentials.add(
        org, google_code(), SecretValue("rt"), client_secret=SecretValue("cs")
    )
    assert len(stores.vault.refs()) == 2
    stores.credentials.delete(org, "gmail", actor="test")
    assert stores.vault.refs() == []
    with pytest.raises(NotFound):
        stores.credentials.get_by_id(row.id)
    actions = [e.action for e in audit.list_events(stores.control, org)]
    assert actions == ["credential.create", "credential.delete"]


def test_update_replaces_value_reactivates_and_drops_old_entry(stores, org):
    row = stores.credentials.add(org, spec(), SecretValue("old"))
    stores.credentials.set_status(row.id, "needs_reauth", "invalid_grant")
    updated = stores.credentials.update(org, "gh", None, SecretValue("new"))
    assert updated.status == "active" and updated.durable_ref != row.durable_ref
    assert stores.credentials.durable_value(updated).reveal() == "new"
    assert stores.vault.refs() == [updated.durable_ref]
    event = audit.list_events(stores.control, org)[-1]
    assert (event.action, event.from_status, event.to_status) == (
        "credential.update",
        "needs_reauth",
        "active",
    )


def test_replace_durable_value_only_when_the_ref_is_still_expected(stores, org):
    row = stores.credentials.add(org, google_code(), SecretValue("rt-1"))
    assert stores.credentials.replace_durable_value(row.id, row.durable_ref, SecretValue("rt-2"))
    stale = stores.credentials.replace_durable_value(row.id, row.durable_ref, SecretValue("rt-x"))
    assert stale is False
    current = stores.credentials.get_by_id(row.id)
    assert stores.credentials.durable_value(current).reveal() == "rt-2"
    assert stores.vault.refs() == [current.durable_ref]


def test_connect_fills_a_pending_consent_row(stores, org):
    row = stores.credentials.add(org, google_code(), None)
    assert stores.credentials.replace_durable_value(row.id, None, SecretValue("rt"))
    assert stores.credentials.get_by_id(row.id).status == "active"


def test_status_transition_writes_one_audit_row_and_repeats_write_none(stores, org):
    row = stores.credentials.add(org, spec(), SecretValue("v"))
    assert stores.credentials.set_status(row.id, "needs_reauth", "invalid_grant")
    assert not stores.credentials.set_status(row.id, "needs_reauth", "invalid_grant")
    events = [e for e in audit.list_events(stores.control, org) if e.action == "credential.status"]
    assert [(e.from_status, e.to_status, e.reason) for e in events] == [
        ("active", "needs_reauth", "invalid_grant")
    ]


def test_record_mint_sets_last_minted_fields(stores, org):
    row = stores.credentials.add(org, spec(), SecretValue("v"))
    stores.credentials.record_mint(row.id, "ok")
    again = stores.credentials.get_by_id(row.id)
    assert again.last_minted_status == "ok" and again.last_minted_at


def test_credential_lock_excludes_a_second_holder(stores, org):
    import threading

    row = stores.credentials.add(org, spec(), SecretValue("v"))
    order = []
    with stores.control.credential_lock(row.id):
        t = threading.Thread(target=lambda: _locked(stores, row.id, order))
        t.start()
        t.join(0.2)
        order.append("first-released")
    t.join(5)
    assert order == ["first-released", "second"]


def _locked(stores, credential_id, order):
    with stores.control.credential_lock(credential_id):
        order.append("second")
