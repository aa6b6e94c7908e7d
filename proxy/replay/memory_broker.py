"""An in-memory broker with the `BrokerPort` surface: for unit tests and `capgate replay`.

It keeps workspaces, credentials and secrets in dictionaries, with the same semantics the
proxy relies on from the real `Broker`: constant-time token checks, revocation, a
generation that moves on every change, activation by name (absent names stay absent),
wire shapes from the provider table, and mint failures as reasons, never exceptions.
OAuth kinds do not call a token endpoint: the stored value stands for the minted access
token (a fixture states the token the upstream should see).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from capgate.broker.minting import MintError, StaticMinter, bearer_wire, minter_for
from capgate.broker.providers import PROVIDERS, Kind
from capgate.broker.secretvalue import SecretValue
from capgate.broker.types import (
    Activation,
    LeakPattern,
    MintOutcome,
    PolicyDecision,
    ResolvedCredential,
    WireCredential,
    Workspace,
    leak_patterns,
)


@dataclass(frozen=True)
class MemoryCredential:
    row: ResolvedCredential
    value: SecretValue
    fail_reason: str | None = None  # set: every mint fails with this reason


def wire_credential(cred: ResolvedCredential, value: SecretValue) -> WireCredential:
    """The wire shape the real broker's minters give `value` (an OAuth value stands for
    the minted access token), so replay stamps exactly what the live proxy stamps."""
    provider, minter = minter_for(cred)
    if isinstance(minter, StaticMinter):
        return minter.wire(provider, cred, value)
    return bearer_wire(provider, cred, value)


@dataclass
class MemoryBroker:
    """A complete, process-local broker. Thread-safe for the proxy thread plus a test."""

    decisions: list[PolicyDecision] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (workspace id, credential)
    mints: list[str] = field(default_factory=list)  # credential names, in mint order
    _tokens: dict[bytes, Workspace] = field(default_factory=dict)
    _credentials: dict[tuple[str, str], MemoryCredential] = field(default_factory=dict)
    _secrets: dict[tuple[str, str], SecretValue] = field(default_factory=dict)
    _generation: int = 0
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _bump(self) -> None:
        with self._lock:
            self._generation += 1

    # -- filling it (tests, replay fixtures) ------------------------------------------------

    def add_workspace(
        self, role: str, user: str = "alice", org: str = "default", workspace_id: str = ""
    ) -> tuple[Workspace, str]:
        """A workspace and its agent token (returned once, stored as SHA-256 only).

        `workspace_id` pins the id (a replay fixture recorded from a live workspace)."""
        workspace = Workspace(
            id=workspace_id or f"ws_{next(self._ids)}",
            org_id=f"org_{org}",
            org=org,
            role=role,
            user_id=f"user_{user}",
            user=user,
        )
        token = "cg_" + secrets.token_urlsafe(24)
        self._tokens[hashlib.sha256(token.encode()).digest()] = workspace
        self._bump()
        return workspace, token

    def revoke(self, token: str) -> None:
        self._tokens.pop(hashlib.sha256(token.encode()).digest(), None)
        self._bump()

    def add_credential(
        self,
        name: str,
        provider: str,
        value: str,
        *,
        kind: str | None = None,
        org: str = "default",
        config: Mapping[str, str] | None = None,
        fail_reason: str | None = None,
    ) -> None:
        spec = PROVIDERS[provider]
        chosen = Kind(kind) if kind else sorted(spec.kinds)[0]
        if chosen not in spec.kinds:
            raise ValueError(f"illegal pair: provider {provider} does not take kind {chosen}")
        row = ResolvedCredential(
            id=f"cred_{next(self._ids)}",
            org_id=f"org_{org}",
            name=name,
            provider=provider,
            kind=str(chosen),
            user_id=None,
            status="active",
            provider_config=dict(config or {}),
        )
        self._credentials[(row.org_id, name)] = MemoryCredential(
            row, SecretValue(value), fail_reason
        )
        self._bump()

    def delete_credential(self, name: str, org: str = "default") -> None:
        self._credentials.pop((f"org_{org}", name), None)
        self._bump()

    def add_secret(self, name: str, value: str, org: str = "default") -> None:
        self._secrets[(f"org_{org}", name)] = SecretValue(value)
        self._bump()

    def delete_secret(self, name: str, org: str = "default") -> None:
        self._secrets.pop((f"org_{org}", name), None)
        self._bump()

    # -- BrokerPort ------------------------------------------------------------------------

    def authenticate(self, token: str) -> Workspace | None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for stored, workspace in list(self._tokens.items()):
            if hmac.compare_digest(stored, digest):
                found = workspace
        return found

    def activate(
        self, workspace: Workspace, credential_names: Iterable[str], secret_names: Iterable[str]
    ) -> Activation:
        generation = self._generation
        credentials: dict[str, ResolvedCredential] = {}
        patterns: list[LeakPattern] = []
        for name in sorted(set(credential_names)):
            entry = self._credentials.get((workspace.org_id, name))
            if entry is not None:
                credentials[name] = entry.row
                patterns.extend(leak_patterns(f"credential:{name}", entry.value, embedded=True))
        values: dict[str, SecretValue] = {}
        for name in sorted(set(secret_names)):
            secret = self._secrets.get((workspace.org_id, name))
            if secret is not None:
                values[name] = secret
                patterns.extend(leak_patterns(f"secret:{name}", secret, embedded=True))
        return Activation(
            workspace=workspace,
            credentials=credentials,
            secrets=values,
            leak_patterns=tuple(patterns),
            generation=generation,
        )

    async def mint(self, activation: Activation, credential_name: str) -> MintOutcome:
        row = activation.credentials.get(credential_name)
        entry = self._credentials.get((activation.workspace.org_id, credential_name))
        if row is None or entry is None or entry.row.id != row.id:
            return MintOutcome(credential_name, None, "auth_unavailable")
        self.mints.append(credential_name)
        if entry.fail_reason:
            return MintOutcome(credential_name, None, entry.fail_reason)
        try:
            wire = wire_credential(row, entry.value)
        except MintError as exc:
            return MintOutcome(credential_name, None, f"auth_unavailable:{exc}")
        return MintOutcome(credential_name, wire)

    def drop_token(self, activation: Activation, credential_name: str) -> None:
        self.dropped.append((activation.workspace.id, credential_name))

    def generation(self) -> int:
        return self._generation

    def record_decision(self, decision: PolicyDecision) -> None:
        with self._lock:
            self.decisions.append(decision)

    def decisions_writable(self) -> bool:
        return True

    def close(self) -> None:
        pass
