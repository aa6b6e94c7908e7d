"""A cache of minted access tokens with a short TTL and single-flight minting.

Entries are keyed by credential id plus whatever else selects a token (scopes, subject).
An entry lives `min(expires_in, max_ttl) - skew` seconds, so it is re-minted before the
provider's natural expiry. Concurrent callers that miss on the same key share one mint
(one token-endpoint call); a failed mint is not cached and fails every waiter alike. A
`max_ttl` of 0 disables caching and sharing: every call mints fresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

DEFAULT_MAX_TTL = 300.0
DEFAULT_SKEW = 30.0

# A cache key: the credential id first, then whatever else selects a token (scopes, subject).
Key = tuple[str, ...]


@dataclass(frozen=True)
class Minted[T]:
    """A freshly minted value and how long the issuer says it is good for (None: unknown)."""

    value: T
    expires_in: float | None


@dataclass
class _Entry[T]:
    value: T
    expires_at: float


class TokenCache[T]:
    """TTL cache + asyncio single flight. Keys are tuples whose first item is a credential id."""

    def __init__(
        self,
        *,
        max_ttl: float = DEFAULT_MAX_TTL,
        skew: float = DEFAULT_SKEW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_ttl < 0 or skew < 0:
            raise ValueError("max_ttl and skew must be >= 0")
        self.max_ttl = max_ttl
        self.skew = skew
        self._clock = clock
        self._entries: dict[Key, _Entry[T]] = {}
        self._inflight: dict[Key, asyncio.Future[T]] = {}

    def ttl_for(self, expires_in: float | None) -> float:
        """How long to keep a token that the issuer says lives `expires_in` seconds."""
        lifetime = self.max_ttl if expires_in is None else min(expires_in, self.max_ttl)
        return max(0.0, lifetime - self.skew)

    def peek(self, key: Key) -> T | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            del self._entries[key]
            return None
        return entry.value

    async def get(self, key: Key, mint: Callable[[], Awaitable[Minted[T]]]) -> T:
        """The cached value for `key`, or the result of one shared call to `mint`.

        The mint runs in its own task, so a cancelled caller (a client that went away)
        cancels neither the mint nor the other waiters. Exceptions from `mint` propagate
        to every caller of that mint.
        """
        if self.max_ttl == 0:
            return (await mint()).value
        cached = self.peek(key)
        if cached is not None:
            return cached
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._mint_into(key, mint))
            task.add_done_callback(_consume_exception)
            self._inflight[key] = task
        return await asyncio.shield(task)

    async def _mint_into(self, key: Key, mint: Callable[[], Awaitable[Minted[T]]]) -> T:
        me = asyncio.current_task()
        try:
            minted = await mint()
            ttl = self.ttl_for(minted.expires_in)
            # Not stored when invalidate() ran meanwhile: the token may be for a deleted
            # or re-connected credential.
            if ttl > 0 and self._inflight.get(key) is me:
                self._entries[key] = _Entry(minted.value, self._clock() + ttl)
            return minted.value
        finally:
            if self._inflight.get(key) is me:
                del self._inflight[key]

    def invalidate(self, credential_id: str) -> None:
        """Forget every token of one credential (upstream 401, delete, re-connect).

        A mint already in flight still answers its waiters but is not stored.
        """
        for key in [k for k in self._entries if k[0] == credential_id]:
            del self._entries[key]
        for key in [k for k in self._inflight if k[0] == credential_id]:
            del self._inflight[key]

    def credential_ids(self) -> set[str]:
        return {k[0] for k in self._entries} | {k[0] for k in self._inflight}

    def clear(self) -> None:
        self._entries.clear()
        self._inflight.clear()


def _consume_exception(task: asyncio.Future) -> None:
    # Every waiter may have been cancelled; the failure is still reported to them, and
    # asyncio must not log "exception was never retrieved" with a traceback.
    if not task.cancelled():
        task.exception()
