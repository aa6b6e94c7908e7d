"""Terminal vs transient mint failures, status lifecycle, and canary values that must not leak."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from capgate.broker.oauth import UNSAFE_TOKEN_ENV
from tests.broker.oauth_harness import MintEnv, bearer, mint_env_fixture, point_at  # noqa: F401
from tests.oauth_server import OAuthServer

CANARY_REFRESH = "CANARY-refresh-5d1e0b77"
CANARY_SECRET = "CANARY-client-secret-93ab1c"


@pytest.fixture
def server(monkeypatch):
    with OAuthServer(rotate_refresh_tokens=True) as srv:
        point_at(monkeypatch, srv)
        yield srv


def add_graph(mint_env: MintEnv, server: OAuthServer) -> None:
    server.add_client("web-1", CANARY_SECRET)
    refresh = server.issue_refresh_token("web-1", scope="read")
    mint_env.add(
        "mail", "microsoft", "oauth2_authorization_code", refresh, scopes=["read"],
        config={"client_id": "web-1", "tenant_id": "contoso"}, client_secret=CANARY_SECRET,
    )  # fmt: skip


ECHO = {"error": "invalid_grant", "error_description": f"bad token {CANARY_REFRESH}"}

# (id, status, body, content type, delay, terminal?, reason code)
MATRIX = [
    ("400-invalid_grant", 400, {"error": "invalid_grant"}, "application/json", 0, True,
     "invalid_grant"),
    ("401-invalid_client", 401, {"error": "invalid_client"}, "application/json", 0, True,
     "invalid_client"),
    ("400-unauthorized_client", 400, {"error": "unauthorized_client"}, "application/json", 0,
     True, "unauthorized_client"),
    ("403-unknown-error", 403, {"error": "something_new"}, "application/json", 0, True,
     "http_403"),
    ("400-non-json", 400, "<html>bad request</html>", "text/html", 0, True, "http_400"),
    ("500", 500, {"error": "server_error"}, "application/json", 0, False, "server_error"),
    ("503-non-json", 503, "Service Unavailable", "text/plain", 0, False, "http_503"),
    ("429", 429, {"error": "slow_down"}, "application/json", 0, False, "slow_down"),
    ("400-temporarily_unavailable", 400, {"error": "temporarily_unavailable"},
     "application/json", 0, False, "temporarily_unavailable"),
    ("200-malformed-json", 200, "{not json", "application/json", 0, False,
     "malformed_token_response"),
    ("timeout", 200, {"access_token": "late", "expires_in": 60}, "application/json", 1.0, False,
     "timeout"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "body", "ctype", "delay", "terminal", "code"),
    [pytest.param(*row[1:], id=row[0]) for row in MATRIX],
)
def test_failure_matrix(server, mint_env: MintEnv, status, body, ctype, delay, terminal, code):
    add_graph(mint_env, server)
    server.set_failure(status, body, content_type=ctype, delay=delay)
    broker = mint_env.broker(timeout=0.3)
    outcome = mint_env.mint(broker, "mail")
    assert outcome.wire is None
    assert outcome.reason == f"auth_unavailable:{code}"
    row = mint_env.row("mail")
    assert row.status == ("needs_reauth" if terminal else "active")
    assert row.last_minted_status == (code if terminal else f"transient:{code}")
    events = mint_env.status_events("mail")
    if terminal:
        assert [(e.from_status, e.to_status, e.reason) for e in events] == [
            ("active", "needs_reauth", code)
        ]
    else:
        assert events == []


def test_connection_refused_is_transient(monkeypatch, server, mint_env: MintEnv):
    add_graph(mint_env, server)
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(UNSAFE_TOKEN_ENV, f'{{"microsoft": "http://127.0.0.1:{port}/token"}}')
    outcome = mint_env.mint(mint_env.broker(), "mail")
    assert outcome.reason == "auth_unavailable:network_error"
    assert mint_env.row("mail").status == "active"
    assert mint_env.status_events("mail") == []


def test_a_transient_failure_then_recovery_mints(server, mint_env: MintEnv):
    add_graph(mint_env, server)
    server.set_failure(503, {"error": "temporarily_unavailable"}, times=1)
    broker = mint_env.broker()
    activation = mint_env.activate(broker, "mail")
    assert not asyncio.run(broker.mint(activation, "mail")).ok
    assert server.token_valid(bearer(asyncio.run(broker.mint(activation, "mail"))))
    assert mint_env.row("mail").last_minted_status == "ok"


def test_repeated_terminal_failures_write_one_audit_row(server, mint_env: MintEnv):
    add_graph(mint_env, server)
    server.set_failure(400, {"error": "invalid_grant"})
    broker = mint_env.broker()
    activation = mint_env.activate(broker, "mail")  # a stale view: still says active
    for _ in range(3):
        assert not asyncio.run(broker.mint(activation, "mail")).ok
    assert len(mint_env.status_events("mail")) == 1
    fresh = mint_env.activate(broker, "mail")
    outcome = asyncio.run(broker.mint(fresh, "mail"))
    assert outcome.reason == "auth_unavailable:needs_reauth"
    assert len(server.calls) == 3  # a needs_reauth credential is not minted at all


def test_reuploading_the_value_recovers_needs_reauth(server, mint_env: MintEnv):
    add_graph(mint_env, server)
    server.set_failure(400, {"error": "invalid_grant"}, times=1)
    broker = mint_env.broker()
    assert not mint_env.mint(broker, "mail").ok
    fresh = server.issue_refresh_token("web-1", scope="read")
    from capgate.broker.secretvalue import SecretValue

    mint_env.stores.credentials.update(mint_env.org_id, "mail", None, SecretValue(fresh))
    assert server.token_valid(bearer(mint_env.mint(broker, "mail")))


def test_canaries_never_reach_logs_reasons_or_the_control_store(server, mint_env: MintEnv, caplog):
    caplog.set_level(logging.DEBUG)
    server.add_client("web-1", CANARY_SECRET)
    server.issue_refresh_token("web-1", scope="read")
    # The stored refresh token is the canary; the server echoes it in its error body.
    mint_env.add(
        "mail", "microsoft", "oauth2_authorization_code", CANARY_REFRESH, scopes=["read"],
        config={"client_id": "web-1", "tenant_id": "contoso"}, client_secret=CANARY_SECRET,
    )  # fmt: skip
    broker = mint_env.broker()
    reasons = []
    for status in (500, 400):
        server.set_failure(status, ECHO, times=1)
        reasons.append(mint_env.mint(broker, "mail").reason)
    server.set_failure(400, f"raw body {CANARY_REFRESH} {CANARY_SECRET}", content_type="text/plain")
    reasons.append(mint_env.mint(broker, "mail").reason)
    assert all(r and r.startswith("auth_unavailable:") for r in reasons)
    broker.close()
    mint_env.brokers.remove(broker)
    logged = "\n".join(r.getMessage() + str(r.exc_info or "") for r in caplog.records)
    home = mint_env.stores.home.root
    control = b"".join(p.read_bytes() for p in home.glob("control.db*"))
    for canary in (CANARY_REFRESH, CANARY_SECRET):
        assert canary not in logged
        assert canary not in "".join(reasons)
        assert canary.encode() not in control
        assert canary.encode() not in (home / "vault.db").read_bytes()
    assert any(r.name.startswith("capgate") for r in caplog.records)  # we did log something
