"""Client connections are bounded: idle time before authentication, and a descriptor
reserve so that an authenticated agent is served while idle connections pile up.

- A client connection that has not made an authenticated request (a CONNECT or a request
  with a valid workspace token) within PREAUTH_IDLE_S seconds is closed
  (CAPGATE_PREAUTH_IDLE_TIMEOUT). That also bounds slow-header (slowloris) clients.
- When open descriptors reach the soft limit minus RESERVE_FDS, each new connection first
  closes the oldest connections that never authenticated; a new connection is refused
  only when no such connection is left. Authenticated agents' connections are never
  evicted for room.
- One client address holds at most PREAUTH_PER_ADDRESS connections that have not
  authenticated yet (CAPGATE_MAX_PREAUTH_PER_ADDRESS): a new one beyond that closes the
  address's oldest unauthenticated connection, so a flood from one address cannot take
  every descriptor from the others, and a fresh connection (an agent about to send its
  first request) is kept over an old silent one. Agents usually share 127.0.0.1 with
  anything local, so authenticated connections are never counted or closed.

`capgate proxy` raises the soft descriptor limit to the hard limit at start (runner.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from typing import Any

from mitmproxy import ctx, http

logger = logging.getLogger("capgate.connections")

PREAUTH_IDLE_S = 10.0
PREAUTH_ENV = "CAPGATE_PREAUTH_IDLE_TIMEOUT"
PREAUTH_PER_ADDRESS = 256
PER_ADDRESS_ENV = "CAPGATE_MAX_PREAUTH_PER_ADDRESS"
RESERVE_FDS = 128  # descriptors kept free for authenticated agents, upstreams, stores
SWEEP_EVERY_S = 1.0
EVICT_BATCH = 16
LOG_EVERY_S = 10.0


def _preauth_idle() -> float:
    raw = os.environ.get(PREAUTH_ENV)
    if raw is None:
        return PREAUTH_IDLE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise ValueError(f"{PREAUTH_ENV} must be a number of seconds above 0 (at most 86400)")
    return value


def _per_address() -> int:
    raw = os.environ.get(PER_ADDRESS_ENV)
    if raw is None:
        return PREAUTH_PER_ADDRESS
    if not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        raise ValueError(f"{PER_ADDRESS_ENV} must be a whole number from 1 to 1000000")
    return int(raw)


def _address(client: Any) -> str:
    return str(client.peername[0]) if client.peername else "-"


def open_fds(fallback: int) -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return fallback


class ConnectionGuard:
    name = "capgate-connections"

    def __init__(
        self,
        preauth_idle: float | None = None,
        reserve: int = RESERVE_FDS,
        per_address: int | None = None,
    ) -> None:
        self.preauth_idle = preauth_idle if preauth_idle is not None else _preauth_idle()
        self.reserve = reserve
        self.per_address = per_address if per_address is not None else _per_address()
        # address -> ids of its connections not authenticated yet, oldest first
        self.unauthenticated: dict[str, dict[str, Any]] = {}
        self.evicted_per_address = 0
        self._next_address_log = 0.0
        self.clients: dict[str, tuple[Any, float]] = {}  # id -> (client, opened); oldest first
        self.authenticated: set[str] = set()
        self.evicted = 0
        self.refused = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._closing: set[str] = set()  # cancelled, not yet disconnected
        self._next_log = 0.0

    def limit(self) -> int:
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    # -- hooks -----------------------------------------------------------------------------

    def client_connected(self, client: Any) -> None:
        loop = asyncio.get_running_loop()
        budget = self.limit() - self.reserve
        used = 0
        if len(self.clients) * 4 >= budget:  # cheap until a quarter of the budget is used
            # descriptors of connections already being closed are about to be free
            used = open_fds(len(self.clients) * 2) - len(self._closing)
        if used >= budget and not self._evict_for_room(used - budget + 1):
            self.refused += 1
            client.error = "capgate: too many connections"
            logger.warning(
                "connection from %s refused: descriptor limit reached (%d open)",
                _address(client),
                len(self.clients),
            )
            return
        self.clients[client.id] = (client, loop.time())
        self._hold_for_address(client)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep())

    def client_disconnected(self, client: Any) -> None:
        self._closing.discard(client.id)
        self.clients.pop(client.id, None)
        self.authenticated.discard(client.id)
        self._forget_for_address(client)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._note(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._note(flow)

    def done(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    # -- internals -------------------------------------------------------------------------

    def _note(self, flow: http.HTTPFlow) -> None:
        """After capgate's own hook: anything but a 407 means the token was good."""
        if flow.response is None or flow.response.status_code != 407:
            client = flow.client_conn
            if client.id not in self.authenticated:
                self.authenticated.add(client.id)
                self._forget_for_address(client)

    def _hold_for_address(self, client: Any) -> None:
        """Count a new connection against its address; beyond the cap, close the
        address's oldest connection that has not authenticated."""
        address = _address(client)
        waiting = self.unauthenticated.setdefault(address, {})
        waiting[client.id] = client
        if len(waiting) <= self.per_address:
            return
        oldest = waiting.pop(next(iter(waiting)))
        self._close(oldest, "too many unauthenticated connections from one address")
        self.evicted_per_address += 1
        now = time.monotonic()
        if now >= self._next_address_log:
            self._next_address_log = now + LOG_EVERY_S
            logger.warning(
                "%s holds %d unauthenticated connections (the cap): closed its oldest, %d in total",
                address,
                self.per_address,
                self.evicted_per_address,
            )

    def _forget_for_address(self, client: Any) -> None:
        address = _address(client)
        waiting = self.unauthenticated.get(address)
        if waiting is not None and waiting.pop(client.id, None) is not None and not waiting:
            del self.unauthenticated[address]

    def _evict_for_room(self, needed: int) -> bool:
        """Close the oldest never-authenticated connections (at least `needed`, in batches
        of EVICT_BATCH); True when any was closed."""
        victims = [
            client for cid, (client, _) in self.clients.items() if cid not in self.authenticated
        ]
        wanted = max(needed, EVICT_BATCH)
        closed = 0
        for client in victims[:wanted]:
            if self._close(client, "descriptor reserve"):
                closed += 1
        self.evicted += closed
        now = time.monotonic()
        if closed and now >= self._next_log:
            self._next_log = now + LOG_EVERY_S
            logger.warning(
                "descriptor limit near (%d connections): closed %d idle unauthenticated "
                "connection(s), %d in total",
                len(self.clients),
                closed,
                self.evicted,
            )
        return closed > 0

    def _close(self, client: Any, why: str) -> bool:
        self.clients.pop(client.id, None)
        proxyserver = ctx.master.addons.get("proxyserver")
        handler = proxyserver.connections.get(client.id) if proxyserver else None
        if handler is None:
            return False
        io = handler.transports.get(handler.client)
        if io is None or io.handler is None:
            return False
        io.handler.cancel(f"capgate: {why}")
        self._closing.add(client.id)
        return True

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while self.clients:
            await asyncio.sleep(SWEEP_EVERY_S)
            cutoff = loop.time() - self.preauth_idle
            idle = [
                client
                for cid, (client, opened) in list(self.clients.items())
                if opened < cutoff and cid not in self.authenticated
            ]
            closed = sum(self._close(client, "idle before authentication") for client in idle)
            if closed:
                logger.info(
                    "closed %d connection(s) idle %g s without authenticating",
                    closed,
                    self.preauth_idle,
                )
