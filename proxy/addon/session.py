"""Agent identity and activation caches, invalidated whenever the broker's generation moves.

A token resolves to a workspace, and a workspace (with the current caps configuration)
to an `Activation`. Both are cached until `broker.generation()` changes: a revoke or a
delete committed by any process empties the caches before the next request is served.
A lease's end changes no generation, so a cached workspace carries its expiry and is
checked against the clock on every request (a renewed lease is found by re-authenticating).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from capgate.broker.minting import run_blocking
from capgate.broker.types import Activation, LeakPattern, Workspace
from capgate.caps import CapsConfig

from .broker_port import BrokerPort
from .scrub import Scrubber, activation_scrub, scrubber_for
from .tripwire import Tripwire, tripwire_for

MAX_CACHED = 10_000
# What an identity or activation read of the stores (and the vault's decryption) may take
# before the request is refused (503, `store_timeout`); it runs in capgate's store pool,
# never on the event loop, so a slow store delays only requests that need a read.
STORE_DEADLINE_S = 10.0
logger = logging.getLogger("capgate.sessions")


class StoreTimeout(Exception):
    """A store read for a token or an activation did not finish within its deadline."""


# Minted OAuth access tokens remembered per org as tripwire patterns (the newest win).
MAX_MINTED_PER_ORG = 256


@dataclass(eq=False)
class Guards:
    """What every request of one activation is checked and scrubbed with, compiled once
    (per activation and set of the org's minted tokens), not per request."""

    patterns: tuple[LeakPattern, ...]  # the tripwire's: the activation's values, minted tokens
    scrub: tuple[LeakPattern, ...] = field(init=False)  # scrubbed from every response
    tripwire: Tripwire = field(init=False)
    _values: frozenset[bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.scrub = activation_scrub(self.patterns)
        self.tripwire = tripwire_for(self.patterns)
        self._values = frozenset(p.value for p in self.scrub)

    @cached_property
    def scrubber(self) -> Scrubber:
        return scrubber_for(self.scrub)

    def scrubber_with(self, patterns: Sequence[LeakPattern]) -> Scrubber:
        """The scrubber for `patterns`: `scrub` followed by what one request injected."""
        extra = tuple(p for p in patterns[len(self.scrub) :] if p.value not in self._values)
        return scrubber_for(self.scrub + extra) if extra else self.scrubber


class Sessions:
    def __init__(self, broker: BrokerPort) -> None:
        self.broker = broker
        self._generation: int | None = None
        self._workspaces: dict[str, Workspace] = {}
        self._activations: dict[tuple[str, int], Activation] = {}
        self._minted: dict[str, dict[bytes, LeakPattern]] = {}
        self._minted_version: dict[str, int] = {}  # org -> moves when a new token is added
        # id(activation) -> (activation, the org's minted version, its guards)
        self._guards: dict[int, tuple[Activation, int, Guards]] = {}
        self._loading: dict[Hashable, asyncio.Future[object]] = {}  # one read per key

    def refresh(self) -> None:
        """One cheap generation check per request; a move drops every cached answer."""
        generation = self.broker.generation()
        if generation != self._generation:
            self._generation = generation
            self._workspaces.clear()
            self._activations.clear()
            self._minted.clear()
            self._minted_version.clear()
            self._guards.clear()
            # Compiled patterns hold values too: a deleted one must not linger in memory.
            scrubber_for.cache_clear()
            activation_scrub.cache_clear()
            tripwire_for.cache_clear()

    def workspace(self, token: str) -> Workspace | None:
        """The token's workspace, read on this thread when not cached (the blocking form:
        the request path uses `load_workspace`)."""
        found = self.cached_workspace(token)
        if found is None:
            found = self.broker.authenticate(token)
            if found is not None:
                self._remember_workspace(token, found)
        return found

    def cached_activation(self, workspace: Workspace, version: int) -> Activation | None:
        """The workspace's activation if it is cached (the request path's fast path)."""
        return self._activations.get((workspace.id, version))

    async def load_workspace(self, token: str) -> Workspace | None:
        """The token's workspace; a cache miss is read in capgate's store pool, once per
        token however many requests wait for it, within STORE_DEADLINE_S."""
        found = self.cached_workspace(token)
        if found is not None:
            return found
        generation = self._generation
        result = await self._load(("token", token, generation), self.broker.authenticate, token)
        assert result is None or isinstance(result, Workspace)
        if result is not None and self._generation == generation:
            self._remember_workspace(token, result)
        return result

    def cached_workspace(self, token: str) -> Workspace | None:
        """The token's workspace if it is cached (the request path's fast path)."""
        found = self._workspaces.get(token)
        if found is not None and found.expired(time.time()):
            del self._workspaces[token]  # maybe renewed since it was cached: ask again
            found = None
        return found

    def _remember_workspace(self, token: str, workspace: Workspace) -> None:
        # failures are not cached: a bad token always costs a lookup
        if len(self._workspaces) >= MAX_CACHED:
            self._workspaces.clear()
        self._workspaces[token] = workspace

    def activation(self, workspace: Workspace, config: CapsConfig, version: int) -> Activation:
        """The workspace's activation, read on this thread when not cached (the blocking
        form: the request path uses `load_activation`)."""
        key = (workspace.id, version)
        found = self._activations.get(key)
        if found is None:
            found = self.broker.activate(workspace, *_names(config, workspace))
            self._remember_activation(key, found)
        return found

    async def load_activation(
        self, workspace: Workspace, config: CapsConfig, version: int
    ) -> Activation:
        """The workspace's activation; a miss (store rows and vault decryption) is read in
        capgate's store pool, once per key, within STORE_DEADLINE_S."""
        found = self.cached_activation(workspace, version)
        if found is not None:
            return found
        key = (workspace.id, version)
        generation = self._generation
        names = _names(config, workspace)
        result = await self._load(
            ("activation", key, generation), self.broker.activate, workspace, *names
        )
        assert isinstance(result, Activation)
        if self._generation == generation:  # else a change came meanwhile: not cached
            self._remember_activation(key, result)
        return result

    def _remember_activation(self, key: tuple[str, int], activation: Activation) -> None:
        if len(self._activations) >= MAX_CACHED:
            self._activations.clear()
        self._activations[key] = activation

    async def _load(self, key: Hashable, read: Callable[..., object], *args: object) -> object:
        """`read(*args)` in the store pool, shared by every request waiting for `key`."""
        future = self._loading.get(key)
        if future is None:
            future = asyncio.ensure_future(run_blocking(read, *args))
            self._loading[key] = future
            future.add_done_callback(lambda done: self._loaded(key, done))
        try:
            return await asyncio.wait_for(asyncio.shield(future), STORE_DEADLINE_S)
        except TimeoutError:
            logger.error(
                "a store read (%s) took longer than %.0f s; the request is refused",
                key[0] if isinstance(key, tuple) else "read",
                STORE_DEADLINE_S,
            )
            raise StoreTimeout from None

    def _loaded(self, key: Hashable, done: asyncio.Future[object]) -> None:
        if self._loading.get(key) is done:
            del self._loading[key]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter gets it; no "never retrieved" noise

    def note_minted(self, org_id: str, patterns: Iterable[LeakPattern]) -> None:
        """Remember minted access tokens: an agent that sends one back has seen it."""
        known = self._minted.setdefault(org_id, {})
        added = False
        for pattern in patterns:
            added |= known.pop(pattern.value, None) is None
            known[pattern.value] = pattern  # the newest last: the oldest go first
        while len(known) > MAX_MINTED_PER_ORG:
            del known[next(iter(known))]
        if added:
            self._minted_version[org_id] = self._minted_version.get(org_id, 0) + 1

    def minted(self, org_id: str) -> tuple[LeakPattern, ...]:
        known = self._minted.get(org_id)
        return tuple(known.values()) if known else ()

    def tripwire_patterns(self, activation: Activation) -> tuple[LeakPattern, ...]:
        """What the tripwire looks for: the activation's values and the org's minted
        access tokens."""
        minted = self.minted(activation.workspace.org_id)
        return activation.leak_patterns + minted if minted else activation.leak_patterns

    def guards(self, activation: Activation) -> Guards:
        """The activation's compiled tripwire and scrubber, current with the org's minted
        tokens; rebuilt only when one is added (or the generation moves)."""
        version = self._minted_version.get(activation.workspace.org_id, 0)
        cached = self._guards.get(id(activation))
        if cached is not None and cached[0] is activation and cached[1] == version:
            return cached[2]
        guards = Guards(self.tripwire_patterns(activation))
        if len(self._guards) >= MAX_CACHED:
            self._guards.clear()
        self._guards[id(activation)] = (activation, version, guards)
        return guards


def _names(config: CapsConfig, workspace: Workspace) -> tuple[list[str], list[str]]:
    return (
        sorted(config.credential_names(workspace.role)),
        sorted(config.secret_names(workspace.role)),
    )
