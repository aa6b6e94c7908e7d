"""Which credential row a workspace gets for a name: the override table.

| org row                      | user's row | result                            |
|------------------------------|------------|-----------------------------------|
| yes, allow_user_override off | (none)     | the org row, for every user       |
| yes, allow_user_override on  | yes        | the user's row; others: org row   |
| no                           | yes        | the user's row, for that user only|
| no                           | no         | nothing (auth_unavailable)        |

Resolution looks at which rows exist, not at their status: a user's row that needs
re-authorisation stays that user's row (its mints report needs_reauth) rather than
silently falling back to the org's identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .credentials import CredentialRow, Credentials

AUTH_UNAVAILABLE = "auth_unavailable"


def resolve(
    rows: Iterable[CredentialRow], *, org_id: str, name: str, user_id: str
) -> CredentialRow | None:
    """The row `user_id` of `org_id` gets for `name`, or None.

    Rows of other orgs, other names and other users' user-scoped rows are ignored, so
    this may be handed any superset of the relevant rows.
    """
    org_row = user_row = None
    for row in rows:
        if row.org_id != org_id or row.name != name:
            continue
        if row.user_id is None:
            org_row = row
        elif row.user_id == user_id:
            user_row = row
    if org_row is not None and not org_row.allow_user_override:
        return org_row
    return user_row if user_row is not None else org_row


def resolve_names(
    credentials: Credentials, *, org_id: str, user_id: str, names: Sequence[str]
) -> dict[str, CredentialRow]:
    """Resolve every name for one workspace with one query; unresolved names are absent."""
    rows = credentials.rows_named(org_id, tuple(names))
    chosen = {}
    for name in names:
        row = resolve(rows, org_id=org_id, name=name, user_id=user_id)
        if row is not None:
            chosen[name] = row
    return chosen
