"""The control plane's identity pieces in the broker: API keys, console links and sessions,
hosted-consent states (expiry and single use without waiting), and the role table."""

from __future__ import annotations

import pytest

from capgate.broker import access, hosted_consent, sessions
from capgate.broker.access import POLICY, Action, Reach
from capgate.broker.credential_rows import CredentialSpec
from capgate.broker.errors import Forbidden, InvalidInput
from capgate.broker.identity import Principal
from capgate.broker.oauth import Endpoints
from capgate.broker.stores import Stores


@pytest.fixture
def users(stores: Stores, org: str) -> str:
    stores.workspaces.add_user(org, "alice", operator=True)
    stores.workspaces.add_user(org, "bob")
    return org


def test_api_keys_expire_revoke_and_never_store_the_token(stores: Stores, users: str) -> None:
    row, token = stores.api_keys.create(users, "bob", name="ci")
    found = stores.api_keys.authenticate(token)
    assert found is not None and (found.user, found.role, found.org) == ("bob", "member", "acme")
    assert stores.api_keys.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert stores.api_keys.list(users)[0].last_used_at is not None
    stores.api_keys.revoke(users, row.id)
    assert stores.api_keys.authenticate(token) is None
    assert stores.api_keys.list(users) == []
    raw = stores.home.control_db.read_bytes()
    wal = stores.home.control_db.with_name("control.db-wal")
    raw += wal.read_bytes() if wal.exists() else b""
    assert token.encode() not in raw


@pytest.mark.parametrize("bad", [0, -5, True])
def test_api_key_expiry_must_be_positive(stores: Stores, users: str, bad: int) -> None:
    with pytest.raises(InvalidInput):
        stores.api_keys.create(users, "bob", expires_in_s=bad)


def test_a_link_is_single_use_and_expires(
    stores: Stores, users: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = stores.sessions.create_link(users, "bob")
    session = stores.sessions.redeem_link(link.token)
    assert session is not None and session.user == "bob"
    assert stores.sessions.redeem_link(link.token) is None
    principal = stores.sessions.authenticate(session.token)
    assert principal is not None and principal.csrf_token == session.csrf_token
    expired = stores.sessions.create_link(users, "bob", ttl_s=0)
    assert stores.sessions.redeem_link(expired.token) is None
    monkeypatch.setattr(sessions, "SESSION_TTL_S", 0)
    short = stores.sessions.redeem_link(stores.sessions.create_link(users, "bob").token)
    assert short is not None and stores.sessions.authenticate(short.token) is None
    stores.sessions.revoke(session.token)
    assert stores.sessions.authenticate(session.token) is None


def test_an_expired_consent_state_is_refused_before_the_token_endpoint(
    stores: Stores, users: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = stores.credentials.add(
        users,
        CredentialSpec(
            name="drive",
            provider="google",
            kind="oauth2_authorization_code",
            provider_config={"client_id": "cid"},
        ),
        None,
    )
    # an endpoint that nothing listens on: reaching it would fail differently
    endpoints = Endpoints(
        {"google": "http://127.0.0.1:9/token"}, {"google": "http://127.0.0.1:9/auth"}
    )
    bob = stores.workspaces.get_user(users, "bob")
    monkeypatch.setattr(hosted_consent, "STATE_TTL_S", 0)
    started = stores.consents.start(
        row, user_id=bob.id, redirect_uri="http://127.0.0.1:1/oauth/callback", endpoints=endpoints
    )
    state = started.authorization_url.split("state=")[1].split("&")[0]
    with pytest.raises(hosted_consent.ConsentRefused, match="expired"):
        stores.consents.complete(
            state=state, code="c", error=None, signed_in_user_id=bob.id, endpoints=endpoints
        )
    with pytest.raises(hosted_consent.ConsentRefused, match="already used"):
        stores.consents.complete(
            state=state, code="c", error=None, signed_in_user_id=bob.id, endpoints=endpoints
        )
    assert stores.credentials.get_by_id(row.id).status == "pending_consent"
    # the PKCE verifier left the vault with the state
    assert stores.vault._conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 0


def _principal(operator: bool, user: str = "bob") -> Principal:
    return Principal("org_x", "acme", "user_x", user, operator, "api_key", "key_x")


@pytest.mark.parametrize("action", list(Action))
def test_every_action_has_a_row_and_operators_reach_everything(action: Action) -> None:
    assert POLICY[action][0] is Reach.ALL
    access.allow(_principal(True), action, owner=None)
    access.allow(_principal(True), action, owner="someone-else")


@pytest.mark.parametrize(
    ("action", "own", "org_scoped"),
    [
        (Action.READ_METADATA, True, True),
        (Action.CHANGE_CREDENTIAL, True, False),
        (Action.CHANGE_SECRET, False, False),
        (Action.MANAGE_USERS, False, False),
        (Action.MANAGE_API_KEYS, True, False),
        (Action.MANAGE_WORKSPACES, True, False),
        (Action.READ_DECISIONS, True, False),
        (Action.READ_AUDIT, False, False),
        (Action.READ_ROLES, True, True),
    ],
)
def test_the_member_column(action: Action, own: bool, org_scoped: bool) -> None:
    member = _principal(False)
    for owner, allowed in (("bob", own), (None, org_scoped), ("carol", org_scoped)):
        if allowed:
            access.allow(member, action, owner=owner)
        else:
            with pytest.raises(Forbidden):
                access.allow(member, action, owner=owner)
