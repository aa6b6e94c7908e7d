"""The addon chain `build_master` assembles, and what `InFlight` keeps."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from mitmproxy import hooks
from mitmproxy.test import tflow

from capgate.proxy.addon.flowstate import new_state
from capgate.proxy.addon.hooks import CapgateAddon
from capgate.proxy.addon.runner import CapgateAddons, InFlight, ProxySettings, build_master
from capgate.proxy.replay.memory_broker import MemoryBroker


def test_capgate_addons_are_one_chain_entry_in_their_order(tmp_path: Path) -> None:
    caps = tmp_path / "caps.yaml"
    caps.write_text("version: 1\ncapabilities: []\n")
    settings = ProxySettings(home=tmp_path / "home", caps_path=caps, listen_port=0)
    inflight = InFlight()

    async def chain() -> list[object]:
        m = await build_master(settings, MemoryBroker(), first_addons=(inflight,))
        assert isinstance(m.addons.get("capgate"), CapgateAddon)  # children keep their names
        assert m.addons.get("capgate-inflight") is inflight
        assert type(m.addons.get("disableh2c")).__name__ == "DisableH2C"
        return list(m.addons.chain)

    entries = asyncio.run(chain())
    groups = [entry for entry in entries if isinstance(entry, CapgateAddons)]
    assert len(groups) == 1 and groups[0] is entries[-1]
    group = groups[0]
    names = [getattr(child, "name", type(child).__name__) for child in group.children]
    assert names == [
        "DisableH2C",  # mitmproxy's h2c refusal, first, as it was last of the stock addons
        "capgate-inflight",
        "capgate",
        "capgate-deadlines",
        "capgate-connections",
    ]
    # as many chain entries as mitmproxy's stock set has: core, proxyserver, next layer,
    # the upstream-identity pin, tlsconfig, and capgate's group
    assert len(entries) == 6
    # nothing of capgate's request path is a chain entry of its own, nor nested below one
    assert not any(isinstance(entry, CapgateAddon | InFlight) for entry in entries)
    assert not hasattr(group, "addons")
    # every hook of every child is reachable through the group
    for child in group.children:
        for hook in hooks.all_hooks:
            if callable(getattr(child, hook, None)):
                assert callable(getattr(group, hook, None)), (child.name, hook)


def test_the_group_runs_each_childs_hook_in_order_and_awaits_the_async_ones() -> None:
    calls: list[str] = []

    class Sync:
        def __init__(self, name: str) -> None:
            self.name = name

        def requestheaders(self, flow: object) -> None:
            calls.append(self.name)

        def done(self) -> None:
            calls.append(f"{self.name}-done")

    class Async:
        name = "async"

        async def requestheaders(self, flow: object) -> None:
            await asyncio.sleep(0)
            calls.append(self.name)

    group = CapgateAddons(Sync("first"), Async(), Sync("last"))
    asyncio.run(group.requestheaders(object()))  # type: ignore[attr-defined]
    group.done()  # type: ignore[attr-defined]
    assert calls == ["first", "async", "last", "first-done", "last-done"]
    assert not hasattr(group, "response")  # no child has it: mitmproxy skips the group


def test_inflight_forgets_finished_flows() -> None:
    """A flow mitmproxy no longer holds is gone from InFlight (it held every flow ever
    seen until shutdown: the bodies of every request stayed in memory)."""
    inflight = InFlight()
    kept = tflow.tflow()
    new_state(kept)
    inflight.requestheaders(kept)
    for _ in range(100):
        done = tflow.tflow()
        inflight.requestheaders(done)
        del done
    gc.collect()
    assert len(inflight.flows) == 1
    assert inflight.open_flows() == [kept]
