"""Replay fixtures: the YAML format, parsed into frozen values with line numbers.

A fixture is one request an agent sent, what the upstream answered, and what capgate must
have done with it (examples/FIXTURES.md has the full reference):

    description: a free-text line (optional)
    workspace: {role: ROLE, user: USER, id: ws_...}      # user default "alice", id optional
    credentials:                                          # test values, never real ones
      NAME: {provider: P, kind: K, value: V, config: {KEY: VAL}, mint_failure: REASON}
    secrets: {NAME: V}
    request: {method: M, url: URL, headers: {NAME: V | [V, ...]}, body: TEXT | JSON}
    upstream: {status: 200, headers: {...}, body: TEXT | JSON}        # optional
    expect:
      decision: allow | deny | tripwire
      reason: R | null                                    # optional
      capability: NAME | null                             # optional
      request: {method, url, headers: {...}, headers_absent: [...], body}   # as sent upstream
      response: {status, headers: {...}, headers_absent: [...], body}       # as the agent got it
      policy_decision: {transforms_applied: [...], transforms_failed: {...}, auth_failures: {...},
                        upstream_status, method, scheme, host, port, path}

Strings anywhere may hold placeholders (`{{credential:NAME}}`, see placeholders.py). A
mapping `body` is JSON: in `request`/`upstream` it is sent as JSON, in `expect` it is a
subset the actual JSON body must contain. `load_fixture` raises `FixtureError` whose
`.problems` name file, line and column; nothing else escapes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capgate.broker.providers import PROVIDERS, Kind, wire_username
from capgate.caps import Problem
from capgate.caps.files import MAX_FIXTURE_BYTES, FileRefused, read_config_text

from .placeholders import KINDS, Named, TestValues, placeholders_in
from .yamlwalk import Node, Walker

DECISIONS = ("allow", "deny", "tripwire")
POLICY_FIELDS = (
    "capability",
    "decision",
    "reason",
    "method",
    "scheme",
    "host",
    "port",
    "path",
    "transforms_applied",
    "transforms_failed",
    "auth_failures",
    "upstream_status",
)
Headers = tuple[tuple[str, str], ...]


class FixtureError(Exception):
    """A fixture file could not be loaded; `.problems` lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(sorted(set(problems)))
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Workspace:
    role: str
    user: str = "alice"
    id: str | None = None
    line: int = 1  # of `role`, for a role the caps file does not define


@dataclass(frozen=True)
class Credential:
    name: str
    provider: str
    kind: str
    value: str
    config: Mapping[str, str]
    mint_failure: str | None = None


@dataclass(frozen=True)
class Message:
    """A request the agent sends or a response the upstream gives; `body` is bytes-ready text."""

    method: str
    url: str
    status: int
    headers: Headers
    body: str | None
    json_body: bool


@dataclass(frozen=True)
class Check:
    """One expectation: `path` names the observed field (e.g. `request.headers.Authorization`),
    `mode` how to compare (`equal`, `header`, `absent`, `body`)."""

    path: str
    expected: Any
    mode: str
    line: int


@dataclass(frozen=True)
class Fixture:
    path: Path
    description: str
    workspace: Workspace
    credentials: tuple[Credential, ...]
    secrets: tuple[tuple[str, str], ...]
    request: Message
    upstream: Message
    checks: tuple[Check, ...]
    values: TestValues


def load_fixture(path: Path) -> Fixture:
    try:
        text = read_config_text(path, MAX_FIXTURE_BYTES)
    except FileRefused as exc:
        raise FixtureError([Problem(str(path), 1, 1, f"cannot read fixture: {exc}")]) from None
    return parse_fixture(text, path)


def parse_fixture(text: str, path: Path) -> Fixture:
    walker = Walker(str(path))
    root = walker.compose(text)
    fixture = _fixture(walker, root, path) if root is not None else None
    if walker.problems or fixture is None:
        raise FixtureError(walker.problems)
    return fixture


def _fixture(w: Walker, root: Node, path: Path) -> Fixture | None:
    top = w.fixed_mapping(
        root,
        "fixture",
        ("description", "workspace", "credentials", "secrets", "request", "upstream", "expect"),
        required=("workspace", "request", "expect"),
    )
    if top is None:
        return None
    workspace = _workspace(w, top["workspace"])
    credentials = _credentials(w, top.get("credentials"))
    secrets = tuple(
        (name, w.string(node, f"secrets.{name}") or "")
        for name, node in w.entries(top.get("secrets"), "secrets")
    )
    request = _message(w, top["request"], "request", is_request=True)
    upstream = _message(w, top.get("upstream"), "upstream", is_request=False)
    checks = _expect(w, top["expect"])
    description = w.string(top["description"], "description") if "description" in top else ""
    values = TestValues(_named(credentials, secrets))
    _check_placeholders(w, root, values)
    if workspace is None or request is None or upstream is None:
        return None
    return Fixture(
        path,
        description or "",
        workspace,
        credentials,
        secrets,
        request,
        upstream,
        tuple(checks),
        values,
    )


def _workspace(w: Walker, node: Node) -> Workspace | None:
    entries = w.fixed_mapping(node, "workspace", ("role", "user", "id"), required=("role",))
    if entries is None:
        return None
    role = w.string(entries["role"], "workspace.role") if "role" in entries else None
    user = w.string(entries["user"], "workspace.user") if "user" in entries else "alice"
    ws_id = w.string(entries["id"], "workspace.id") if "id" in entries else None
    if not role:
        return None
    return Workspace(role, user or "alice", ws_id, w.line(entries["role"]))


def _credentials(w: Walker, node: Node | None) -> tuple[Credential, ...]:
    found = []
    for name, item in w.entries(node, "credentials"):
        where = f"credentials.{name}"
        e = w.fixed_mapping(
            item,
            where,
            ("provider", "kind", "value", "config", "mint_failure"),
            required=("provider", "value"),
        )
        if e is None:
            continue
        provider = w.string(e["provider"], f"{where}.provider") if "provider" in e else None
        spec = PROVIDERS.get(provider or "")
        if provider and spec is None:
            w.problem(e["provider"], f"{where}.provider: unknown provider '{provider}'")
            continue
        if spec is None:
            continue
        kind = w.string(e["kind"], f"{where}.kind") if "kind" in e else sorted(spec.kinds)[0]
        if kind not in {str(k) for k in spec.kinds}:
            legal = ", ".join(sorted(spec.kinds))
            w.problem(e.get("kind", item), f"{where}.kind: {provider} takes {legal}")
            continue
        config = {
            k: w.string(v, f"{where}.config.{k}") or ""
            for k, v in w.entries(e.get("config"), f"{where}.config")
        }
        value = w.string(e["value"], f"{where}.value") if "value" in e else None
        failure = (
            w.string(e["mint_failure"], f"{where}.mint_failure") if "mint_failure" in e else None
        )
        if value is not None:
            found.append(Credential(name, provider or "", str(kind), value, config, failure))
    return tuple(found)


def _named(
    credentials: tuple[Credential, ...], secrets: tuple[tuple[str, str], ...]
) -> Iterator[Named]:
    for cred in credentials:
        spec = PROVIDERS[cred.provider]
        basic = wire_username(spec, cred.config) if Kind(cred.kind) == Kind.BASIC_AUTH else None
        yield Named("credential", cred.name, cred.value, basic)
    for name, value in secrets:
        yield Named("secret", name, value)


def _message(w: Walker, node: Node | None, where: str, is_request: bool) -> Message | None:
    if node is None:  # no upstream given: an empty 200
        return Message("", "", 200, (), None, False)
    keys = ("method", "url", "headers", "body") if is_request else ("status", "headers", "body")
    required = ("method", "url") if is_request else ()
    e = w.fixed_mapping(node, where, keys, required=required)
    if e is None:
        return None
    method = (w.string(e["method"], f"{where}.method") or "") if "method" in e else ""
    url = (w.string(e["url"], f"{where}.url") or "") if "url" in e else ""
    if is_request and url and not url.lower().startswith(("http://", "https://")):
        w.problem(e["url"], f"{where}.url: expected an absolute http:// or https:// URL")
    status = w.integer(e["status"], f"{where}.status") if "status" in e else 200
    headers = _headers(w, e.get("headers"), f"{where}.headers")
    body, is_json = _body(w, e.get("body"), f"{where}.body")
    return Message(method.upper(), url, status or 200, headers, body, is_json)


def _headers(w: Walker, node: Node | None, where: str) -> Headers:
    pairs = []
    for name, item in w.entries(node, where):
        value = w.plain(item)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, (str, int, float)) and not isinstance(v, bool):
                pairs.append((name, str(v)))
            else:
                w.problem(item, f"{where}.{name}: expected a string or a list of strings")
    return tuple(pairs)


def _body(w: Walker, node: Node | None, where: str) -> tuple[str | None, bool]:
    if node is None:
        return None, False
    value = w.plain(node)
    if isinstance(value, str):
        return value, False
    return json.dumps(value, separators=(",", ":")), True


def _expect(w: Walker, node: Node) -> list[Check]:
    e = w.fixed_mapping(
        node,
        "expect",
        ("decision", "reason", "capability", "request", "response", "policy_decision"),
        required=("decision",),
    )
    if e is None:
        return []
    checks = []
    if "decision" in e:
        decision = w.string(e["decision"], "expect.decision")
        if decision is not None and decision not in DECISIONS:
            w.problem(e["decision"], f"expect.decision: expected one of {', '.join(DECISIONS)}")
        checks.append(Check("decision", decision, "equal", w.line(e["decision"])))
    for key in ("reason", "capability"):
        if key in e:
            checks.append(Check(key, w.plain(e[key]), "equal", w.line(e[key])))
    checks += _expect_message(w, e.get("request"), "request", ("method", "url"))
    checks += _expect_message(w, e.get("response"), "response", ("status",))
    for name, item in w.entries(e.get("policy_decision"), "expect.policy_decision"):
        if name not in POLICY_FIELDS:
            w.problem(
                item,
                f"unknown key '{name}' in expect.policy_decision; expected one of: "
                + ", ".join(POLICY_FIELDS),
            )
        checks.append(Check(f"policy_decision.{name}", w.plain(item), "equal", w.line(item)))
    return checks


def _expect_message(
    w: Walker, node: Node | None, where: str, scalars: tuple[str, ...]
) -> list[Check]:
    if node is None:
        return []
    e = w.fixed_mapping(node, f"expect.{where}", (*scalars, "headers", "headers_absent", "body"))
    if e is None:
        return []
    checks = [
        Check(f"{where}.{k}", w.plain(e[k]), "equal", w.line(e[k])) for k in scalars if k in e
    ]
    for name, item in w.entries(e.get("headers"), f"expect.{where}.headers"):
        checks.append(Check(f"{where}.headers.{name}", w.plain(item), "header", w.line(item)))
    if "headers_absent" in e:
        for name, item in w.string_items(e["headers_absent"], f"expect.{where}.headers_absent"):
            checks.append(Check(f"{where}.headers.{name}", None, "absent", w.line(item)))
    if "body" in e:
        checks.append(Check(f"{where}.body", w.plain(e["body"]), "body", w.line(e["body"])))
    if where == "request":  # the request must have reached the upstream at all
        checks.insert(0, Check("request", "sent upstream", "sent", w.line(node)))
    return checks


def _check_placeholders(w: Walker, root: Node, values: TestValues) -> None:
    """Every placeholder must name a declared credential or secret in a known form."""
    for node in w.scalars(root):
        for kind, name in placeholders_in(node.value):
            token = "{{" + kind + ":" + name + "}}"
            if kind not in KINDS:
                w.problem(
                    node, f"unknown placeholder kind '{kind}'; expected one of: " + ", ".join(KINDS)
                )
            elif not values.known(token):
                what = "secret" if kind.startswith("secret") else "credential"
                hint = " with a Basic-auth kind" if kind == "basic" else ""
                w.problem(node, f"placeholder {token} names no {what}{hint} in this fixture")
