"""Shared set-up for the mint tests: a home with a workspace, credentials, and a Broker
whose token endpoints point at a loopback `OAuthServer`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from capgate.broker import audit
from capgate.broker.credential_rows import CredentialRow, CredentialSpec
from capgate.broker.minting import flush_outcomes
from capgate.broker.oauth import UNSAFE_AUTHORIZE_ENV, UNSAFE_TOKEN_ENV
from capgate.broker.secretvalue import SecretValue
from capgate.broker.service import Broker
from capgate.broker.stores import Stores
from capgate.broker.types import Activation, MintOutcome, Workspace
from tests.oauth_server import OAuthServer

OAUTH_PROVIDERS = ("google", "microsoft")


def point_at(monkeypatch: pytest.MonkeyPatch, srv: OAuthServer) -> None:
    """Route every OAuth provider's token and authorize endpoints to `srv`."""
    monkeypatch.setenv(UNSAFE_TOKEN_ENV, json.dumps(dict.fromkeys(OAUTH_PROVIDERS, srv.token_url)))
    monkeypatch.setenv(
        UNSAFE_AUTHORIZE_ENV, json.dumps(dict.fromkeys(OAUTH_PROVIDERS, srv.authorize_url))
    )


@dataclass
class MintEnv:
    """An org with user alice and one workspace, plus brokers opened on the same home."""

    stores: Stores
    org_id: str
    workspace: Workspace
    brokers: list[Broker] = field(default_factory=list)

    def add(
        self,
        name: str,
        provider: str,
        kind: str,
        value: str | None,
        *,
        scopes: Iterable[str] = (),
        config: dict[str, str] | None = None,
        client_secret: str | None = None,
    ) -> CredentialRow:
        spec = CredentialSpec(
            name=name,
            provider=provider,
            kind=kind,
            scopes=tuple(scopes),
            provider_config=config or {},
        )
        return self.stores.credentials.add(
            self.org_id,
            spec,
            SecretValue(value) if value is not None else None,
            client_secret=SecretValue(client_secret) if client_secret else None,
        )

    def broker(self, *, ttl: float = 300, skew: float = 30, timeout: float = 5.0) -> Broker:
        broker = Broker.open(
            self.stores.home,
            token_max_ttl=ttl,
            token_skew=skew,
            http_timeout=httpx.Timeout(timeout),
        )
        self.brokers.append(broker)
        return broker

    def activate(self, broker: Broker, *names: str) -> Activation:
        return broker.activate(self.workspace, names, ())

    def mint(self, broker: Broker, name: str) -> MintOutcome:
        outcome = asyncio.run(broker.mint(self.activate(broker, name), name))
        flush_outcomes()  # success and transient outcomes are written behind the request
        return outcome

    def row(self, name: str) -> CredentialRow:
        flush_outcomes()  # mint outcomes are written behind the request
        return self.stores.credentials.get(self.org_id, name)

    def refresh_token(self, name: str) -> str:
        value = self.stores.credentials.durable_value(self.row(name))
        assert value is not None
        return value.reveal()

    def status_events(self, name: str) -> list[audit.AuditEvent]:
        return [
            e
            for e in audit.list_events(self.stores.control, self.org_id)
            if e.action == "credential.status" and e.target_name == name
        ]

    def close(self) -> None:
        for broker in self.brokers:
            broker.close()


def bearer(outcome: MintOutcome) -> str:
    """The access token a successful outcome puts on the wire."""
    assert outcome.wire is not None, outcome.reason
    (name, value), *_ = outcome.wire.headers
    assert name == "Authorization"
    scheme, _, token = value.reveal().partition(" ")
    assert scheme == "Bearer"
    return token


@pytest.fixture(name="mint_env")
def mint_env_fixture(stores: Stores) -> Iterator[MintEnv]:
    """Import this name into a test module to get the `mint_env` fixture."""
    org_id = stores.control.org_id("acme", create=True)
    stores.workspaces.add_user(org_id, "alice")
    _, token = stores.workspaces.create(org_id, "agent", "alice")
    workspace = stores.workspaces.authenticate(token)
    assert workspace is not None
    env = MintEnv(stores, org_id, workspace)
    yield env
    env.close()
