"""Per-request state the addon carries between hooks, and the audit row it becomes.

A `FlowState` lives in `flow.metadata` from `requestheaders` until the response (or error)
is recorded; then it is removed, so nothing of a request outlives it. `finish()` writes the
one policy_decision row and the access log line (method, host, path — never the query,
never a header value).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mitmproxy import http

from capgate.broker import metrics
from capgate.broker.types import Activation, Decision, LeakPattern, PolicyDecision, Workspace
from capgate.caps import BodyTransform, Capability, Destination, RequestView, path_without_query

from .broker_port import BrokerPort
from .scrub import Scrubber, scrubber_for
from .tripwire import Tripwire

if TYPE_CHECKING:
    from .session import Guards

KEY = "capgate"
access_log = logging.getLogger("capgate.access")


@dataclass
class FlowState:
    started: float
    method: str
    path: str  # without the query string
    dest: Destination | None = None
    workspace: Workspace | None = None
    activation: Activation | None = None
    capability: Capability | None = None
    decision: str = Decision.ALLOW
    reason: str | None = None
    applied: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    auth_failures: dict[str, str] = field(default_factory=dict)
    scrub: list[LeakPattern] = field(default_factory=list)  # starts as guards.scrub
    guards: Guards | None = None  # the activation's compiled tripwire and scrubber
    oauth: list[str] = field(default_factory=list)  # credentials stamped with OAuth tokens
    body_transforms: list[BodyTransform] = field(default_factory=list)
    view: RequestView | None = None
    buffered_body: bool = False
    tripwire: Tripwire | None = None  # for the body, when the activation has values
    streamed_hit: str | None = None  # tripwire label found in a streamed body
    minted: list[LeakPattern] = field(default_factory=list)  # OAuth tokens stamped here
    refuse: bool = False  # the response cannot be scrubbed: `response` answers 502
    recorded: bool = False

    def scrubber(self) -> Scrubber:
        """What this request's responses are scrubbed with: every value of the activation
        and every value injected into this request."""
        if self.guards is not None:
            return self.guards.scrubber_with(self.scrub)
        return scrubber_for(tuple(self.scrub))


def new_state(flow: http.HTTPFlow) -> FlowState:
    request = flow.request
    state = FlowState(
        started=request.timestamp_start or time.time(),
        method=request.method,
        path=path_without_query(request.path),
    )
    flow.metadata[KEY] = state
    return state


def get_state(flow: http.HTTPFlow) -> FlowState | None:
    state = flow.metadata.get(KEY)
    return state if isinstance(state, FlowState) else None


DECISION_KEY = "capgate.decision"


_SAFE = frozenset(range(0x21, 0x7F)) - {ord("%")}


def printable(text: str) -> str:
    """`text` with every byte outside visible ASCII percent-encoded (`%1B`, `%FF`, `%20`),
    and `%` itself kept: what the audit row and the access log hold of a request field.
    A terminal escape cannot reach a terminal, and a raw 0xFF (kept by mitmproxy as a
    surrogate) cannot stop the decision writer."""
    if text.isascii() and text.isprintable() and " " not in text:
        return text  # visible ASCII only (isprintable refuses controls and DEL)
    data = text.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if b in _SAFE or b == 0x25 else f"%{b:02X}" for b in data)


def finish(broker: BrokerPort, flow: http.HTTPFlow, state: FlowState, status: int | None) -> None:
    """Record the request's policy decision and access log line, once; drop the state."""
    flow.metadata.pop(KEY, None)
    if state.recorded:
        return
    state.recorded = True
    duration_ms = round((time.time() - state.started) * 1000, 3)
    dest = state.dest
    workspace = state.workspace
    capability = state.capability.name if state.capability is not None else None
    scheme = printable(dest.scheme if dest else flow.request.scheme)
    host = printable(dest.host if dest else flow.request.host)
    port = dest.port if dest else flow.request.port
    decision = PolicyDecision(
        at=state.started,
        org_id=workspace.org_id if workspace else None,
        workspace_id=workspace.id if workspace else None,
        capability=capability,
        decision=str(state.decision),
        reason=state.reason,
        method=printable(state.method),
        scheme=scheme,
        host=host,
        port=port,
        path=printable(state.path),
        transforms_applied=tuple(state.applied),
        transforms_failed=dict(state.failed),
        auth_failures=dict(state.auth_failures),
        upstream_status=status,
        duration_ms=duration_ms,
    )
    broker.record_decision(decision)
    metrics.count_request(decision.decision, decision.reason)
    if workspace is not None:
        metrics.ACTIVE.seen(workspace.id)
    # Other addons (the recorder) read the row from the flow instead of re-deriving it.
    flow.metadata[DECISION_KEY] = decision
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "%s %s:%s%s %s%s %s %.1fms%s",
            decision.method,
            host,
            port,
            decision.path,
            state.decision,
            f"/{state.reason}" if state.reason else "",
            status if status is not None else "-",
            duration_ms,
            f" capability={capability}" if capability else "",
        )


def record_refusal(
    broker: BrokerPort,
    workspace: Workspace | None,
    scheme: str,
    host: str,
    port: int,
    reason: str,
    decision: str = Decision.DENY,
) -> None:
    """The row (and access log line) of a refusal that has no HTTP request to go with
    it: a tunnel that carried something other than HTTP, a tripped CONNECT target."""
    row = PolicyDecision(
        at=time.time(),
        org_id=workspace.org_id if workspace else None,
        workspace_id=workspace.id if workspace else None,
        capability=None,
        decision=str(decision),
        reason=reason,
        method="-",
        scheme=printable(scheme),
        host=printable(host),
        port=port,
        path="",
        transforms_applied=(),
        transforms_failed={},
        auth_failures={},
        upstream_status=None,
        duration_ms=0.0,
    )
    broker.record_decision(row)
    access_log.info("- %s:%s %s/%s", row.host, port, row.decision, reason)
