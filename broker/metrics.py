"""capgate's Prometheus metrics: every definition in one place, on the default registry.

The proxy (`capgate proxy --metrics-listen`) and the control plane (`capgate serve`, which
mounts prometheus_client's ASGI app) expose the same registry. Each process counts its own
requests: aggregate workers and replicas in Prometheus (`sum by (decision, reason)`).

No label ever carries a value, a token, a path or a host: labels are code-defined words
(decisions, reason codes, provider slugs), and anything else becomes `other`. On the
request path only counter increments happen; gauges are computed when scraped.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

_WORD = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_SLUG = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


def word(value: str | None, *, none: str = "none") -> str:
    """A reason code as a label: itself when it is a plain code word, else `other`."""
    if value is None:
        return none
    return value if _WORD.match(value) else "other"


REQUESTS = Counter(
    "capgate_requests",
    "Requests handled by the proxy, by policy decision and reason code.",
    ["decision", "reason"],
)
MINTS = Counter(
    "capgate_mints",
    "Credential mint outcomes, by provider and reason (ok, or the failure code).",
    ["provider", "reason"],
)
TOKEN_ENDPOINT_SECONDS = Histogram(
    "capgate_token_endpoint_seconds",
    "Latency of calls to OAuth token endpoints (cache misses only), by provider.",
    ["provider"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
DECISION_ROWS_WRITTEN = Counter(
    "capgate_decision_rows_written", "policy_decision rows written to the store."
)
DECISION_ROWS_DROPPED = Counter(
    "capgate_decision_rows_dropped",
    "policy_decision rows lost: the writer's queue was full.",
)
DECISION_WRITE_FAILURES = Counter(
    "capgate_decision_write_failures",
    "Failed attempts to write a batch of policy_decision rows (retried in order).",
)
CAPS_RELOADS = Counter(
    "capgate_caps_reloads", "caps.yaml reloads, by result (ok or rejected).", ["result"]
)
for _result in ("ok", "rejected"):
    CAPS_RELOADS.labels(_result)


class _Writer(Protocol):
    def queue_depth(self) -> int: ...

    def writable(self) -> bool: ...


_writers: weakref.WeakSet[_Writer] = weakref.WeakSet()


def watch_writer(writer: _Writer) -> None:
    """Report a decision writer's queue depth and health until it stops."""
    _writers.add(writer)


def forget_writer(writer: _Writer) -> None:
    _writers.discard(writer)


DECISION_QUEUE_DEPTH = Gauge(
    "capgate_decision_queue_depth", "policy_decision rows waiting to be written."
)
DECISION_QUEUE_DEPTH.set_function(lambda: sum(w.queue_depth() for w in list(_writers)))
DECISION_LOG_WRITABLE = Gauge(
    "capgate_decision_log_writable",
    "1 while policy_decision rows are being written, 0 while the store refuses them.",
)
DECISION_LOG_WRITABLE.set_function(lambda: float(all(w.writable() for w in list(_writers))))


class ActiveWorkspaces:
    """Workspaces that sent a request within the last `window` seconds.

    `seen` is one dict store per request; counting and pruning happen when scraped.
    """

    def __init__(self, window: float = 300.0) -> None:
        self.window = window
        self._last: dict[str, float] = {}

    def seen(self, workspace_id: str) -> None:
        self._last[workspace_id] = time.monotonic()

    def count(self) -> int:
        cutoff = time.monotonic() - self.window
        stale = [k for k, at in list(self._last.items()) if at < cutoff]
        for key in stale:
            self._last.pop(key, None)
        return len(self._last)


ACTIVE = ActiveWorkspaces()
ACTIVE_WORKSPACES = Gauge(
    "capgate_active_workspaces", "Workspaces that sent a request in the last 5 minutes."
)
ACTIVE_WORKSPACES.set_function(lambda: float(ACTIVE.count()))


# --- the request path: cached children, one increment each ----------------------------

_request_children: dict[tuple[str, str | None], Callable[[], None]] = {}
_mint_children: dict[tuple[str, str], Callable[[], None]] = {}
_children_lock = threading.Lock()


def count_request(decision: str, reason: str | None) -> None:
    """One request's decision. Tripwire reasons name a credential: counted as `tripwire`."""
    inc = _request_children.get((decision, reason))
    if inc is None:
        label = "tripwire" if decision == "tripwire" else word(reason)
        with _children_lock:
            inc = REQUESTS.labels(word(decision, none="other"), label).inc
            _request_children[(decision, reason)] = inc
    inc()


def provider_label(provider: str | None) -> str:
    if provider is None:
        return "unknown"
    return provider if _SLUG.match(provider) else "other"


def count_mint(provider: str | None, reason: str | None) -> None:
    """One mint outcome; `reason` None is ok, `auth_unavailable:CODE` counts as CODE."""
    key = (provider or "", reason or "ok")
    inc = _mint_children.get(key)
    if inc is None:
        code = reason.rpartition(":")[2] if reason else None
        with _children_lock:
            inc = MINTS.labels(provider_label(provider), word(code, none="ok")).inc
            _mint_children[key] = inc
    inc()


def serve_metrics(host: str, port: int) -> tuple[object, threading.Thread]:
    """Serve /metrics (Prometheus text) from the default registry in a daemon thread;
    returns (server, thread): `server.shutdown()` stops it."""
    return start_http_server(port, addr=host, registry=REGISTRY)
