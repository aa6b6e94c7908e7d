"""The typed, immutable values a caps.yaml file is parsed into, and what evaluation yields."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal

from capgate.caps.cel import CelExpression, record
from capgate.caps.globs import Glob, PathFacts
from capgate.caps.hosts import HostPattern
from capgate.caps.http import path_without_query
from capgate.caps.matcher import Matcher

# The closed provider enum of PROVIDERS.md. caps/ may not import broker/, so the slugs are
# repeated here; tests/broker/test_provider_enum_agreement.py checks both lists agree.
AUTH_PROVIDERS: tuple[str, ...] = (
    "google",
    "microsoft",
    "anthropic",
    "openai",
    "gemini",
    "azure_openai",
    "slack_bot",
    "github_pat",
    "notion_token",
    "linear_pat",
    "hubspot_pat",
    "discord_bot",
    "gitlab_token",
    "sendgrid",
    "pagerduty",
    "grafana",
    "databricks",
    "nvd",
    "elevenlabs",
    "airtable",
    "splunk",
    "newrelic",
    "virustotal",
    "elasticsearch",
    "jira",
    "confluence",
    "gitlab_git_https",
    "github_git_https",
    "google_search",
)

Action = Literal["set", "append", "remove"]
# What happens to a request no capability of the role matches (caps.yaml defaults.unmatched).
Unmatched = Literal["deny", "allow"]

# --- what a transform sees ---------------------------------------------------------------


@dataclass(frozen=True)
class RequestView:
    """The request as transforms see it: `request` in CEL.

    `host` is normalised; `path` has no query string; `headers` has lower-cased names
    (repeated headers joined by the caller with ", "); `query` maps each parameter name to
    its first value.
    """

    method: str
    scheme: str
    host: str
    port: int
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)

    @cached_property
    def cel_value(self) -> Any:
        """This view as a CEL map, built once per request however many transforms run."""
        return record(
            {
                "method": self.method,
                "scheme": self.scheme,
                "host": self.host,
                "port": self.port,
                "path": self.path,
                "headers": self.headers,
                "query": self.query,
            }
        )


@dataclass(frozen=True)
class WorkspaceView:
    """The workspace as transforms see it: `workspace` in CEL."""

    id: str
    role: str
    user: str

    @cached_property
    def cel_value(self) -> Any:
        """This view as a CEL map, built once."""
        return record({"id": self.id, "role": self.role, "user": self.user})


# --- transforms --------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthTransform:
    """Stamp the minted credential in its provider's wire shape. No CEL."""

    kind: ClassVar[str] = "auth"
    index: int
    line: int
    credential: str
    provider: str

    @property
    def label(self) -> str:
        return f"auth:{self.credential}"

    @property
    def secrets(self) -> frozenset[str]:
        return frozenset()


class _CelValued:
    """A transform whose optional CEL `value` declares the secrets it may read."""

    value: CelExpression | None

    @property
    def secrets(self) -> frozenset[str]:
        return self.value.secrets if self.value else frozenset()


@dataclass(frozen=True)
class HeaderTransform(_CelValued):
    """Set, append or remove a request header; `value` is None for remove."""

    kind: ClassVar[str] = "header"
    index: int
    line: int
    name: str
    action: Action
    value: CelExpression | None

    @property
    def label(self) -> str:
        return f"header:{self.name}"


@dataclass(frozen=True)
class QueryTransform(_CelValued):
    """Set, append or remove a query parameter; `value` is None for remove."""

    kind: ClassVar[str] = "query"
    index: int
    line: int
    name: str
    action: Action
    value: CelExpression | None

    @property
    def label(self) -> str:
        return f"query:{self.name}"


@dataclass(frozen=True)
class BodyTransform(_CelValued):
    """Set, append or remove the JSON value at an RFC 6901 pointer of a JSON body."""

    kind: ClassVar[str] = "body"
    index: int
    line: int
    pointer: str
    action: Action
    value: CelExpression | None

    @property
    def label(self) -> str:
        return f"body:{self.pointer}"


@dataclass(frozen=True)
class PathTransform:
    """Replace the request path (not the query). Its CEL may not reference secrets."""

    kind: ClassVar[str] = "path"
    index: int
    line: int
    value: CelExpression

    @property
    def label(self) -> str:
        return "path"

    @property
    def secrets(self) -> frozenset[str]:
        return frozenset()


Transform = AuthTransform | HeaderTransform | QueryTransform | BodyTransform | PathTransform

# --- what evaluation yields --------------------------------------------------------------


@dataclass(frozen=True)
class HeaderEdit:
    """Set (replacing every value), append, or remove (`value` None) a header."""

    name: str
    action: Action
    value: str | None = field(repr=False)  # may hold a secret


@dataclass(frozen=True)
class QueryEdit:
    """Set (replacing every value), append, or remove (`value` None) a query parameter."""

    name: str
    action: Action
    value: str | None = field(repr=False)  # may hold a secret


@dataclass(frozen=True)
class BodyEdit:
    """A JSON-pointer edit; `value` is a plain JSON value (None for remove)."""

    pointer: str
    action: Action
    value: Any = field(repr=False)  # may hold a secret


@dataclass(frozen=True)
class PathEdit:
    """The new request path, without a query string."""

    path: str


Edit = HeaderEdit | QueryEdit | BodyEdit | PathEdit


@dataclass(frozen=True)
class TransformFailure:
    """A transform that could not run: its label and a short reason code, never text."""

    label: str
    reason: str


# --- capabilities and the file -----------------------------------------------------------


@dataclass(frozen=True)
class Capability:
    """One capability of caps.yaml, in file position `index` (0-based).

    An empty `methods` allows every method; an empty `paths` allows every path.
    """

    name: str
    index: int
    line: int
    hosts: tuple[HostPattern, ...]
    schemes: tuple[str, ...]
    methods: tuple[str, ...]
    paths: tuple[str, ...]
    allow_plaintext: bool
    transforms: tuple[Transform, ...]
    path_patterns: tuple[Glob, ...] = field(repr=False, compare=False, default=())

    @cached_property
    def credentials(self) -> frozenset[str]:
        return frozenset(t.credential for t in self.transforms if isinstance(t, AuthTransform))

    @cached_property
    def secrets(self) -> frozenset[str]:
        return frozenset().union(*(t.secrets for t in self.transforms))

    @cached_property
    def needs_body(self) -> bool:
        return any(isinstance(t, BodyTransform) for t in self.transforms)

    @cached_property
    def reads_request_maps(self) -> bool:
        """Whether a transform's CEL may read `request.headers` / `request.query`.

        Direct concatenations read only scalar fields, so a view without the two maps
        serves them; the maps (the costly part of a request view) are built otherwise.
        """
        return any(
            value is not None and value.parts is None and "request" in value.variables
            for value in (getattr(t, "value", None) for t in self.transforms)
        )

    def allows_request(
        self, scheme: str, method: str, path: str, facts: PathFacts | None = None
    ) -> bool:
        """Whether scheme, method and path match (the host is the index's business).
        `facts`: the path's `PathFacts`, when the caller checks it against many."""
        if scheme not in self.schemes:
            return False
        if self.methods and method.upper() not in self.methods:
            return False
        return self.allows_path(path, facts)

    def allows_path(self, path: str, facts: PathFacts | None = None) -> bool:
        """Whether a path (query already removed) matches one of the globs."""
        if not self.path_patterns:
            return True
        if facts is None:
            facts = PathFacts.of(path)
        if facts.dotted:
            return False
        for pattern in self.path_patterns:
            if pattern.match(path):
                break
        else:
            return False
        # An upstream that decodes %2F (or %5C) before routing sees more segments than the
        # glob did: `/repos/*/issues` must not admit `/repos/a%2Fadmin/issues`.
        slashed = facts.slashed
        return slashed == path or any(p.match(slashed) for p in self.path_patterns)

    def matches(self, scheme: str, host: str, port: int, method: str, path: str) -> bool:
        """The linear, index-free check of all five parts (host already normalised)."""
        scheme = scheme.lower()
        destination = any(h.matches(scheme, host, port) for h in self.hosts)
        return destination and self.allows_request(scheme, method, path_without_query(path))


@dataclass(frozen=True)
class Role:
    """A role and the capability names it may use."""

    name: str
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class CapsConfig:
    """A loaded caps.yaml file."""

    version: int
    unmatched: Unmatched
    capabilities: tuple[Capability, ...]
    roles: Mapping[str, Role]
    filename: str = ""
    _matchers: dict[str, Matcher] = field(default_factory=dict, repr=False, compare=False)

    def capabilities_of(self, role: str) -> tuple[Capability, ...]:
        """The role's capabilities in file order; none for a role the file does not name."""
        known = self.roles.get(role)
        allowed = set(known.capabilities) if known else set()
        return tuple(c for c in self.capabilities if c.name in allowed)

    def matcher(self, role: str) -> Matcher:
        """The role's matcher, built on first use and cached (an unknown role matches nothing)."""
        matcher = self._matchers.get(role)
        if matcher is None:
            matcher = Matcher(self.capabilities_of(role))
            self._matchers[role] = matcher
        return matcher

    def credential_names(self, role: str) -> frozenset[str]:
        """Every credential name the role's transforms declare."""
        return frozenset().union(*(c.credentials for c in self.capabilities_of(role)))

    def secret_names(self, role: str) -> frozenset[str]:
        """Every secret name the role's transforms declare."""
        return frozenset().union(*(c.secrets for c in self.capabilities_of(role)))
