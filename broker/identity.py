"""Who is calling the control plane: a principal established at the edge.

A principal is one user, in that user's org, with that user's role; it comes from an API
key or a console session (then `csrf_token` is the session's CSRF token). Nothing in a
request can change the org a principal acts in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Principal:
    org_id: str
    org: str  # the org's name
    user_id: str
    user: str
    operator: bool
    via: Literal["api_key", "session"]
    credential_id: str  # the API key's id, or the session's row key (its SHA-256)
    csrf_token: str | None = None

    @property
    def role(self) -> str:
        return "operator" if self.operator else "member"

    def actor(self) -> str:
        """How audit rows name this caller."""
        return f"{'api' if self.via == 'api_key' else 'console'}:{self.user}"
