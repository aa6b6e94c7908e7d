"""capgate's mitmproxy addon: authenticate, check the destination, trip, match, transform,
scrub, audit. Options are parsed in `configure`; the hooks look up and apply.

Hook order per request (MITMPROXY-NOTES.md): `http_connect` (tunnel auth; tunnels no
capability could match are refused when unmatched=deny), `requestheaders` (identity,
destination, tripwire, policy, header/query/path/auth transforms, streaming choice),
`request` (body tripwire and body transforms, buffered flows only), `responseheaders`
(header scrubbing, streamed scrubbing), `response` / `error` (401 token drop, buffered
scrubbing, the policy_decision row).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import weakref
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.layer import NextLayer
from mitmproxy.utils import human

from capgate.broker.types import Decision, Workspace
from capgate.caps import CapsError, Destination, decide, decide_tunnel

from . import inject
from .apply import drop_headers, header_names, header_value, header_values
from .broker_port import BrokerPort
from .checks import (
    PROXY_AUTHORIZATION,
    authority_mismatch,
    connect_destination,
    destination,
    drop_nominated_headers,
    pin_destination,
    proxy_token,
    request_problem,
)
from .flowstate import FlowState, finish, get_state, new_state, printable, record_refusal
from .limits import BODY_LIMIT_KEY
from .reload import CapsWatcher
from .responses import deny_response, internal_error_response, proxy_auth_required, upstream_cause
from .scrub import can_decode, for_mitmproxy, scrubbing_stream
from .session import Sessions, StoreTimeout

logger = logging.getLogger("capgate.addon")

# Responses up to this size (with a Content-Length, not SSE) are buffered and scrubbed
# whole; larger, chunked and event-stream responses are scrubbed chunk by chunk.
BUFFER_RESPONSE_MAX = 1024 * 1024
# Request bodies up to this size (with a Content-Length) are buffered so the tripwire can
# refuse them before a byte reaches the upstream; larger ones are streamed and scanned.
BUFFER_REQUEST_MAX = 64 * 1024
# What an upgraded WebSocket flow's messages are checked with: (scrub patterns, tripwire,
# workspace), kept on the flow.
WEBSOCKET_GUARD = "capgate.websocket"
INTERNAL_ERROR = "internal_error"
STORE_TIMEOUT = "store_timeout"  # an identity or activation read outlived its deadline
FAILED_KEY = "capgate.failed"  # a response hook raised: the answer becomes capgate's 502


def fail_closed[F: Callable[..., Any]](hook: F) -> F:
    """Any exception in a capgate hook denies instead of forwarding.

    mitmproxy logs an addon's exception and lets the flow go on: a body transform that
    raised (a JSON body nested too deep for `json.loads`) would forward the agent's own
    values beside the credential. Here the request is answered by capgate (500 before
    the upstream saw it, 502 after) and its row is written with reason `internal_error`.
    Only the exception's type is logged: its text could quote request bytes.
    """
    if inspect.iscoroutinefunction(hook):

        @functools.wraps(hook)
        async def run_async(self: CapgateAddon, flow: Any, *args: Any) -> Any:
            try:
                return await hook(self, flow, *args)
            except Exception as exc:
                self._failed(hook.__name__, flow, exc)
                return None

        return run_async  # type: ignore[return-value]

    @functools.wraps(hook)
    def run(self: CapgateAddon, flow: Any, *args: Any) -> Any:
        try:
            return hook(self, flow, *args)
        except Exception as exc:
            self._failed(hook.__name__, flow, exc)
            return None

    return run  # type: ignore[return-value]


# Stripped from requests whose responses are scrubbed: a Range request could reassemble a
# value from partial answers that each stop short of it (judgement: strip rather than
# refuse, so downloads keep working; the upstream answers 200 with the whole body).
RANGE_HEADERS = ("Range", "If-Range")


def _unscrubbable_framing(response: http.Response) -> bool:
    codings = header_values(response.headers, "transfer-encoding")
    return bool(codings) and [c.strip().lower() for c in codings] != ["chunked"]


def frame_buffered_body(request: http.Request) -> None:
    """Every forwarded body is framed: a buffered HTTP/2 or HTTP/3 body without a
    Content-Length gets one (mitmproxy forwards it to an HTTP/1.1 upstream as is)."""
    headers = request.headers
    present = header_names(headers)
    if b"content-length" in present or b"transfer-encoding" in present:
        return
    content = request.raw_content
    if content or request.method.upper() in ("POST", "PUT", "PATCH"):
        headers["content-length"] = str(len(content or b""))


class RefuseConnection(layer.Layer):
    """A mitmproxy layer that closes the agent's connection and relays nothing."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield commands.CloseConnection(self.context.client)


class CapgateAddon:
    name = "capgate"  # mitmproxy's addon registry name: master.addons.get("capgate")

    def __init__(self, broker: BrokerPort) -> None:
        self.broker = broker
        self.sessions = Sessions(broker)
        self.watcher: CapsWatcher | None = None
        self.body_limit = 10 * 1024 * 1024
        self.audit_fail_closed = False
        # Tunnel identity: the token a CONNECT authenticated with, per client connection.
        self.tunnels: MutableMapping[connection.Client, str] = weakref.WeakKeyDictionary()
        # Client connections whose SNI tripped the tripwire: label, per connection.
        self.tripped: MutableMapping[connection.Client, str] = weakref.WeakKeyDictionary()
        # Client connections capgate could not check (a TLS hook failed or its store read
        # timed out): every request on them is refused with the reason.
        self.unchecked: MutableMapping[connection.Client, str] = weakref.WeakKeyDictionary()
        self._poller: asyncio.Task[None] | None = None

    def load(self, loader: Any) -> None:
        loader.add_option("capgate_caps", str, "", "Path of the caps.yaml file.")
        loader.add_option(
            "capgate_body_limit",
            str,
            "10m",
            "Largest request body capgate buffers for body transforms (413 above).",
        )
        loader.add_option(
            "capgate_audit_fail_closed",
            bool,
            False,
            "Refuse requests (503) while policy decisions cannot be written.",
        )

    def configure(self, updated: set[str]) -> None:
        if "capgate_caps" in updated and ctx.options.capgate_caps:
            try:
                self.watcher = CapsWatcher(Path(ctx.options.capgate_caps), background=True)
            except CapsError as exc:
                raise exceptions.OptionsError(
                    "invalid caps file:\n" + "\n".join(str(p) for p in exc.problems)
                ) from None
            except OSError as exc:
                raise exceptions.OptionsError(f"cannot read caps file: {exc.strerror}") from None
        if "capgate_body_limit" in updated:
            limit = human.parse_size(ctx.options.capgate_body_limit)
            if limit is None:
                raise exceptions.OptionsError("capgate_body_limit must be a size, e.g. 10m")
            self.body_limit = limit
        if "capgate_audit_fail_closed" in updated:
            self.audit_fail_closed = ctx.options.capgate_audit_fail_closed

    def running(self) -> None:
        self._poller = asyncio.get_running_loop().create_task(self._poll_caps())

    async def _poll_caps(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.watcher is not None:
                self.watcher.poll()

    def done(self) -> None:
        if self._poller is not None:
            self._poller.cancel()

    # -- identity -------------------------------------------------------------------------

    async def _identify(self, flow: http.HTTPFlow, state: FlowState) -> bool:
        """Resolve the workspace (tunnel identity or this request's header); strip the header."""
        token = self.tunnels.get(flow.client_conn)
        if token is None:
            token = proxy_token(flow.request)
        drop_headers(flow.request.headers, (PROXY_AUTHORIZATION,))
        self.sessions.refresh()
        workspace = None
        if token:  # awaited only when the cache misses
            workspace = self.sessions.cached_workspace(token)
            if workspace is None:
                workspace = await self.sessions.load_workspace(token)
        if workspace is None:
            return False
        state.workspace = workspace
        return True

    def _deny(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        status: int,
        reason: str,
        decision: Decision = Decision.DENY,
    ) -> None:
        state.decision, state.reason = decision, reason
        if status == 407:
            flow.response = proxy_auth_required()
        else:
            shown = "tripwire" if decision is Decision.TRIPWIRE else reason
            flow.response = deny_response(status, shown, state.dest, state.method, state.path)
        finish(self.broker, flow, state, None)

    def _failed(self, hook: str, flow: Any, exc: BaseException) -> None:
        """Deny a flow whose hook raised; never let it go on as it was."""
        logger.error(
            "internal error in the %s hook (%s); the flow is refused", hook, type(exc).__name__
        )
        try:
            if not isinstance(flow, http.HTTPFlow):
                context = getattr(flow, "context", None)  # a TLS hook's data
                if context is not None:
                    self.unchecked[context.client] = INTERNAL_ERROR
                kill = getattr(flow, "kill", None)
                if callable(kill):
                    kill()  # a TCP/UDP flow: nothing capgate could check goes through
                return
            state = get_state(flow) or new_state(flow)
            state.decision, state.reason = Decision.DENY, INTERNAL_ERROR
            if hook == "websocket_message" and flow.websocket is not None:
                flow.websocket.messages[-1].drop()
                flow.kill()
            elif flow.response is not None and hook == "responseheaders":
                # The body is still to come: buffer it, and `response` answers 502 instead.
                flow.response.stream = False
                flow.metadata[FAILED_KEY] = True
                return
            elif flow.response is not None and hook == "response":
                flow.response = internal_error_response(502)
            elif hook in ("http_connect", "requestheaders", "request"):
                flow.response = internal_error_response(500)
            else:
                flow.kill()
            finish(self.broker, flow, state, flow.response.status_code if flow.response else None)
        except Exception:  # the last line of defence must not raise itself
            logger.error("could not refuse the flow cleanly; killing it")
            flow.kill()

    # -- hooks ----------------------------------------------------------------------------

    @fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        state = new_state(flow)
        state.path = ""
        token = proxy_token(flow.request)
        drop_headers(flow.request.headers, (PROXY_AUTHORIZATION,))
        self.sessions.refresh()
        try:
            workspace = await self.sessions.load_workspace(token) if token else None
        except StoreTimeout:
            return self._deny(flow, state, 503, STORE_TIMEOUT)
        if workspace is None or self.watcher is None:
            return self._deny(flow, state, 407, "proxy_auth")
        state.workspace = workspace
        try:
            label = await self._leak_in_name(
                workspace,
                flow.request.host,
                flow.request.authority,
                header_fields=flow.request.headers.fields,
            )
        except StoreTimeout:
            return self._deny(flow, state, 503, STORE_TIMEOUT)
        if label is not None:
            logger.warning(
                "tripwire: the CONNECT target from workspace %s carries the value of %s; blocked",
                workspace.id,
                label,
            )
            state.dest = Destination("https", inject.REDACTED, flow.request.port)
            return self._deny(flow, state, 403, label, Decision.TRIPWIRE)
        try:
            state.dest = connect_destination(flow.request)
        except ValueError:
            return self._deny(flow, state, 403, "bad_destination")
        pin_destination(flow.request, state.dest)
        self.watcher.poll()
        refusal = decide_tunnel(self.watcher.config, workspace.role, state.dest)
        if refusal is not None:
            return self._deny(flow, state, 403, refusal)
        self.tunnels[flow.client_conn] = token  # type: ignore[assignment]
        flow.metadata.pop("capgate", None)  # the tunnel itself is not a request row

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or self.watcher is None:
            return
        # Whatever happens next, a body mitmproxy buffers for this flow is bounded (also
        # one sent after a refusal, and one without a length: HTTP/2, HTTP/3).
        flow.metadata[BODY_LIMIT_KEY] = self.body_limit
        state = new_state(flow)
        try:
            refusal = await self._admit(flow, state)
            if refusal is not None:
                return self._deny(flow, state, *refusal)
            assert state.workspace is not None and state.dest is not None
            self.watcher.poll()
            config, version = self.watcher.config, self.watcher.version
            state.activation = self.sessions.cached_activation(
                state.workspace, version
            ) or await self.sessions.load_activation(state.workspace, config, version)
        except StoreTimeout:
            return self._deny(flow, state, 503, STORE_TIMEOUT)
        # Every value the workspace can use is scrubbed from every response of it: a value
        # stored upstream through one capability can be read back through another.
        state.guards = self.sessions.guards(state.activation)
        state.scrub = list(state.guards.scrub)
        if state.scrub:
            drop_headers(flow.request.headers, RANGE_HEADERS)
        label = self._leak_in_head(flow, state)
        if label is not None:
            return self._trip(flow, state, label)
        verdict = decide(config, state.workspace.role, state.dest, state.method, state.path)
        state.capability, state.reason = verdict.capability, verdict.reason
        if verdict.deny is not None:
            return self._deny(flow, state, 403, verdict.deny)
        if verdict.capability is None:  # unmatched, and the file allows that
            return self._stream_request(flow, state)
        if verdict.capability.needs_body:
            refusal = self._check_buffered_body(flow)
            if refusal is not None:
                return self._deny(flow, state, *refusal)
        await inject.apply_head(self.broker, flow, state)
        if state.minted:
            self.sessions.note_minted(state.workspace.org_id, state.minted)
        if state.scrub:
            drop_headers(flow.request.headers, RANGE_HEADERS)
        if not verdict.capability.needs_body:
            self._stream_request(flow, state)

    async def _admit(
        self, flow: http.HTTPFlow, state: FlowState
    ) -> tuple[int, str] | tuple[int, str, Decision] | None:
        """Who is asking and where the request really goes, before any policy: the
        (status, reason[, decision]) to refuse with, or None with state.workspace and
        state.dest set."""
        if not await self._identify(flow, state):
            return 407, "proxy_auth"
        tripped = self.tripped.get(flow.client_conn)
        if tripped is not None:
            return 403, tripped, Decision.TRIPWIRE
        unchecked = self.unchecked.get(flow.client_conn)
        if unchecked is not None:
            return 503 if unchecked == STORE_TIMEOUT else 500, unchecked
        problem = request_problem(flow.request)
        if problem is not None:
            return 400, problem
        try:
            state.dest = destination(flow.request)
        except ValueError:
            return 403, "bad_destination"
        if authority_mismatch(flow.request, state.dest):
            return 403, "host_mismatch"
        drop_nominated_headers(flow.request)
        pin_destination(flow.request, state.dest)
        if self.audit_fail_closed and not self.broker.decisions_writable():
            return 503, "audit_unavailable"
        return None

    def _leak_in_head(self, flow: http.HTTPFlow, state: FlowState) -> str | None:
        """The label of a stored value the request's head carries (the tripwire runs before
        matching, on every request); keeps the tripwire on the state for the body."""
        assert state.guards is not None and state.dest is not None
        tripwire = state.guards.tripwire
        if not tripwire:
            return None
        state.tripwire = tripwire
        return inject.find_leak_in_head(tripwire, flow.request, state.dest)

    def _check_buffered_body(self, flow: http.HTTPFlow) -> tuple[int, str] | None:
        headers = flow.request.headers
        if "transfer-encoding" in headers:
            return 411, "length_required"
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.body_limit:
            return 413, "body_too_large"
        return None

    def _stream_request(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Stream the body unless it is small enough to check whole before forwarding."""
        request = flow.request
        length = header_value(request.headers, "content-length")
        if length is not None and length.isdigit() and int(length) <= BUFFER_REQUEST_MAX:
            state.buffered_body = True
            return
        if length is None and (request.is_http2 or request.is_http3):
            # No length and no chunked coding to frame a stream with: an HTTP/1.1 upstream
            # would read the body's bytes as further requests. Buffer it; `request` frames
            # it with a Content-Length.
            state.buffered_body = True
            return
        if length is None and not header_values(request.headers, "transfer-encoding"):
            state.buffered_body = True  # HTTP/1 with neither header: there is no body
            return
        if state.tripwire:

            def on_hit(label: str) -> None:
                state.streamed_hit = label

            def on_error() -> None:
                state.streamed_hit = INTERNAL_ERROR

            flow.request.stream = for_mitmproxy(state.tripwire.stream(on_hit), on_error)
        else:
            flow.request.stream = True

    def _trip(self, flow: http.HTTPFlow, state: FlowState, label: str) -> None:
        workspace = state.workspace
        logger.warning(
            "tripwire: request from workspace %s carries the value of %s; blocked",
            workspace.id if workspace else "-",
            label,
        )
        state.path = inject.redacted_path(state, flow.request)
        self._deny(flow, state, 403, label, Decision.TRIPWIRE)

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.trailers:
            # A second header block after the body (HTTP/2; mitmproxy refuses them over
            # HTTP/1): no policy, tripwire or credential slot covers it, so it ends here.
            # mitmproxy sends request trailers only after this hook, streamed or not.
            flow.request.trailers = None
        state = get_state(flow)
        if state is None or flow.response is not None:
            return
        if state.streamed_hit == INTERNAL_ERROR:
            state.decision, state.reason = Decision.DENY, INTERNAL_ERROR
            flow.kill()
            return
        if state.streamed_hit is not None:
            label = state.streamed_hit
            logger.warning(
                "tripwire: a streamed request body carried the value of %s; "
                "the value was not forwarded and the flow was killed",
                label,
            )
            state.decision, state.reason = Decision.TRIPWIRE, label
            flow.kill()
            return
        checked = state.buffered_body or state.body_transforms
        if state.tripwire and checked and flow.request.raw_content:  # an empty body holds nothing
            content = flow.request.get_content(strict=False) or b""
            hit = state.tripwire.find_in_body(content)
            if hit is not None:
                return self._trip(flow, state, hit)
        if state.body_transforms:
            inject.apply_body(flow, state)
        if checked:
            frame_buffered_body(flow.request)

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = get_state(flow)
        response = flow.response
        if state is None or response is None:
            return
        if not state.scrub:
            response.stream = True
            return
        scrubber = state.scrubber()
        inject.scrub_headers(response.headers, scrubber)
        if response.reason:  # the status line's reason phrase is no header, but echoes too
            reason = scrubber.scrub_text(response.reason)
            if reason != response.reason:
                response.reason = reason
        status = response.status_code
        if status < 200 or status in (204, 304):
            return  # no body to frame; after a 101 `response` decides what may follow
        if status == 206 or _unscrubbable_framing(response):
            # A partial answer (capgate strips Range, so none was asked for) could hand
            # out a value piece by piece; a transfer coding other than chunked (`gzip,
            # chunked`) hides the body from the scrubber. Buffered, then refused.
            state.refuse = True
            response.stream = False
            return
        content_type = (header_value(response.headers, "content-type") or "").lower()
        length = header_value(response.headers, "content-length")
        small = length is not None and length.isdigit() and int(length) <= BUFFER_RESPONSE_MAX
        if small and not content_type.startswith("text/event-stream"):
            return  # buffered; scrubbed whole in `response`
        encoding = header_value(response.headers, "content-encoding") or ""
        if not can_decode(encoding):
            return  # cannot scrub a stream we cannot decode: buffer it instead
        response.stream = for_mitmproxy(scrubbing_stream(scrubber, encoding))
        response.headers.pop("content-encoding", None)
        response.headers.pop("content-length", None)
        if not (flow.request.is_http2 or flow.request.is_http3):
            response.headers["transfer-encoding"] = "chunked"

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        state = get_state(flow)
        response = flow.response
        if state is None or response is None:
            return
        if flow.metadata.pop(FAILED_KEY, False):
            flow.response = internal_error_response(502)
            return finish(self.broker, flow, state, 502)
        if response.status_code == 401 and state.oauth and state.activation is not None:
            for name in state.oauth:
                self.broker.drop_token(state.activation, name)
        if state.refuse:
            inject.refuse_unscrubbable(response)
        elif response.status_code == 101:
            self._upgrade(flow, response, state)
        elif state.scrub and not response.stream:
            inject.scrub_buffered(response, state.scrubber())
        if state.scrub and response.trailers:
            inject.scrub_headers(response.trailers, state.scrubber())
        finish(self.broker, flow, state, response.status_code)

    def _upgrade(self, flow: http.HTTPFlow, response: http.Response, state: FlowState) -> None:
        """After an upgrade capgate can scrub and trip on WebSocket messages, but not on a
        raw byte stream: any other protocol is refused when values were injected."""
        if flow.websocket is None:
            if state.scrub:
                inject.refuse_unscrubbable(response)
            return
        if state.scrub or state.tripwire:
            scrubber = state.scrubber() if state.scrub else None
            flow.metadata[WEBSOCKET_GUARD] = (scrubber, state.tripwire, state.workspace)

    @fail_closed
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        guard = flow.metadata.get(WEBSOCKET_GUARD)
        if guard is None or flow.websocket is None:
            return
        scrubber, tripwire, workspace = guard
        message = flow.websocket.messages[-1]
        if message.from_client:
            label = tripwire.find_in_body(message.content) if tripwire else None
            if label is not None:
                logger.warning(
                    "tripwire: a WebSocket message from workspace %s carries the value of %s;"
                    " not forwarded",
                    workspace.id if workspace else "-",
                    label,
                )
                message.drop()
            return
        if scrubber:
            cleaned = scrubber.scrub(message.content)
            if cleaned != message.content:
                message.content = cleaned

    async def _leak_in_name(
        self,
        workspace: Workspace,
        *names: str,
        header_fields: tuple[tuple[bytes, bytes], ...] = (),
    ) -> str | None:
        """The tripwire on what the agent wrote before any request: a CONNECT target and
        the CONNECT's other headers, the SNI of its ClientHello (as written, before
        normalising lower-cases it)."""
        assert self.watcher is not None
        self.watcher.poll()
        config, version = self.watcher.config, self.watcher.version
        activation = await self.sessions.load_activation(workspace, config, version)
        tripwire = self.sessions.guards(activation).tripwire
        if not tripwire:
            return None
        for name in names:
            if name and (label := tripwire.find_in_head(name, "", [])):
                return label
        if header_fields:
            return tripwire.find_in_head("", "", header_fields)
        return None

    @fail_closed
    async def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """The SNI the agent sends inside a tunnel goes through the tripwire too. It never
        reaches the upstream (capgate pins the upstream's name); a hit is logged, audited,
        and every request on that connection is refused."""
        sni = data.client_hello.sni
        client = data.context.client
        token = self.tunnels.get(client)
        if not sni or token is None or self.watcher is None:
            return
        try:
            workspace = await self.sessions.load_workspace(token)
            if workspace is None:
                return
            label = await self._leak_in_name(workspace, sni)
        except StoreTimeout:
            self.unchecked[client] = STORE_TIMEOUT  # the SNI went unchecked: refuse it all
            return
        if label is None:
            return
        self.tripped[client] = label
        address = data.context.server.address
        port = int(address[1]) if address else 0
        record_refusal(
            self.broker, workspace, "https", inject.REDACTED, port, label, Decision.TRIPWIRE
        )
        logger.warning(
            "tripwire: the TLS server name from workspace %s carries the value of %s; "
            "every request on the connection is refused",
            workspace.id,
            label,
        )

    # -- what is not HTTP -------------------------------------------------------------------

    def next_layer(self, nextlayer: NextLayer) -> None:
        """Inside an intercepted tunnel capgate speaks only HTTP: bytes mitmproxy could not
        classify as HTTP (a leading blank line is enough) would be relayed as raw TCP, with
        no policy, no tripwire and no row. mitmproxy's TCP layer cannot be stopped from a
        hook once it runs, so the layer itself is replaced: the connection is closed, and
        the refusal audited."""
        try:
            if isinstance(nextlayer.layer, (layers.TCPLayer, layers.UDPLayer)):
                self._refuse_stream(nextlayer)
        except Exception as exc:
            logger.error("internal error in the next_layer hook (%s)", type(exc).__name__)
            nextlayer.layer = RefuseConnection(nextlayer.context)

    def _refuse_stream(self, nextlayer: NextLayer) -> None:
        context = nextlayer.context
        nextlayer.layer = RefuseConnection(context)
        token = self.tunnels.get(context.client)
        self.sessions.refresh()
        workspace = self.sessions.workspace(token) if token else None
        address = context.server.address
        host, port = (str(address[0]), int(address[1])) if address else ("", 0)
        record_refusal(self.broker, workspace, "https", host, port, "not_http")
        logger.warning(
            "a tunnel to %s:%s carried traffic that is not HTTP; refused", printable(host), port
        )

    @fail_closed
    def error(self, flow: http.HTTPFlow) -> None:
        state = get_state(flow)
        if state is None:
            return
        message = flow.error.msg if flow.error is not None else ""
        status = flow.response.status_code if flow.response is not None else None
        if state.reason is None and state.decision == Decision.ALLOW:
            if status is not None and _client_went_away(flow, message):
                # The upstream answered; the agent stopped reading (an SDK closing its
                # stream after `data: [DONE]`): not an upstream failure.
                state.reason = "client_closed"
            else:
                state.reason = f"upstream_{upstream_cause(message)}"
        finish(self.broker, flow, state, status)


def _client_went_away(flow: http.HTTPFlow, message: str) -> bool:
    lowered = message.lower()
    return (
        lowered.startswith("client disconnected")
        or "stream reset by client" in lowered
        or flow.client_conn.timestamp_end is not None
    )
