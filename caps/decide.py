"""The allow/deny verdict on one request: pure, the same for the live proxy, `capgate
replay` and re-deciding recorded rows against another caps.yaml.

`decide(config, role, dest, method, path)` takes a normalised destination (see
`capgate.caps.http.Destination` and `normalize_host`), the request method, the path (a
query string, if any, is ignored) and the workspace's role, and returns a `Verdict`:

| the request | `capability` | `deny` | `reason` |
|---|---|---|---|
| matches a capability of the role (https, or http it allows) | it | None | None |
| matches a capability that does not allow plain http | it | `plaintext` | `plaintext` |
| plain http, matches nothing, but would match over https | None | `plaintext` | `plaintext` |
| matches nothing, `defaults.unmatched: deny` | None | `no_capability` | `no_capability` |
| matches nothing, `defaults.unmatched: allow` | None | None | `unmatched` |

`decide_tunnel(config, role, dest)` is the CONNECT-time question: None when some
capability of the role could match the tunnel's host and port (either scheme), else
`no_capability` (only under `defaults.unmatched: deny`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from capgate.caps.http import Destination, https_port_for

if TYPE_CHECKING:
    from capgate.caps.model import Capability, CapsConfig

NO_CAPABILITY = "no_capability"
PLAINTEXT = "plaintext"
UNMATCHED = "unmatched"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The capability a request falls under (None: none), and why it is refused, if it is.

    `reason` is what the policy_decision row records: the deny reason, `unmatched` for a
    request let through without a capability, None for a plain match.
    """

    capability: Capability | None
    deny: str | None = None

    @property
    def allowed(self) -> bool:
        return self.deny is None

    @property
    def reason(self) -> str | None:
        if self.deny is not None:
            return self.deny
        return UNMATCHED if self.capability is None else None


_NO_CAPABILITY = Verdict(None, NO_CAPABILITY)
_PLAINTEXT = Verdict(None, PLAINTEXT)
_UNMATCHED = Verdict(None)


def decide(config: CapsConfig, role: str, dest: Destination, method: str, path: str) -> Verdict:
    """The verdict on `method dest path` for a workspace of `role` under `config`."""
    matcher = config.matcher(role)
    capability = matcher.match(dest.scheme, dest.host, dest.port, method, path)
    if capability is None:
        if dest.scheme == "http":
            # An https capability for this destination: refuse rather than pass plain http.
            port = https_port_for(dest.port)
            if matcher.match("https", dest.host, port, method, path) is not None:
                return _PLAINTEXT
        return _NO_CAPABILITY if config.unmatched == "deny" else _UNMATCHED
    if dest.scheme == "http" and not capability.allow_plaintext:
        return Verdict(capability, PLAINTEXT)
    return Verdict(capability)


def decide_tunnel(config: CapsConfig, role: str, dest: Destination) -> str | None:
    """Whether a CONNECT tunnel to dest.host:dest.port may open: None, or `no_capability`.

    The scheme inside a tunnel is not known yet, so either scheme's capabilities count.
    """
    if config.unmatched != "deny":
        return None
    matcher = config.matcher(role)
    if matcher.could_match("https", dest.host, dest.port) or matcher.could_match(
        "http", dest.host, dest.port
    ):
        return None
    return NO_CAPABILITY
