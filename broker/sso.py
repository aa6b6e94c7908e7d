"""Console single sign-on: which user an identity provider's verified e-mail address is.

`capgate serve --oidc-*` signs a browser in as the user whose `--email` (`user add NAME
--email E`) equals the ID token's `email` claim, compared case-insensitively. An address
no user has, or one that users of several orgs share, signs nobody in.
"""

from __future__ import annotations

from dataclasses import dataclass

from .store import ControlStore


@dataclass(frozen=True)
class EmailMatch:
    org_id: str
    user: str


def users_with_email(store: ControlStore, email: str) -> list[EmailMatch]:
    rows = store.query(
        "SELECT org_id, name FROM users WHERE email IS NOT NULL AND lower(email) = lower(?)"
        " ORDER BY org_id, name",
        (email,),
    )
    return [EmailMatch(row["org_id"], row["name"]) for row in rows]
