"""Value types shared by the broker and its callers (the proxy addon, replay).

All frozen: the proxy hands them between hooks without copying, and nothing on the hot
path can change a workspace's view of its credentials behind its back.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from .secretvalue import SecretValue

# Values shorter than this are too likely to occur by chance in ordinary traffic to be
# used as tripwire patterns; they are still scrubbed from responses when injected.
MIN_TRIPWIRE_LENGTH = 8


def _frozen(mapping: Mapping | None = None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


class Decision(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    TRIPWIRE = "tripwire"


@dataclass(frozen=True)
class Workspace:
    """An activated agent identity: who is asking, in which org, with which role."""

    id: str
    org_id: str
    org: str
    role: str
    user_id: str
    user: str
    # The lease's end as a Unix time (None: no expiry). Carried so a proxy that cached this
    # workspace can refuse it per request without a store round trip.
    expires_at: float | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True)
class ResolvedCredential:
    """A credential row chosen for a workspace by the override rules (no durable value)."""

    id: str
    org_id: str
    name: str
    provider: str
    kind: str
    user_id: str | None
    status: str
    scopes: tuple[str, ...] = ()
    provider_config: Mapping[str, str] = field(default_factory=_frozen)


@dataclass(frozen=True)
class LeakPattern:
    """A byte string whose presence in an agent's request means a value leaked to it."""

    label: str  # e.g. "credential:github" or "secret:tenant-id"; never the value
    value: bytes

    def __repr__(self) -> str:
        return f"LeakPattern({self.label!r}, [REDACTED])"


def leak_patterns(
    label: str, value: SecretValue, *, embedded: bool = False
) -> tuple[LeakPattern, ...]:
    """The raw and base64 forms of a value, as tripwire or scrub patterns.

    `embedded` adds what the tripwire needs: the stable middle of the value's base64 at
    each of the three byte offsets it can start at inside a longer encoded string (as in
    `base64("user:" + value)`), and its hex forms. Those are detection patterns, not
    scrub patterns: replacing part of a base64 string would corrupt the response.
    """
    raw = value.reveal_bytes()
    forms = {raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw)}
    if embedded:
        forms |= {raw.hex().encode(), raw.hex().upper().encode()}
        forms |= set(_embedded_base64(raw))
    return tuple(LeakPattern(label, form) for form in sorted(forms))


def _embedded_base64(raw: bytes) -> list[bytes]:
    """For each offset 0-2 of `raw` inside a longer byte string, the base64 characters that
    depend only on `raw`: the chars touched by the unknown bytes before and after are cut."""
    cores = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        start = (offset * 4 + 2) // 3  # first char computed only from `raw`'s bytes
        end = (4 * (offset + len(raw))) // 3  # later chars mix in the bytes that follow
        core = encoded[start:end]
        if len(core) >= MIN_TRIPWIRE_LENGTH:
            cores += [core, core.replace(b"+", b"-").replace(b"/", b"_")]
    return cores


@dataclass(frozen=True)
class Activation:
    """What a workspace may use, resolved once: credential rows, secret values, leak patterns.

    A credential name the role declares but that did not resolve is absent from
    `credentials`; minting it yields `auth_unavailable`.
    """

    workspace: Workspace
    credentials: Mapping[str, ResolvedCredential]
    secrets: Mapping[str, SecretValue]
    leak_patterns: tuple[LeakPattern, ...]
    generation: int

    def __repr__(self) -> str:
        return (
            f"Activation(workspace={self.workspace.id!r}, credentials={sorted(self.credentials)}, "
            f"secrets={sorted(self.secrets)}, generation={self.generation})"
        )


@dataclass(frozen=True)
class WireCredential:
    """How a minted credential goes on the wire for one request.

    `headers`/`query` replace whatever the agent sent under those names; companions are
    set only when the agent did not send them, except the ones the operator pinned in
    provider_config (`pinned`: lower-cased header names and query parameter names),
    which replace the agent's like the credential itself; `scrub` lists the byte forms
    to redact from the response as `[REDACTED:<label>]`.
    """

    headers: tuple[tuple[str, SecretValue], ...] = ()
    query: tuple[tuple[str, SecretValue], ...] = ()
    companion_headers: tuple[tuple[str, str], ...] = ()
    companion_query: tuple[tuple[str, str], ...] = ()
    pinned: frozenset[str] = frozenset()
    scrub: tuple[LeakPattern, ...] = ()
    oauth: bool = False


@dataclass(frozen=True)
class MintOutcome:
    """The result of minting one credential for one request. `wire` is None on failure."""

    credential: str
    wire: WireCredential | None
    reason: str | None = None  # e.g. "not_configured", "needs_reauth", "transient"

    @property
    def ok(self) -> bool:
        return self.wire is not None


@dataclass(frozen=True)
class PolicyDecision:
    """One audit row per request (DESIGN.md, Data model: policy_decisions)."""

    at: float
    org_id: str | None
    workspace_id: str | None
    capability: str | None
    decision: str  # Decision value
    reason: str | None
    method: str
    scheme: str
    host: str
    port: int
    path: str  # without the query string
    transforms_applied: tuple[str, ...] = ()
    transforms_failed: Mapping[str, str] = field(default_factory=_frozen)  # label -> reason
    auth_failures: Mapping[str, str] = field(default_factory=_frozen)  # credential -> reason
    upstream_status: int | None = None
    duration_ms: float | None = None
