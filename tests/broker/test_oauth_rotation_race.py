"""Two processes refresh one rotating credential at once against a strict-rotation server.

Strict rotation (as oidc-provider does it): presenting an already-rotated refresh token
revokes the whole grant. Without the cross-process lock and re-read, the second process
would spend the old refresh token and kill the grant for everyone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.broker.oauth_harness import MintEnv, bearer, mint_env_fixture, point_at  # noqa: F401
from tests.oauth_server import OAuthServer

CHILD = r"""
import asyncio, pathlib, sys, time
from capgate.broker.service import Broker

home, go, workspace_token = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
broker = Broker.open(pathlib.Path(home))
workspace = broker.authenticate(workspace_token)
activation = broker.activate(workspace, ["mail"], [])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
outcome = asyncio.run(broker.mint(activation, "mail"))
broker.close()
value = outcome.wire.headers[0][1].reveal() if outcome.wire else "FAILED " + outcome.reason
print(value, flush=True)
"""


@pytest.fixture
def strict(monkeypatch):
    with OAuthServer(rotate_refresh_tokens=True, strict_rotation=True) as srv:
        srv.response_delay = 0.3  # both processes are inside the refresh at the same time
        point_at(monkeypatch, srv)
        yield srv


def run_two(mint_env: MintEnv, tmp_path: Path, ttl: str) -> list[str]:
    """Two child processes minting `mail` at the same moment; their access tokens."""
    _, agent_token = mint_env.stores.workspaces.create(mint_env.org_id, "agent", "alice")
    go = tmp_path / "go"
    env = {**os.environ, "CAPGATE_TOKEN_TTL": ttl}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(mint_env.stores.home.root), str(go), agent_token],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready"
        go.touch()
        deadline = time.monotonic() + 30
        outputs = [child.communicate(timeout=max(1, deadline - time.monotonic()))[0]
                   for child in children]  # fmt: skip
    finally:
        for child in children:
            child.kill()
    tokens = [out.strip().removeprefix("Bearer ") for out in outputs]
    assert all(not t.startswith("FAILED") for t in tokens), tokens
    return tokens


def add_mail(strict: OAuthServer, mint_env: MintEnv) -> str:
    strict.add_client("web-1", "csecret")
    first = strict.issue_refresh_token("web-1", scope="read")
    mint_env.add(
        "mail", "microsoft", "oauth2_authorization_code", first, scopes=["read"],
        config={"client_id": "web-1", "tenant_id": "contoso"}, client_secret="csecret",
    )  # fmt: skip
    return first


def test_two_processes_with_the_cache_on_share_one_refresh(
    strict, mint_env: MintEnv, tmp_path: Path
):
    # given a rotating credential and two processes with the default token cache
    first = add_mail(strict, mint_env)
    # when both mint at once
    tokens = run_two(mint_env, tmp_path, "300")
    # then one refresh was made: the second process found the first one's shared token
    assert len(set(tokens)) == 1 and strict.token_valid(tokens[0])
    spent = [c.form["refresh_token"] for c in strict.grant_calls("refresh_token")]
    assert spent == [first]
    assert not strict.revoked_grants
    # and the shared token is in the vault only, encrypted
    for path in mint_env.stores.home.root.rglob("*"):
        if path.is_file():
            assert tokens[0].encode() not in path.read_bytes(), path


def test_two_processes_refreshing_at_once_keep_the_grant_alive(
    strict, mint_env: MintEnv, tmp_path: Path
):
    # (no token cache, so no sharing: both processes refresh, one after the other)
    first = add_mail(strict, mint_env)
    tokens = run_two(mint_env, tmp_path, "0")
    assert all(strict.token_valid(t) for t in tokens)
    assert not strict.revoked_grants
    # The refresh tokens were spent in order: each process used the newest one.
    spent = [c.form["refresh_token"] for c in strict.grant_calls("refresh_token")]
    assert len(spent) == 2 and spent[0] == first and spent[1] != first
    assert all(c.status == 200 for c in strict.calls)
    # And the stored refresh token still works for the next mint.
    assert strict.token_valid(bearer(mint_env.mint(mint_env.broker(), "mail")))
