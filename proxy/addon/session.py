"""Agent identity and activation caches, invalidated whenever the broker's generation moves.

A token resolves to a workspace, and a workspace (with the current caps configuration)
to an `Activation`. Both are cached until `broker.generation()` changes: a revoke or a
delete committed by any process empties the caches before the next request is served.
A lease's end changes no generation, so a cached workspace carries its expiry and is
checked against the clock on every request (a renewed lease is found by re-authenticating).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from capgate.broker.types import Activation, LeakPattern, Workspace
from capgate.caps import CapsConfig

from .broker_port import BrokerPort
from .scrub import activation_scrub, scrubber_for
from .tripwire import tripwire_for

MAX_CACHED = 10_000
# Minted OAuth access tokens remembered per org as tripwire patterns (the newest win).
MAX_MINTED_PER_ORG = 256


class Sessions:
    def __init__(self, broker: BrokerPort) -> None:
        self.broker = broker
        self._generation: int | None = None
        self._workspaces: dict[str, Workspace] = {}
        self._activations: dict[tuple[str, int], Activation] = {}
        self._minted: dict[str, dict[bytes, LeakPattern]] = {}

    def refresh(self) -> None:
        """One cheap generation check per request; a move drops every cached answer."""
        generation = self.broker.generation()
        if generation != self._generation:
            self._generation = generation
            self._workspaces.clear()
            self._activations.clear()
            self._minted.clear()
            # Compiled patterns hold values too: a deleted one must not linger in memory.
            scrubber_for.cache_clear()
            activation_scrub.cache_clear()
            tripwire_for.cache_clear()

    def workspace(self, token: str) -> Workspace | None:
        found = self._workspaces.get(token)
        if found is not None and found.expired(time.time()):
            del self._workspaces[token]  # maybe renewed since it was cached: ask again
            found = None
        if found is None:
            found = self.broker.authenticate(token)
            if found is not None:  # failures are not cached: a bad token always costs a lookup
                if len(self._workspaces) >= MAX_CACHED:
                    self._workspaces.clear()
                self._workspaces[token] = found
        return found

    def activation(self, workspace: Workspace, config: CapsConfig, version: int) -> Activation:
        key = (workspace.id, version)
        found = self._activations.get(key)
        if found is None:
            found = self.broker.activate(
                workspace,
                sorted(config.credential_names(workspace.role)),
                sorted(config.secret_names(workspace.role)),
            )
            if len(self._activations) >= MAX_CACHED:
                self._activations.clear()
            self._activations[key] = found
        return found

    def note_minted(self, org_id: str, patterns: Iterable[LeakPattern]) -> None:
        """Remember minted access tokens: an agent that sends one back has seen it."""
        known = self._minted.setdefault(org_id, {})
        for pattern in patterns:
            known.pop(pattern.value, None)
            known[pattern.value] = pattern
        while len(known) > MAX_MINTED_PER_ORG:
            del known[next(iter(known))]

    def minted(self, org_id: str) -> tuple[LeakPattern, ...]:
        known = self._minted.get(org_id)
        return tuple(known.values()) if known else ()

    def tripwire_patterns(self, activation: Activation) -> tuple[LeakPattern, ...]:
        """What the tripwire looks for: the activation's values and the org's minted
        access tokens."""
        minted = self.minted(activation.workspace.org_id)
        return activation.leak_patterns + minted if minted else activation.leak_patterns
