"""The minted-token cache: TTL with skew, single flight, TTL 0, invalidation."""

from __future__ import annotations

import asyncio

import pytest

from capgate.broker.tokencache import Minted, TokenCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Minter:
    def __init__(self, expires_in: float | None = 3600, delay: float = 0.01) -> None:
        self.calls = 0
        self.expires_in = expires_in
        self.delay = delay
        self.fail: Exception | None = None

    async def __call__(self) -> Minted[str]:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail
        return Minted(f"token-{self.calls}", self.expires_in)


def test_ttl_is_the_shorter_of_expires_in_and_max_minus_skew():
    cache = TokenCache(max_ttl=300, skew=30)
    assert cache.ttl_for(3600) == 270
    assert cache.ttl_for(60) == 30
    assert cache.ttl_for(10) == 0
    assert cache.ttl_for(None) == 270


def test_a_cached_token_is_reused_until_the_skewed_expiry():
    clock, mint = Clock(), Minter(expires_in=100)
    cache = TokenCache(max_ttl=300, skew=30, clock=clock)

    async def run() -> list[str]:
        first = await cache.get(("c",), mint)
        clock.now += 69
        second = await cache.get(("c",), mint)
        clock.now += 2
        third = await cache.get(("c",), mint)
        return [first, second, third]

    assert asyncio.run(run()) == ["token-1", "token-1", "token-2"]


def test_concurrent_misses_share_one_mint():
    mint = Minter(delay=0.05)
    cache = TokenCache()

    async def run() -> set[str]:
        return set(await asyncio.gather(*(cache.get(("c",), mint) for _ in range(100))))

    assert asyncio.run(run()) == {"token-1"}
    assert mint.calls == 1


def test_a_failed_mint_fails_every_waiter_and_is_not_cached():
    mint = Minter(delay=0.05)
    mint.fail = RuntimeError("boom")
    cache = TokenCache()

    async def run() -> list:
        return await asyncio.gather(
            *(cache.get(("c",), mint) for _ in range(10)), return_exceptions=True
        )

    results = asyncio.run(run())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert mint.calls == 1
    mint.fail = None
    assert asyncio.run(cache.get(("c",), mint)) == "token-2"


def test_ttl_zero_mints_fresh_every_time():
    mint = Minter()
    cache = TokenCache(max_ttl=0, skew=0)

    async def run() -> list[str]:
        return [await cache.get(("c",), mint) for _ in range(3)]

    assert asyncio.run(run()) == ["token-1", "token-2", "token-3"]


def test_invalidate_drops_every_key_of_the_credential():
    mint = Minter()
    cache = TokenCache()

    async def run() -> None:
        await cache.get(("c", "scope-a"), mint)
        await cache.get(("c", "scope-b"), mint)
        await cache.get(("d",), mint)

    asyncio.run(run())
    cache.invalidate("c")
    assert cache.credential_ids() == {"d"}


def test_a_cancelled_waiter_does_not_cancel_the_shared_mint():
    mint = Minter(delay=0.05)
    cache = TokenCache()

    async def run() -> str:
        first = asyncio.ensure_future(cache.get(("c",), mint))
        second = asyncio.ensure_future(cache.get(("c",), mint))
        await asyncio.sleep(0.01)
        first.cancel()
        return await second

    assert asyncio.run(run()) == "token-1"
    assert mint.calls == 1


def test_negative_settings_are_rejected():
    with pytest.raises(ValueError):
        TokenCache(max_ttl=-1)
