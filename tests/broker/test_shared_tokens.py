"""Minted tokens shared across the processes of one home (broker/sharedtokens.py).

Each `Broker` here is what one worker or replica holds: its own in-memory TokenCache, the
same home. A second broker that misses its cache takes the credential's lock, finds the
first one's token in the vault and makes no token-endpoint call, unless the credential
changed, was deleted, the upstream rejected the token, it is about to expire, or the
token cache is off.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from prometheus_client import REGISTRY

from capgate.broker import vault
from capgate.broker.oauth import TokenGrant
from capgate.broker.secretvalue import SecretValue
from capgate.broker.service import Broker, _cache_key
from capgate.broker.sharedtokens import SharedTokens
from tests.broker.oauth_harness import MintEnv, bearer, mint_env_fixture, point_at  # noqa: F401
from tests.oauth_server import OAuthServer

SECRET = "cc-SHAREDcanaryClientSecret-5e6f7a8b"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    with OAuthServer(expires_in=3600) as srv:
        point_at(monkeypatch, srv)
        srv.add_client("app-1", SECRET, scope="read")
        yield srv


@pytest.fixture
def graph(mint_env: MintEnv, server: OAuthServer) -> MintEnv:
    mint_env.add(
        "graph", "microsoft", "oauth2_client_credentials", SECRET, scopes=["read"],
        config={"client_id": "app-1", "tenant_id": "contoso"},
    )  # fmt: skip
    return mint_env


def endpoint_calls() -> float:
    value = REGISTRY.get_sample_value(
        "capgate_token_endpoint_seconds_count", {"provider": "microsoft"}
    )
    return value or 0.0


def minted_refs(env: MintEnv) -> list[str]:
    return [r for r in env.stores.vault.refs() if r.startswith("minted.")]


def test_a_second_process_uses_the_token_the_first_minted(graph: MintEnv, server, caplog):
    caplog.set_level(logging.DEBUG, logger="capgate")
    first, second = graph.broker(), graph.broker()
    token = bearer(graph.mint(first, "graph"))
    calls = endpoint_calls()
    assert bearer(graph.mint(second, "graph")) == token
    assert len(server.calls) == 1
    assert endpoint_calls() == calls  # the histogram counts token-endpoint calls only
    # the shared entry is a vault entry of its own kind, encrypted like every value
    (ref,) = minted_refs(graph)
    row = graph.row("graph")
    conn = graph.stores.vault._conn
    kind = conn.execute("SELECT kind FROM entries WHERE ref = ?", (ref,)).fetchone()[0]
    assert kind == vault.MINTED_TOKEN and ref.startswith(f"minted.{row.id}.")
    # canary: the token's plaintext is in no file of the home (control store, vault, WAL)
    for path in graph.stores.home.root.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    assert token not in caplog.text


def test_the_entry_cannot_be_read_as_another_kind_org_or_ref(graph: MintEnv):
    broker = graph.broker()
    graph.mint(broker, "graph")
    (ref,) = minted_refs(graph)
    org = graph.row("graph").org_id
    store = graph.stores.vault
    with pytest.raises(vault.VaultError):
        store.get(ref, org, vault.CREDENTIAL)
    with pytest.raises(vault.VaultError):
        store.get(ref, "org_other", vault.MINTED_TOKEN)
    # a ciphertext moved under another cache key's ref fails authentication, so the next
    # process mints instead of using it
    conn = store._conn
    other = vault.minted_ref(graph.row("graph").id, "another key")
    conn.execute(
        "INSERT INTO entries SELECT ?, org_id, kind, kek_id, wrap_nonce, wrapped_key, nonce,"
        " ciphertext, created_at FROM entries WHERE ref = ?",
        (other, ref),
    )
    with pytest.raises(vault.VaultError):
        store.get_minted(other, org)


def test_ttl_zero_shares_nothing(graph: MintEnv, server):
    first, second = graph.broker(ttl=0, skew=0), graph.broker(ttl=0, skew=0)
    assert first.shared is None
    tokens = {bearer(graph.mint(b, "graph")) for b in (first, second, first)}
    assert len(tokens) == 3 and len(server.calls) == 3
    assert minted_refs(graph) == []


def test_a_changed_credential_never_gets_the_old_token(graph: MintEnv, server):
    first, second = graph.broker(), graph.broker()
    old = bearer(graph.mint(first, "graph"))
    # when an operator replaces the client secret (another process: the CLI)
    server.add_client("app-1", SECRET + "-new", scope="read")
    graph.stores.credentials.update(graph.org_id, "graph", None, SecretValue(SECRET + "-new"))
    # then the next process to mint calls the token endpoint with the new secret
    new = bearer(graph.mint(second, "graph"))
    assert new != old and len(server.calls) == 2
    assert server.calls[-1].form["client_secret"] == SECRET + "-new"
    assert len(minted_refs(graph)) == 1  # the entry was replaced, not added to


def test_a_process_with_a_stale_view_neither_takes_nor_shares(graph: MintEnv, server):
    stale_broker, fresh_broker = graph.broker(), graph.broker()
    stale = graph.activate(stale_broker, "graph")
    # when the credential's settings change after one process activated it
    row = graph.row("graph")
    with graph.stores.control.write() as conn:
        conn.execute(
            "UPDATE credentials SET provider_config = ?, updated_at = ? WHERE id = ?",
            ('{"client_id": "app-1", "tenant_id": "fabrikam"}', "2099-01-01T00:00:00Z", row.id),
        )
    fresh = graph.activate(fresh_broker, "graph")
    token = bearer(asyncio.run(fresh_broker.mint(fresh, "graph")))
    # then the stale view does not get the current row's token
    cred = stale.credentials["graph"]
    slot = stale_broker.shared.slot(cred, _cache_key(cred))
    assert slot.find() is None
    # and what a stale view mints is not shared
    graph.stores.vault.delete_minted(row.id)
    slot.keep(TokenGrant(SecretValue("stale-view-token"), 3600))
    assert minted_refs(graph) == []
    assert token


def test_a_deleted_credential_leaves_no_shared_token(graph: MintEnv):
    broker = graph.broker()
    graph.mint(broker, "graph")
    assert minted_refs(graph)
    graph.stores.credentials.delete(graph.org_id, "graph")
    assert minted_refs(graph) == [] and graph.stores.vault.refs() == []


def test_an_upstream_401_drops_the_shared_token_for_every_process(graph: MintEnv, server):
    first, second = graph.broker(), graph.broker()
    activation = graph.activate(first, "graph")
    first_token = bearer(asyncio.run(first.mint(activation, "graph")))
    first.drop_token(activation, "graph")
    first.shared.wait_forgotten()
    # the rejected token is gone from the vault: the next process mints afresh
    assert minted_refs(graph) == []
    rejected = bearer(graph.mint(second, "graph"))
    assert rejected != first_token and len(server.calls) == 2
    # when that one is rejected too, this process never takes it again, even before the
    # delete is done, and the token it mints next stays shared
    held = threading.Event()
    first.shared._pool.submit(held.wait, 30)  # the delete waits behind this
    first.drop_token(activation, "graph")
    assert minted_refs(graph)  # not deleted yet
    again = bearer(asyncio.run(first.mint(activation, "graph")))
    assert again != rejected and len(server.calls) == 3
    held.set()
    first.shared.wait_forgotten()
    third = graph.broker()
    assert bearer(graph.mint(third, "graph")) == again
    assert len(server.calls) == 3


def test_a_token_within_the_skew_of_its_expiry_is_minted_again(graph: MintEnv, server):
    clock = Clock(1_000_000.0)
    first, second = graph.broker(), graph.broker()
    for broker in (first, second):
        broker.shared = SharedTokens(broker.stores, max_ttl=300, skew=30, clock=clock)
    old = bearer(graph.mint(first, "graph"))
    clock.now += 269  # 31 s left of min(3600, 300): still shared
    assert bearer(graph.mint(second, "graph")) == old
    third = graph.broker()
    third.shared = SharedTokens(third.stores, max_ttl=300, skew=30, clock=clock)
    clock.now += 1  # 30 s left: no longer than the skew
    assert bearer(graph.mint(third, "graph")) != old
    assert len(server.calls) == 2


def test_a_shared_token_is_used_for_the_rest_of_its_life_only(graph: MintEnv):
    clock = Clock(1_000_000.0)
    first = graph.broker()
    first.shared = SharedTokens(first.stores, max_ttl=300, skew=30, clock=clock)
    graph.mint(first, "graph")
    clock.now += 200
    second = graph.broker()
    second.shared = SharedTokens(second.stores, max_ttl=300, skew=30, clock=clock)
    activation = graph.activate(second, "graph")
    slot = second.shared.slot(activation.credentials["graph"], ("x",))
    assert slot.find() is None  # another cache key (scopes, subject) shares nothing
    grant = asyncio.run(_find(second, activation))
    assert grant is not None and grant.expires_in == 100  # what is left, not 3600
    # and the second broker's own cache keeps it no longer than the first one's would
    assert second.tokens.ttl_for(grant.expires_in) == 70


async def _find(broker: Broker, activation):  # type: ignore[no-untyped-def]
    cred = activation.credentials["graph"]
    assert broker.shared is not None
    return await asyncio.to_thread(broker.shared.slot(cred, _cache_key(cred)).find)
