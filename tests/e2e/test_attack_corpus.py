"""Every attack of the corpus, against a real mitmproxy with capgate and a real upstream."""

from __future__ import annotations

import time

import pytest

from .attack_corpus import ATTACKS, Attack, Ctx
from .conftest import CANARIES

pytestmark = pytest.mark.e2e


@pytest.fixture
def ctx(proxy, memory_world, tls_upstream, plain_upstream) -> Ctx:
    return Ctx(proxy, memory_world, tls_upstream, plain_upstream)


def _seen_by_upstream(ctx: Ctx) -> str:
    items = ctx.tls.log.items + ctx.plain.log.items
    return "\n".join(
        f"{i.path}?{i.query}\n{i.headers}\n{i.body.decode('utf-8', 'replace')}" for i in items
    )


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack(attack: Attack, ctx: Ctx) -> None:
    # given a running proxy and empty upstream logs
    ctx.tls.log.clear()
    ctx.plain.log.clear()
    decisions = ctx.world.broker.decisions
    before = len(decisions)

    # when the attack is sent
    reply = attack.send(ctx)

    # then the agent gets the stated status, and no canary value in any form
    assert reply.status == attack.status, reply.body[:300]
    shown = repr(reply.headers) + reply.body.decode("utf-8", "replace")
    for canary in CANARIES:
        assert canary not in shown
    # and the upstream saw the request only when it should, never with a foreign value
    reached = bool(ctx.tls.log.items or ctx.plain.log.items)
    assert reached == attack.reaches_upstream
    seen = _seen_by_upstream(ctx)
    for value in attack.upstream_never_sees:
        assert value not in seen
    # and exactly one policy_decision row says what happened
    if attack.decision is not None:
        # a streamed response is recorded right after its last byte went out
        deadline = time.monotonic() + 3
        while len(decisions) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        rows = decisions[before:]
        assert len(rows) == 1, rows
        assert rows[0].decision == attack.decision
        assert rows[0].reason == attack.reason
        assert all(c not in repr(rows[0]) for c in CANARIES)
    for check in attack.checks:
        check(reply, ctx)
