"""Fail closed: an exception inside one of capgate's hooks refuses the request.

mitmproxy logs an addon's exception and carries on with the flow as it is: a request
whose activation raised (a damaged store, an unreadable vault entry) would go upstream
unchecked, to any destination. Every capgate hook that decides or edits a flow is wrapped
with `fail_closed`: the flow gets capgate's JSON 503 (`internal_error`), a
policy_decision row and a log line naming the hook and the exception type (never its
text, which can carry values).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from capgate.broker.types import Decision

from .flowstate import finish, get_state, new_state
from .responses import deny_response

logger = logging.getLogger("capgate.addon")

REASON = "internal_error"


def refuse(addon: Any, flow: http.HTTPFlow, hook: str, exc: BaseException) -> None:
    """Answer the flow with a 503 and record it, whatever state it was left in."""
    logger.error(
        "internal error in the %s hook (%s): %s %s refused",
        hook,
        type(exc).__name__,
        flow.request.method,
        flow.request.pretty_host,
    )
    state = get_state(flow)
    if state is None:
        state = new_state(flow)
    state.decision, state.reason = Decision.DENY, REASON
    try:
        flow.response = deny_response(503, REASON, state.dest, state.method, state.path)
    except Exception:  # pragma: no cover - the refusal itself must not fail open
        flow.kill()
    finish(addon.broker, flow, state, None)


def fail_closed[F: Callable[..., Any]](method: F) -> F:
    """Wrap a hook method `(self, flow)`; sync or async."""
    hook = method.__name__
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def run_async(self: Any, flow: http.HTTPFlow) -> None:
            try:
                await method(self, flow)
            except Exception as exc:
                refuse(self, flow, hook, exc)

        return run_async  # type: ignore[return-value]

    @functools.wraps(method)
    def run(self: Any, flow: http.HTTPFlow) -> None:
        try:
            method(self, flow)
        except Exception as exc:
            refuse(self, flow, hook, exc)

    return run  # type: ignore[return-value]
