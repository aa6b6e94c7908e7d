"""The host-indexed matcher: which capability of a role a request falls under.

Exact host patterns sit in a dict keyed by (host, port); wildcard patterns in a dict keyed
by (suffix, port), found by walking the labels of the requested host. `port` None in a key
means "the scheme's default port". A lookup therefore touches only the capabilities naming
that host (or one of its parent domains), however many capabilities the file has. Among
the candidates the lowest file index that also matches scheme, method and path wins.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from capgate.caps.globs import PathFacts
from capgate.caps.hosts import DEFAULT_PORTS, is_ip_address
from capgate.caps.http import path_without_query

if TYPE_CHECKING:
    from capgate.caps.model import Capability

_Key = tuple[str, int | None]


class Matcher:
    """First-match-wins lookup over one role's capabilities (given in file order)."""

    def __init__(self, capabilities: tuple[Capability, ...]) -> None:
        self.capabilities = capabilities
        exact: dict[_Key, list[Capability]] = defaultdict(list)
        wildcard: dict[_Key, list[Capability]] = defaultdict(list)
        for capability in capabilities:
            for pattern in capability.hosts:
                index = wildcard if pattern.wildcard else exact
                bucket = index[(pattern.host, pattern.port)]
                if not bucket or bucket[-1] is not capability:
                    bucket.append(capability)
        # Buckets are in file order because capabilities arrive in file order.
        self._exact = dict(exact)
        self._wildcard = dict(wildcard)
        self._longest_suffix = max((len(host) for host, _ in self._wildcard), default=0)

    def match(self, scheme: str, host: str, port: int, method: str, path: str) -> Capability | None:
        """The first capability (file order) matching all five; `host` must be normalised.

        `path` should come without the query string; one that has it is cut at `?`.
        """
        scheme = scheme.lower()
        method = method.upper()
        path = path_without_query(path)
        facts = PathFacts.of(path)
        best: Capability | None = None
        for bucket in self._buckets(scheme, host, port):
            for capability in bucket:
                if best is not None and capability.index >= best.index:
                    break
                if capability.allows_request(scheme, method, path, facts):
                    best = capability
                    break
        return best

    def could_match(self, scheme: str, host: str, port: int) -> bool:
        """Whether any capability could match this destination (scheme, host and port)."""
        scheme = scheme.lower()
        return any(
            scheme in capability.schemes
            for bucket in self._buckets(scheme, host, port)
            for capability in bucket
        )

    def _buckets(self, scheme: str, host: str, port: int) -> list[list[Capability]]:
        """The candidate lists for a destination: exact host, then each parent domain."""
        default = DEFAULT_PORTS.get(scheme) == port
        buckets = []
        for index, name in ((self._exact, host), *self._suffixes(host)):
            bucket = index.get((name, port))
            if bucket:
                buckets.append(bucket)
            if default:
                bucket = index.get((name, None))
                if bucket:
                    buckets.append(bucket)
        return buckets

    def _suffixes(self, host: str) -> list[tuple[dict[_Key, list[Capability]], str]]:
        """(wildcard index, suffix) for every parent domain of `host` a wildcard could name."""
        if not self._wildcard or is_ip_address(host):
            return []
        suffixes = []
        dot = host.find(".")
        while dot >= 0:
            suffix = host[dot + 1 :]
            if len(suffix) <= self._longest_suffix:
                suffixes.append((self._wildcard, suffix))
            dot = host.find(".", dot + 1)
        return suffixes
