"""Running a matched capability's transforms against a live request, in file order.

`apply_head` runs in `requestheaders`: auth (mint and stamp), header, query and path
edits. `apply_body` runs in `request` for buffered bodies. A failing transform records a
reason and the request continues; a failed mint still removes the agent's own value for
that header or parameter. Every injected value becomes a scrub pattern for the response.
"""

from __future__ import annotations

import dataclasses
import logging

from mitmproxy import http

from capgate.broker.types import leak_patterns
from capgate.caps import (
    AuthTransform,
    BodyEdit,
    BodyEditError,
    BodyTransform,
    Destination,
    Edit,
    RequestView,
    Transform,
    TransformFailure,
    WorkspaceView,
    apply_body_edit,
    evaluate,
    path_without_query,
)

from .apply import apply_edit, auth_slots, clear_slots, load_json_body, stamp, write_json_body
from .broker_port import BrokerPort
from .flowstate import FlowState
from .scrub import Scrubber
from .tripwire import Tripwire

AUTH_UNAVAILABLE = "auth_unavailable"
logger = logging.getLogger("capgate.transforms")


def request_view(
    request: http.Request, dest: Destination, path: str, with_maps: bool = True
) -> RequestView:
    """What CEL sees of the request as the agent sent it; `with_maps=False` leaves the
    header and query maps empty when no transform of the capability can read them."""
    headers: dict[str, str] = {}
    query: dict[str, str] = {}
    if with_maps:
        for name, value in request.headers.items(multi=True):
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        for name, value in request.query.items(multi=True):
            query.setdefault(name, value)
    return RequestView(
        method=request.method,
        scheme=dest.scheme,
        host=dest.host,
        port=dest.port,
        path=path,
        headers=headers,
        query=query,
    )


def _workspace_view(state: FlowState) -> WorkspaceView:
    assert state.workspace is not None
    ws = state.workspace
    return WorkspaceView(id=ws.id, role=ws.role, user=ws.user)


def _secrets_for(state: FlowState, transform: Transform) -> dict[str, str] | None:
    """The transform's declared secrets as plain str, or None when one is missing."""
    assert state.activation is not None
    available = state.activation.secrets
    if not transform.secrets <= available.keys():
        return None
    return {name: available[name].reveal() for name in transform.secrets}


def _note_secrets(state: FlowState, transform: Transform) -> None:
    assert state.activation is not None
    for name in transform.secrets:
        state.scrub.extend(leak_patterns(f"secret:{name}", state.activation.secrets[name]))


def _evaluate(state: FlowState, transform: Transform) -> Edit | TransformFailure:
    secrets = _secrets_for(state, transform)
    if secrets is None:
        return TransformFailure(transform.label, "missing_secret")
    assert state.view is not None
    return evaluate(transform, state.view, _workspace_view(state), secrets)


async def apply_head(broker: BrokerPort, flow: http.HTTPFlow, state: FlowState) -> None:
    request = flow.request
    capability = state.capability
    assert state.dest is not None and state.activation is not None and capability is not None
    state.view = request_view(
        request, state.dest, state.path, with_maps=capability.reads_request_maps
    )
    # Before any transform and whatever a mint's outcome: no agent value in any header or
    # parameter an `auth` provider reads credentials from goes upstream (the slots a
    # `header` transform fills later are the operator's).
    for transform in capability.transforms:
        if isinstance(transform, AuthTransform):
            clear_slots(request, *auth_slots(transform.provider))
    for transform in capability.transforms:
        if isinstance(transform, BodyTransform):
            state.body_transforms.append(transform)
        elif isinstance(transform, AuthTransform):
            await _apply_auth(broker, request, state, transform)
        else:
            result = _evaluate(state, transform)
            if isinstance(result, TransformFailure):
                state.failed[transform.label] = result.reason
                continue
            problem = apply_edit(request, result)
            if problem is not None:
                state.failed[transform.label] = problem
                continue
            state.applied.append(transform.label)
            _note_secrets(state, transform)


async def _apply_auth(
    broker: BrokerPort, request: http.Request, state: FlowState, transform: AuthTransform
) -> None:
    assert state.activation is not None
    stored = state.activation.credentials.get(transform.credential)
    if stored is not None and stored.provider != transform.provider:
        # caps check warns about this; at request time a credential is only ever stamped
        # in the wire shape the operator declared for this capability.
        logger.warning(
            "credential %s is stored for provider %s, but capability %s declares %s; not used",
            transform.credential,
            stored.provider,
            state.capability.name if state.capability else "-",
            transform.provider,
        )
        state.auth_failures[transform.credential] = AUTH_UNAVAILABLE
        return
    outcome = await broker.mint(state.activation, transform.credential)
    wire = outcome.wire
    if wire is None:
        state.auth_failures[transform.credential] = AUTH_UNAVAILABLE
        return
    clear_slots(request, [name for name, _ in wire.headers], [name for name, _ in wire.query])
    problem = stamp(request, wire)
    if problem is not None:
        state.auth_failures[transform.credential] = problem
        return
    state.applied.append(transform.label)
    state.scrub.extend(wire.scrub)
    if wire.oauth:
        state.oauth.append(transform.credential)
        state.minted.extend(wire.scrub)


def apply_body(flow: http.HTTPFlow, state: FlowState) -> None:
    request = flow.request
    try:
        document = load_json_body(request)
    except ValueError:
        for transform in state.body_transforms:
            state.failed[transform.label] = "body_not_json"
        return
    changed = False
    for transform in state.body_transforms:
        result = _evaluate(state, transform)
        if isinstance(result, TransformFailure):
            state.failed[transform.label] = result.reason
            continue
        if not isinstance(result, BodyEdit):  # evaluate() gives body transforms BodyEdits
            state.failed[transform.label] = "unsupported_edit"
            continue
        try:
            document = apply_body_edit(document, result)
        except BodyEditError as exc:
            state.failed[transform.label] = exc.reason
            continue
        changed = True
        state.applied.append(transform.label)
        _note_secrets(state, transform)
    if changed:
        write_json_body(request, document)


def find_leak_in_head(tripwire: Tripwire, request: http.Request, dest: Destination) -> str | None:
    return tripwire.find_in_head(request.host, request.path, request.headers.fields)


REDACTED = "[REDACTED]"


def redacted_path(state: FlowState, request: http.Request) -> str:
    """The path (and destination host) with leaked values masked, for the audit row and
    the log: every echo form of every value is replaced by its marker; a path or host in
    which the tripwire still finds a value (a form no marker covers, a lower-cased host)
    is replaced whole."""
    assert state.activation is not None
    scrubber = Scrubber(state.activation.leak_patterns)
    tripwire = state.tripwire
    if state.dest is not None:
        host = scrubber.scrub_text(state.dest.host)
        if tripwire and (tripwire.find_in_head(request.host, "", []) or host != state.dest.host):
            host = REDACTED
        state.dest = dataclasses.replace(state.dest, host=host)
    path = path_without_query(scrubber.scrub_text(request.path))
    if tripwire and tripwire.find_in_head("", path, []):
        path = "/" + REDACTED
    return path


def scrub_headers(headers: http.Headers, scrubber: Scrubber) -> None:
    """Scrub every header value; drop a header whose *name* carries a value (a marker
    is no valid header name)."""
    fields = headers.fields
    # One search over all of them first: a value inside any one name or value is inside
    # the joined bytes too (the separator can only add false hits, checked field by field).
    if not scrubber.finds(b"\n".join(part for field in fields for part in field)):
        return
    cleaned = tuple(
        (name, scrubber.scrub(value)) for name, value in fields if scrubber.scrub(name) == name
    )
    if cleaned != fields:
        headers.fields = cleaned


UNSCRUBBABLE = (
    b'{"error": "capgate: the upstream answered in a form capgate cannot scrub", '
    b'"reason": "unscrubbable_response"}'
)


def refuse_unscrubbable(response: http.Response) -> None:
    """Replace an answer capgate cannot look into (an unknown or stacked Content-Encoding,
    a non-WebSocket protocol upgrade) with a 502: never pass on bytes unscrubbed."""
    response.status_code = 502
    response.reason = "Bad Gateway"
    for name in ("content-encoding", "upgrade", "connection"):
        response.headers.pop(name, None)
    response.headers["content-type"] = "application/json"
    response.set_content(UNSCRUBBABLE)


def scrub_buffered(response: http.Response, scrubber: Scrubber) -> None:
    """Scrub a whole buffered body, decoding its Content-Encoding first."""
    try:
        content = response.get_content(strict=True)
    except ValueError:
        # Undecodable (`gzip, gzip`, an unknown coding, corrupt data): the agent might
        # still unpack what capgate cannot, so the body is not passed on.
        if response.raw_content:
            refuse_unscrubbable(response)
        return
    if not content:
        return
    cleaned = scrubber.scrub(content)
    if cleaned != content:
        response.set_content(cleaned)
