"""OAuth mints against a real authlib token endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from capgate.broker.oauth import UNPARSEABLE
from capgate.broker.sharedtokens import SharedTokens
from capgate.broker.tokencache import TokenCache
from tests.broker.oauth_harness import MintEnv, bearer, mint_env_fixture, point_at  # noqa: F401
from tests.oauth_server import JWT_BEARER, OAuthServer, make_service_account

GRAPH_DEFAULT = "https://graph.microsoft.com/.default"


@pytest.fixture
def server(monkeypatch):
    with OAuthServer() as srv:
        point_at(monkeypatch, srv)
        yield srv


@pytest.fixture
def rotating(monkeypatch):
    with OAuthServer(rotate_refresh_tokens=True, strict_rotation=True) as srv:
        point_at(monkeypatch, srv)
        yield srv


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


# -- client credentials --------------------------------------------------------------------


def test_client_credentials_mints_a_token_the_server_accepts(server, mint_env: MintEnv):
    server.add_client("app-1", "s3cret", scope=GRAPH_DEFAULT)
    mint_env.add(
        "graph", "microsoft", "oauth2_client_credentials", "s3cret",
        config={"client_id": "app-1", "tenant_id": "contoso"},
    )  # fmt: skip
    outcome = mint_env.mint(mint_env.broker(), "graph")
    assert server.token_valid(bearer(outcome))
    (call,) = server.calls
    assert call.form["grant_type"] == "client_credentials"
    assert call.form["scope"] == GRAPH_DEFAULT
    assert outcome.wire.oauth
    row = mint_env.row("graph")
    assert row.last_minted_status == "ok" and row.last_minted_at


def test_a_cached_token_is_reused_and_ttl_zero_mints_every_time(server, mint_env: MintEnv):
    server.add_client("app-1", "s3cret", scope=GRAPH_DEFAULT)
    mint_env.add(
        "graph", "microsoft", "oauth2_client_credentials", "s3cret",
        config={"client_id": "app-1", "tenant_id": "contoso"},
    )  # fmt: skip
    cached = mint_env.broker()
    activation = mint_env.activate(cached, "graph")

    async def three(broker, act):
        return [bearer(await broker.mint(act, "graph")) for _ in range(3)]

    assert len(set(asyncio.run(three(cached, activation)))) == 1
    assert len(server.calls) == 1
    fresh = mint_env.broker(ttl=0, skew=0)
    assert len(set(asyncio.run(three(fresh, mint_env.activate(fresh, "graph"))))) == 3
    assert len(server.calls) == 4


# -- authorization code (refresh_token grant) ----------------------------------------------


def test_refresh_without_rotation_keeps_the_stored_refresh_token(server, mint_env: MintEnv):
    server.add_client("web-1", "csecret")
    refresh = server.issue_refresh_token("web-1", scope="read")
    mint_env.add(
        "drive", "google", "oauth2_authorization_code", refresh, scopes=["read"],
        config={"client_id": "web-1"}, client_secret="csecret",
    )  # fmt: skip
    outcome = mint_env.mint(mint_env.broker(), "drive")
    assert server.token_valid(bearer(outcome))
    (call,) = server.calls
    assert call.form["grant_type"] == "refresh_token"
    assert call.form["refresh_token"] == refresh
    assert call.form["client_secret"] == "csecret"
    assert mint_env.refresh_token("drive") == refresh


def test_a_rotated_refresh_token_is_stored_before_the_access_token_is_used(
    rotating, mint_env: MintEnv
):
    rotating.add_client("web-1", "csecret")
    first = rotating.issue_refresh_token("web-1", scope="read")
    mint_env.add(
        "mail", "microsoft", "oauth2_authorization_code", first, scopes=["read"],
        config={"client_id": "web-1", "tenant_id": "contoso"}, client_secret="csecret",
    )  # fmt: skip
    broker = mint_env.broker()
    activation = mint_env.activate(broker, "mail")
    token = bearer(asyncio.run(broker.mint(activation, "mail")))
    second = mint_env.refresh_token("mail")
    assert second != first
    assert rotating.token_valid(token)
    broker.drop_token(activation, "mail")  # e.g. the upstream answered 401
    again = bearer(asyncio.run(broker.mint(activation, "mail")))
    assert again != token and rotating.token_valid(again)
    assert [c.form["refresh_token"] for c in rotating.calls] == [first, second]
    assert not rotating.revoked_grants


def test_100_concurrent_mints_of_an_expired_token_make_one_call(rotating, mint_env: MintEnv):
    rotating.add_client("web-1", "csecret")
    rotating.response_delay = 0.2
    refresh = rotating.issue_refresh_token("web-1", scope="read")
    mint_env.add(
        "mail", "microsoft", "oauth2_authorization_code", refresh, scopes=["read"],
        config={"client_id": "web-1", "tenant_id": "contoso"}, client_secret="csecret",
    )  # fmt: skip
    broker = mint_env.broker()
    clock = Clock()
    broker.tokens = TokenCache(max_ttl=300, skew=30, clock=clock)
    broker.shared = SharedTokens(broker.stores, max_ttl=300, skew=30, clock=clock)
    activation = mint_env.activate(broker, "mail")
    first = bearer(asyncio.run(broker.mint(activation, "mail")))
    clock.now += 271  # past min(3600, 300) - 30: expired

    async def hundred():
        return await asyncio.gather(*(broker.mint(activation, "mail") for _ in range(100)))

    tokens = {bearer(o) for o in asyncio.run(hundred())}
    assert len(rotating.calls) == 2
    assert len(tokens) == 1 and tokens != {first}
    assert rotating.token_valid(tokens.pop())


# -- JWT bearer (RFC 7523) -----------------------------------------------------------------


@pytest.fixture
def service_account(server):
    document, public_pem = make_service_account("robot@proj.iam.gserviceaccount.com", "kid-1")
    server.add_service_account(
        "robot@proj.iam.gserviceaccount.com", public_pem, kid="kid-1",
        scope="drive.readonly gmail.send", subjects=("ceo@example.com",),
    )  # fmt: skip
    return document


def test_jwt_bearer_assertion_is_verified_by_the_server(server, service_account, mint_env):
    mint_env.add("sa", "google", "oauth2_jwt_bearer", service_account, scopes=["drive.readonly"])
    token = bearer(mint_env.mint(mint_env.broker(), "sa"))
    assert server.token_valid(token)
    (call,) = server.calls
    assert call.grant_type == JWT_BEARER
    assert set(call.form) == {"grant_type", "assertion"}
    info = server.token_info(token)
    assert info.scope == "drive.readonly" and info.user is None


def test_jwt_bearer_with_subject_impersonates_the_configured_user(
    server, service_account, mint_env
):
    mint_env.add(
        "dwd", "google", "oauth2_jwt_bearer_with_subject", service_account,
        scopes=["gmail.send"], config={"subject": "ceo@example.com"},
    )  # fmt: skip
    token = bearer(mint_env.mint(mint_env.broker(), "dwd"))
    assert server.token_info(token).user == "ceo@example.com"


def test_a_subject_without_delegation_is_terminal(server, service_account, mint_env):
    mint_env.add(
        "dwd", "google", "oauth2_jwt_bearer_with_subject", service_account,
        scopes=["gmail.send"], config={"subject": "intern@example.com"},
    )  # fmt: skip
    outcome = mint_env.mint(mint_env.broker(), "dwd")
    assert outcome.wire is None and outcome.reason == "auth_unavailable:invalid_client"
    assert mint_env.row("dwd").status == "needs_reauth"


def test_a_key_signed_by_another_key_is_refused(server, service_account, mint_env):
    forged, _ = make_service_account("robot@proj.iam.gserviceaccount.com", "kid-1")
    mint_env.add("sa", "google", "oauth2_jwt_bearer", forged, scopes=["drive.readonly"])
    outcome = mint_env.mint(mint_env.broker(), "sa")
    assert outcome.reason == "auth_unavailable:invalid_grant"


def test_an_unparseable_service_account_is_terminal_without_a_call(server, mint_env):
    broken = '{"client_email": "robot@example.com", "private_key": "not a PEM key"}'
    mint_env.add("sa", "google", "oauth2_jwt_bearer", broken, scopes=["x"])
    outcome = mint_env.mint(mint_env.broker(), "sa")
    assert outcome.reason == f"auth_unavailable:{UNPARSEABLE}"
    assert server.calls == []
    assert mint_env.row("sa").status == "needs_reauth"
    assert len(mint_env.status_events("sa")) == 1


# -- lifecycle -----------------------------------------------------------------------------


def test_a_deleted_credential_is_gone_on_the_next_activation(server, mint_env: MintEnv):
    server.add_client("app-1", "s3cret", scope=GRAPH_DEFAULT)
    mint_env.add(
        "graph", "microsoft", "oauth2_client_credentials", "s3cret",
        config={"client_id": "app-1", "tenant_id": "contoso"},
    )  # fmt: skip
    broker = mint_env.broker()
    assert mint_env.mint(broker, "graph").ok
    generation = broker.generation()
    mint_env.stores.credentials.delete(mint_env.org_id, "graph")  # as another process would
    assert broker.generation() != generation
    assert broker.tokens.credential_ids() == set()
    assert mint_env.mint(broker, "graph").reason == "auth_unavailable:not_configured"


def test_an_unknown_name_is_auth_unavailable(mint_env: MintEnv):
    outcome = mint_env.mint(mint_env.broker(), "nope")
    assert outcome.wire is None and outcome.reason == "auth_unavailable:not_configured"


def test_a_static_credential_needs_no_token_endpoint(mint_env: MintEnv):
    mint_env.add("gh", "github_pat", "api_key", "ghp_example_123456")
    broker = mint_env.broker()
    activation = mint_env.activate(broker, "gh")
    outcome = asyncio.run(broker.mint(activation, "gh"))
    assert dict((k, v.reveal()) for k, v in outcome.wire.headers) == {
        "Authorization": "Bearer ghp_example_123456"
    }
    assert any(p.value == b"ghp_example_123456" for p in activation.leak_patterns)
