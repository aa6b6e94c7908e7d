"""Recording live traffic as replay fixtures, with every real value replaced by a placeholder.

`RecordAddon` must sit before `CapgateAddon` in the addon chain (where `ProxySettings.
extra_addons` puts it): its `requestheaders`/`request` see the request as the agent sent
it, its `responseheaders` the upstream's headers before scrubbing, and its `response` the
outgoing request and capgate's per-flow state. Each handled request becomes one fixture
file in the output folder (examples/FIXTURES.md, "Recording"):

- the agent's request and the upstream's response, with each value the workspace may use
  (credentials, minted tokens, secrets; raw, base64, Basic and URL-encoded forms) written
  as its `{{credential:NAME}}` / `{{secret:NAME}}` / `{{basic:NAME}}` placeholder;
- test values `test-<name>-value` for those credentials and secrets, never the real ones;
- expectations from what happened: decision, reason, capability, the outgoing request,
  the response the agent got, and the policy_decision fields.

Not recorded: refused CONNECT tunnels and 407s (no inner request or no workspace), flows
that ended in an error (no upstream response). A response body capgate streamed is
recorded as the agent received it (already scrubbed). A value a CEL expression derived
from a secret (other than by concatenation) cannot be recognised and is not masked.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import weakref
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mitmproxy import connection, ctx, http

from capgate.broker.types import Activation, LeakPattern, PolicyDecision, Workspace
from capgate.caps import path_without_query

from ..addon.checks import proxy_token
from ..addon.flowstate import DECISION_KEY, FlowState, get_state
from ..addon.hooks import CapgateAddon
from ..addon.scrub import Scrubber
from .placeholders import Named, TestValues

logger = logging.getLogger("capgate.record")
KEY = "capgate.record"
DROPPED_HEADERS = frozenset({"proxy-authorization", "content-length"})


def record_addons(out_dir: Path) -> list[Any]:
    """The addons `capgate proxy --record DIR` adds, before capgate's own."""
    return [RecordAddon(out_dir)]


def fixture_value(name: str) -> str:
    """The stand-in a recorded fixture gives a credential or secret."""
    return f"test-{name}-value"


@dataclass
class Capture:
    """What the recorder saw of one flow before capgate changed it."""

    method: str
    url: str
    headers: list[tuple[str, str]]
    token: str | None
    body: bytes | None = None
    upstream_headers: list[tuple[str, str]] | None = None
    upstream_status: int | None = None
    state: FlowState | None = field(default=None, repr=False)


class RecordAddon:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.written: list[Path] = []
        self.tunnels: MutableMapping[connection.Client, str] = weakref.WeakKeyDictionary()

    def running(self) -> None:
        # Bodies capgate streams are otherwise not kept; a fixture needs them.
        ctx.options.update(store_streamed_bodies=True)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        token = proxy_token(flow.request)
        if token:
            self.tunnels[flow.client_conn] = token

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        token = self.tunnels.get(flow.client_conn) or proxy_token(request)
        headers = [
            (k, v) for k, v in request.headers.items(multi=True) if k.lower() not in DROPPED_HEADERS
        ]
        flow.metadata[KEY] = Capture(request.method, request.url, headers, token)

    def request(self, flow: http.HTTPFlow) -> None:
        capture = flow.metadata.get(KEY)
        if isinstance(capture, Capture):  # before capgate's body transforms
            capture.body = flow.request.get_content(strict=False)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        capture = flow.metadata.get(KEY)
        state = get_state(flow)
        if isinstance(capture, Capture) and flow.response is not None and state is not None:
            capture.upstream_headers = list(flow.response.headers.items(multi=True))
            capture.upstream_status = flow.response.status_code
            capture.state = state

    def response(self, flow: http.HTTPFlow) -> None:
        capture = flow.metadata.pop(KEY, None)
        if not isinstance(capture, Capture) or flow.response is None or not capture.token:
            return
        try:
            self._record(flow, capture)
        except (OSError, ValueError) as exc:
            logger.error(
                "record: could not write a fixture for %s %s: %s",
                capture.method,
                flow.request.pretty_host,
                type(exc).__name__,
            )

    def error(self, flow: http.HTTPFlow) -> None:
        flow.metadata.pop(KEY, None)

    # -- building the fixture ---------------------------------------------------------------

    def _capgate(self) -> CapgateAddon | None:
        found = ctx.master.addons.get("capgate")  # registered by name, not a chain entry
        return found if isinstance(found, CapgateAddon) else None

    def _activation(self, capture: Capture) -> tuple[Workspace, Activation] | None:
        state = capture.state
        if state is not None and state.workspace is not None and state.activation is not None:
            return state.workspace, state.activation
        capgate = self._capgate()
        if capgate is None or capgate.watcher is None or capture.token is None:
            return None
        workspace = capgate.sessions.workspace(capture.token)
        if workspace is None:
            return None
        watcher = capgate.watcher
        return workspace, capgate.sessions.activation(workspace, watcher.config, watcher.version)

    def _record(self, flow: http.HTTPFlow, capture: Capture) -> None:
        found = self._activation(capture)
        if found is None:
            return  # no workspace: a 407, nothing a fixture could replay
        workspace, activation = found
        state = capture.state
        patterns = [*activation.leak_patterns, *(state.scrub if state else ())]
        real = TestValues(named_values(patterns, activation))
        document = build_fixture(flow, capture, workspace, activation, real)
        text = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
        leaked = _leaked_label(text, patterns)
        if leaked is not None:
            logger.error("record: a form of %s could not be masked; fixture not written", leaked)
            return
        self.written.append(self._write(flow, text, real))

    def _write(self, flow: http.HTTPFlow, text: str, real: TestValues) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        slug = real.mask(flow.request.pretty_host + path_without_query(flow.request.path))
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", slug.replace("{{", "").replace("}}", ""))[:60]
        index = len(list(self.out_dir.glob("*.yaml"))) + 1
        while True:
            path = self.out_dir / f"{index:04d}-{flow.request.method.lower()}-{slug}.yaml"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                index += 1
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        return path


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (event streams, text bodies) as literal blocks, as written by hand."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and not value.endswith(" ") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def named_values(patterns: Iterable[LeakPattern], activation: Activation) -> list[Named]:
    """The real values behind a flow's patterns, in every form a placeholder can name."""
    groups: dict[tuple[str, str], set[bytes]] = {}
    for pattern in patterns:
        kind, sep, name = pattern.label.partition(":")
        if not sep or kind not in ("credential", "secret"):
            kind, name = "credential", pattern.label  # minted-wire labels may be bare names
        groups.setdefault((kind, name), set()).add(pattern.value)
    named = [Named("secret", name, value.reveal()) for name, value in activation.secrets.items()]
    for (kind, name), values in groups.items():
        raws = [v for v in values if base64.b64encode(v) in values]
        for raw in raws:
            username = _basic_username(values, raw)
            named.append(Named(kind, name, raw.decode("utf-8", "replace"), username))
    return named


def _basic_username(values: set[bytes], raw: bytes) -> str | None:
    for value in values:
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        user, sep, rest = decoded.partition(b":")
        if sep and rest == raw:
            return user.decode("utf-8", "replace")
    return None


def _leaked_label(text: str, patterns: Iterable[LeakPattern]) -> str | None:
    data = text.encode("utf-8", "surrogateescape")
    for pattern in patterns:
        if pattern.value and pattern.value in data:
            return pattern.label
    return None


def build_fixture(
    flow: http.HTTPFlow,
    capture: Capture,
    workspace: Workspace,
    activation: Activation,
    real: TestValues,
) -> dict[str, Any]:
    """The fixture document for one flow (plain data, every value masked)."""
    state = capture.state
    failed_auth = set(state.auth_failures) if state else set()
    credentials = {
        name: _credential_entry(row.provider, row.kind, row.provider_config, name)
        for name, row in sorted(activation.credentials.items())
        if name not in failed_auth
    }
    secrets = {name: fixture_value(name) for name in sorted(activation.secrets)}
    document: dict[str, Any] = {
        "description": f"recorded {capture.method} {real.mask(flow.request.pretty_host)}",
        "workspace": {"role": workspace.role, "user": workspace.user, "id": workspace.id},
    }
    if credentials:
        document["credentials"] = credentials
    if secrets:
        document["secrets"] = secrets
    document["request"] = _message(
        {"method": capture.method, "url": real.mask(capture.url)},
        capture.headers,
        capture.body,
        real,
    )
    if state is not None:
        document["upstream"] = _upstream(flow.response, capture, state, real)
    document["expect"] = _expectations(flow, capture, real)
    return document


def _credential_entry(provider: str, kind: str, config: Any, name: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"provider": provider, "kind": kind, "value": fixture_value(name)}
    kept = {k: str(v) for k, v in dict(config).items() if not k.endswith("_ref")}
    if kept:
        entry["config"] = kept
    return entry


def _message(
    head: dict[str, Any], headers: list[tuple[str, str]], body: bytes | None, real: TestValues
) -> dict[str, Any]:
    out = dict(head)
    if headers:
        out["headers"] = _headers_doc(headers, real)
    if body:
        out["body"] = _body_doc(body, real)
    return out


def _headers_doc(headers: Iterable[tuple[str, str]], real: TestValues) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name, value in headers:
        masked = real.mask(value)
        if name in doc:
            previous = doc[name]
            doc[name] = [*previous, masked] if isinstance(previous, list) else [previous, masked]
        else:
            doc[name] = masked
    return doc


def _body_doc(body: bytes, real: TestValues) -> Any:
    text = body.decode("utf-8", "replace")
    try:
        document = json.loads(text)
    except ValueError:
        return real.mask(text)
    if isinstance(document, (dict, list)):
        return real.mask_value(document)
    return real.mask(text)


def _upstream(
    response: http.Response | None, capture: Capture, state: FlowState, real: TestValues
) -> dict[str, Any]:
    assert response is not None
    headers = [
        (k, v) for k, v in capture.upstream_headers or () if k.lower() not in DROPPED_HEADERS
    ]
    body = response.get_content(strict=False) or b""
    upstream: dict[str, Any] = {"status": capture.upstream_status or response.status_code}
    return _message(upstream, headers, body, real)


def _agent_body(response: http.Response, state: FlowState | None) -> bytes:
    """The body as the agent gets it: capgate scrubs buffered bodies after this hook runs."""
    body = response.get_content(strict=False) or b""
    if state is not None and state.scrub and not response.stream:
        body = Scrubber(state.scrub).scrub(body)
    return body


def _expectations(flow: http.HTTPFlow, capture: Capture, real: TestValues) -> dict[str, Any]:
    response = flow.response
    assert response is not None
    state = capture.state
    expect: dict[str, Any] = _decision(flow, state)
    if state is not None:
        sent = list(flow.request.headers.items(multi=True))
        sent_names = {k.lower() for k, _ in sent}
        absent = sorted({k for k, _ in capture.headers if k.lower() not in sent_names})
        request = _message(
            {"method": flow.request.method, "url": real.mask(flow.request.url)},
            [(k, v) for k, v in sent if k.lower() != "content-length"],
            flow.request.get_content(strict=False),
            real,
        )
        if absent:  # listed right after the headers, before the body
            body = request.pop("body", None)
            request["headers_absent"] = absent
            if body is not None:
                request["body"] = body
        expect["request"] = request
    agent: dict[str, Any] = {"status": response.status_code}
    redacted = [(k, v) for k, v in response.headers.items(multi=True) if "[REDACTED:" in v]
    if redacted:
        agent["headers"] = _headers_doc(redacted, real)
    body = _agent_body(response, state)
    if body:
        agent["body"] = _body_doc(body, real)
    expect["response"] = agent
    if state is not None:
        expect["policy_decision"] = {
            "transforms_applied": list(state.applied),
            "transforms_failed": dict(state.failed),
            "auth_failures": dict(state.auth_failures),
            "upstream_status": response.status_code,
        }
    return expect


def _decision(flow: http.HTTPFlow, state: FlowState | None) -> dict[str, Any]:
    """Decision, reason and capability, from the policy_decision row capgate wrote."""
    row = flow.metadata.get(DECISION_KEY)
    if isinstance(row, PolicyDecision):
        return {"decision": row.decision, "reason": row.reason, "capability": row.capability}
    if state is not None:
        capability = state.capability.name if state.capability is not None else None
        return {"decision": str(state.decision), "reason": state.reason, "capability": capability}
    return {"decision": "deny"}
