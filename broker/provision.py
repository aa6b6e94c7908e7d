"""Creating an agent's workspace in one call: the org and user on first use, the role
checked against the caps file, the lease.

What `capgate exec`, `capgate env` and `workspace create` do, and what the control plane
will do for `POST /v1/workspaces`; kept here so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from .errors import CapgateError, FieldError, InvalidInput, NotFound
from .store import check_name
from .stores import Stores
from .workspaces import WorkspaceRow, check_ttl


@dataclass(frozen=True)
class Provisioned:
    workspace: WorkspaceRow
    token: str  # shown once
    added_user: bool  # the user did not exist and was created


def check_role(role: str, known_roles: Collection[str] | None) -> None:
    """InvalidInput when `known_roles` (the caps file's roles) is given and lacks `role`."""
    check_name("role", role)
    if known_roles is not None and role not in known_roles:
        defined = ", ".join(sorted(known_roles)) or "none"
        raise InvalidInput(
            [FieldError("role", f"{role!r} is not defined in the caps file (roles: {defined})")]
        )


def provision_workspace(
    stores: Stores,
    org: str,
    role: str,
    user: str,
    *,
    ttl_s: int | None = None,
    known_roles: Collection[str] | None = None,
    add_user: bool = False,
    actor: str | None = None,
) -> Provisioned:
    """Create a workspace (and its token) for `user` in `org`.

    Every input is checked before anything is written. `add_user` creates a user not seen
    before (exec's everyday path); otherwise an unknown user is NotFound. The org is
    created on first use.
    """
    check_role(role, known_roles)
    check_name("user", user)
    check_ttl(ttl_s)
    new_org = stores.control.find_org_id(org) is None
    org_id = stores.control.org_id(org, create=True)
    try:
        added = False
        try:
            stores.workspaces.get_user(org_id, user)
        except NotFound:
            if not add_user:
                raise
            stores.workspaces.add_user(org_id, user, actor=actor)
            added = True
        workspace, token = stores.workspaces.create(org_id, role, user, ttl_s=ttl_s)
    except CapgateError:
        if new_org:  # a rejected call writes nothing
            stores.control.drop_org_if_unused(org_id)
        raise
    return Provisioned(workspace, token, added)
