"""Two processes refresh one rotating credential at once against a strict-rotation server.

Strict rotation (as oidc-provider does it): presenting an already-rotated refresh token
revokes the whole grant. Without the cross-process lock and re-read, the second process
would spend the old refresh token and kill the grant for everyone.
"""

from __future__ import annotations

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


def test_two_processes_refreshing_at_once_keep_the_grant_alive(
    strict, mint_env: MintEnv, tmp_path: Path
):
    strict.add_client("web-1", "csecret")
    first = strict.issue_refresh_token("web-1", scope="read")
    mint_env.add(
        "mail", "microsoft", "oauth2_authorization_code", first, scopes=["read"],
        config={"client_id": "web-1", "tenant_id": "contoso"}, client_secret="csecret",
    )  # fmt: skip
    _, agent_token = mint_env.stores.workspaces.create(mint_env.org_id, "agent", "alice")
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(mint_env.stores.home.root), str(go), agent_token],
            stdout=subprocess.PIPE,
            text=True,
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
    assert all(strict.token_valid(t) for t in tokens)
    assert not strict.revoked_grants
    # The refresh tokens were spent in order: each process used the newest one.
    spent = [c.form["refresh_token"] for c in strict.grant_calls("refresh_token")]
    assert len(spent) == 2 and spent[0] == first and spent[1] != first
    assert all(c.status == 200 for c in strict.calls)
    # And the stored refresh token still works for the next mint.
    assert strict.token_valid(bearer(mint_env.mint(mint_env.broker(), "mail")))
