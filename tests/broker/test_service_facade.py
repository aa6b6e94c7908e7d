"""The Broker facade (ARCHITECTURE.md): authenticate, activate, generation, decisions, close."""

from __future__ import annotations

import asyncio
import time

from capgate.broker import decisions
from capgate.broker.home import Home
from capgate.broker.secretvalue import SecretValue
from capgate.broker.service import Broker
from capgate.broker.stores import Stores
from capgate.broker.types import PolicyDecision
from tests.broker.oauth_harness import MintEnv, mint_env_fixture, point_at  # noqa: F401
from tests.oauth_server import OAuthServer


def test_authenticate_accepts_live_tokens_only(mint_env: MintEnv):
    broker = mint_env.broker()
    row, token = mint_env.stores.workspaces.create(mint_env.org_id, "agent", "alice")
    assert broker.authenticate(token).id == row.id
    assert broker.authenticate(token + "x") is None
    mint_env.stores.workspaces.revoke(mint_env.org_id, row.id)
    assert broker.authenticate(token) is None


def test_activation_holds_resolved_names_secrets_and_leak_patterns(mint_env: MintEnv):
    mint_env.add("gh", "github_pat", "api_key", "ghp_activation_value")
    mint_env.stores.secrets.set(mint_env.org_id, "tenant", SecretValue("tenant-value-123"))
    broker = mint_env.broker()
    activation = broker.activate(mint_env.workspace, ["gh", "missing"], ["tenant", "nope"])
    assert set(activation.credentials) == {"gh"}
    assert set(activation.secrets) == {"tenant"}
    labels = {p.label for p in activation.leak_patterns}
    assert labels == {"credential:gh", "secret:tenant"}
    assert "ghp_activation_value" not in repr(activation)
    assert activation.generation == broker.generation()


def test_generation_moves_after_a_change_in_another_connection(mint_env: MintEnv):
    broker = mint_env.broker()
    before = broker.generation()
    other = Stores.open(Home(mint_env.stores.home.root))
    try:
        other.secrets.set(mint_env.org_id, "s", SecretValue("v-12345678"))
    finally:
        other.close()
    assert broker.generation() != before


def test_an_updated_static_value_is_used_after_the_generation_moves(mint_env: MintEnv):
    mint_env.add("gh", "github_pat", "api_key", "ghp_old_value_1")
    broker = mint_env.broker()
    assert mint_env.mint(broker, "gh").wire.headers[0][1].reveal() == "Bearer ghp_old_value_1"
    stale = mint_env.activate(broker, "gh")
    mint_env.stores.credentials.update(mint_env.org_id, "gh", None, SecretValue("ghp_new_2"))
    broker.generation()  # what the proxy does per request
    outcome = asyncio.run(broker.mint(stale, "gh"))
    assert outcome.wire.headers[0][1].reveal() == "Bearer ghp_new_2"


def test_decisions_are_written_by_close(mint_env: MintEnv):
    broker = mint_env.broker()
    broker.record_decision(
        PolicyDecision(
            at=time.time(), org_id=mint_env.org_id, workspace_id=mint_env.workspace.id,
            capability="github-api", decision="allow", reason=None, method="GET",
            scheme="https", host="api.github.com", port=443, path="/user",
        )
    )  # fmt: skip
    broker.close()
    mint_env.brokers.remove(broker)
    stored = decisions.list_decisions(mint_env.stores.control, mint_env.org_id)
    assert [d.to_json()["capability"] for d in stored] == ["github-api"]


def test_retry_after_pauses_minting(monkeypatch, mint_env: MintEnv):
    with OAuthServer() as server:
        point_at(monkeypatch, server)
        server.add_client("app-1", "s3cret", scope="https://graph.microsoft.com/.default")
        mint_env.add(
            "graph", "microsoft", "oauth2_client_credentials", "s3cret",
            config={"client_id": "app-1", "tenant_id": "contoso"},
        )  # fmt: skip
        server.set_failure(429, {"error": "slow_down"}, headers={"Retry-After": "30"}, times=1)
        broker = mint_env.broker()
        activation = mint_env.activate(broker, "graph")
        first = asyncio.run(broker.mint(activation, "graph"))
        second = asyncio.run(broker.mint(activation, "graph"))
    assert first.reason == "auth_unavailable:slow_down"
    assert second.reason == "auth_unavailable:retry_later"
    assert len(server.calls) == 1


def test_open_reads_the_token_cache_settings_from_the_environment(monkeypatch, mint_env):
    monkeypatch.setenv("CAPGATE_TOKEN_TTL", "0")
    broker = Broker.open(mint_env.stores.home)
    try:
        assert broker.tokens.max_ttl == 0
    finally:
        broker.close()
