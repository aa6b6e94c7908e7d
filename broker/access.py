"""The control plane's role policy: one table that decides every action (DESIGN.md, Roles).

| action                                   | operator                | member                    |
|------------------------------------------|-------------------------|---------------------------|
| read credential and secret metadata      | yes                     | yes                       |
| change an org-scoped credential          | yes                     | no                        |
| change a user-scoped credential          | for any user of the org | only its own (`user`=self)|
| create or delete a secret                | yes                     | no                        |
| users                                    | yes                     | no                        |
| API keys                                 | any user of the org     | only their own            |
| create or revoke workspaces; list them   | any user of the org     | only their own            |
| decisions                                | the whole org           | their own workspaces      |
| audit events                             | the whole org           | no                        |
| read roles, check a caps file            | yes                     | yes                       |

`allow(principal, action, owner=...)` raises Forbidden when the row says no; `owner` is
the user the object belongs to (None for org-scoped objects). `scope(principal, action)`
is the user a listing is restricted to (None: the whole org). The org is never an input:
every call acts in `principal.org_id`.
"""

from __future__ import annotations

from enum import StrEnum

from .errors import Forbidden
from .identity import Principal


class Action(StrEnum):
    READ_METADATA = "read_metadata"
    CHANGE_CREDENTIAL = "change_credential"
    CHANGE_SECRET = "change_secret"
    MANAGE_USERS = "manage_users"
    MANAGE_API_KEYS = "manage_api_keys"
    MANAGE_WORKSPACES = "manage_workspaces"
    READ_DECISIONS = "read_decisions"
    READ_AUDIT = "read_audit"
    READ_ROLES = "read_roles"


class Reach(StrEnum):
    ALL = "all"  # any object of the org
    OWN = "own"  # only objects whose owner is the caller
    NONE = "none"


# action -> (operator, member)
POLICY: dict[Action, tuple[Reach, Reach]] = {
    Action.READ_METADATA: (Reach.ALL, Reach.ALL),
    Action.CHANGE_CREDENTIAL: (Reach.ALL, Reach.OWN),
    Action.CHANGE_SECRET: (Reach.ALL, Reach.NONE),
    Action.MANAGE_USERS: (Reach.ALL, Reach.NONE),
    Action.MANAGE_API_KEYS: (Reach.ALL, Reach.OWN),
    Action.MANAGE_WORKSPACES: (Reach.ALL, Reach.OWN),
    Action.READ_DECISIONS: (Reach.ALL, Reach.OWN),
    Action.READ_AUDIT: (Reach.ALL, Reach.NONE),
    Action.READ_ROLES: (Reach.ALL, Reach.ALL),
}


def reach(principal: Principal, action: Action) -> Reach:
    operator, member = POLICY[action]
    return operator if principal.operator else member


def allow(principal: Principal, action: Action, *, owner: str | None = None) -> None:
    """Raise Forbidden unless `principal` may do `action` to an object owned by `owner`
    (a user name; None for org-scoped objects)."""
    granted = reach(principal, action)
    if granted is Reach.ALL:
        return
    if granted is Reach.OWN and owner is not None and owner == principal.user:
        return
    raise Forbidden(_refusal(principal, action, owner))


def scope(principal: Principal, action: Action) -> str | None:
    """The user a listing is limited to (None: the whole org); Forbidden if none at all."""
    granted = reach(principal, action)
    if granted is Reach.ALL:
        return None
    if granted is Reach.OWN:
        return principal.user
    raise Forbidden(_refusal(principal, action, None))


def _refusal(principal: Principal, action: Action, owner: str | None) -> str:
    if reach(principal, action) is Reach.NONE:
        return f"a {principal.role} may not {action.value.replace('_', ' ')}"
    what = "org-scoped objects" if owner is None else "another user's objects"
    return f"a {principal.role} may not {action.value.replace('_', ' ')} of {what}"
