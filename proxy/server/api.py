"""The `/v1` JSON API: thin handlers over broker/, every action through broker.access.

Each handler authenticates (auth.Caller), asks the policy (`access.allow` / `access.scope`),
calls one broker operation in the caller's org, and shapes the answer. Objects are always
looked up in `caller.org_id`, so another org's id reads exactly like a missing one (404).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from capgate.broker import access, audit, capsrefs, decisions, provision
from capgate.broker.access import Action
from capgate.broker.credential_rows import CredentialRow, CredentialSpec, public_json
from capgate.broker.errors import FieldError, InvalidInput, NotFound
from capgate.broker.identity import Principal
from capgate.broker.secretvalue import SecretValue
from capgate.caps import CapsError, parse_caps

from . import models
from .auth import Caller, Ctx
from .context import ServerContext
from .errors import ERROR_RESPONSES, ApiError

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)

MAX_PAGE = 1000


# --- helpers ----------------------------------------------------------------------------


def _secret(value: str | None) -> SecretValue | None:
    return None if value is None or value == "" else SecretValue(value)


def _credential(ctx: ServerContext, caller: Principal, credential_id: str) -> CredentialRow:
    """A credential of the caller's org by id; NotFound for other orgs' ids too."""
    try:
        row = ctx.stores.credentials.get_by_id(credential_id)
    except NotFound:
        raise
    if row.org_id != caller.org_id:
        raise NotFound("credential not found")
    return row


def _known_user(ctx: ServerContext, caller: Principal, user: str | None, field: str) -> str:
    """The user a request names (the caller when omitted); a field error if not in the org."""
    if user is None:
        return caller.user
    try:
        ctx.stores.workspaces.get_user(caller.org_id, user)
    except NotFound:
        raise InvalidInput([FieldError(field, "no such user in the org")]) from None
    return user


def _cursor(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit() or len(value) > 18:
        raise ApiError(400, "bad_request", "after: not a cursor of this listing")
    return int(value)


Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]


# --- who am I ---------------------------------------------------------------------------


@router.get("/me", response_model=models.Me, response_model_exclude_none=True)
def me(caller: Caller) -> dict[str, Any]:
    body: dict[str, Any] = {"user": caller.user, "org": caller.org, "role": caller.role}
    if caller.via == "session":
        body["csrf_token"] = caller.csrf_token
    return body


# --- credentials ------------------------------------------------------------------------


@router.get("/credentials", response_model=models.CredentialList)
def list_credentials(caller: Caller, ctx: Ctx) -> dict[str, Any]:
    access.allow(caller, Action.READ_METADATA)
    rows = ctx.stores.credentials.list_credentials(caller.org_id)
    return {"credentials": [public_json(r) for r in rows]}


@router.post("/credentials", status_code=201, response_model=models.Credential)
def create_credential(body: models.CredentialCreate, caller: Caller, ctx: Ctx) -> dict[str, Any]:
    access.allow(caller, Action.CHANGE_CREDENTIAL, owner=body.user)
    spec = CredentialSpec(
        name=body.name,
        provider=body.provider,
        kind=body.kind,
        user=body.user,
        scopes=tuple(body.scopes),
        provider_config=dict(body.config),
        allow_user_override=body.allow_user_override,
    )
    if body.user is not None:
        _known_user(ctx, caller, body.user, "user")
    value = _secret(body.value)
    client_secret = _secret(body.client_secret)
    try:
        if body.verify:
            value = ctx.verifier.check_before_create(caller.org_id, spec, value, client_secret)
        row = ctx.stores.credentials.add(
            caller.org_id, spec, value, client_secret=client_secret, actor=caller.actor()
        )
    except InvalidInput as exc:
        raise _api_fields(exc) from None
    return public_json(row)


# The broker names fields after the CLI's flags where they differ from the API's body.
_API_FIELDS = {"scope": "scopes"}


def _api_fields(exc: InvalidInput) -> InvalidInput:
    return InvalidInput(
        [FieldError(_API_FIELDS.get(e.field, e.field), e.message) for e in exc.errors]
    )


@router.get("/credentials/{credential_id}", response_model=models.Credential)
def get_credential(credential_id: str, caller: Caller, ctx: Ctx) -> dict[str, Any]:
    access.allow(caller, Action.READ_METADATA)
    return public_json(_credential(ctx, caller, credential_id))


@router.delete("/credentials/{credential_id}", status_code=204)
def delete_credential(credential_id: str, caller: Caller, ctx: Ctx) -> Response:
    row = _credential(ctx, caller, credential_id)
    access.allow(caller, Action.CHANGE_CREDENTIAL, owner=row.user)
    ctx.stores.credentials.delete(caller.org_id, row.name, row.user, actor=caller.actor())
    return Response(status_code=204)


@router.put("/credentials/{credential_id}/value", response_model=models.Credential)
def put_credential_value(
    credential_id: str, body: models.CredentialValue, caller: Caller, ctx: Ctx
) -> dict[str, Any]:
    row = _credential(ctx, caller, credential_id)
    access.allow(caller, Action.CHANGE_CREDENTIAL, owner=row.user)
    updated = ctx.stores.credentials.update(
        caller.org_id,
        row.name,
        row.user,
        _secret(body.value),
        client_secret=_secret(body.client_secret),
        actor=caller.actor(),
    )
    return public_json(updated)


@router.post("/credentials/{credential_id}/verify", response_model=models.VerifyResult)
def verify_credential(credential_id: str, caller: Caller, ctx: Ctx) -> dict[str, Any]:
    row = _credential(ctx, caller, credential_id)
    access.allow(caller, Action.CHANGE_CREDENTIAL, owner=row.user)
    return ctx.verifier.verify_stored(row).to_json()


@router.post("/credentials/{credential_id}/oauth/start", response_model=models.OAuthStarted)
def oauth_start(
    credential_id: str, caller: Caller, ctx: Ctx, body: models.OAuthStart | None = None
) -> dict[str, Any]:
    row = _credential(ctx, caller, credential_id)
    access.allow(caller, Action.CHANGE_CREDENTIAL, owner=row.user)
    started = ctx.stores.consents.start(
        row,
        user_id=caller.user_id,
        redirect_uri=ctx.redirect_uri,
        endpoints=ctx.endpoints,
        return_to=body.return_to if body else None,
    )
    return {"authorization_url": started.authorization_url, "expires_at": started.expires_at}


# --- secrets ----------------------------------------------------------------------------


@router.get("/secrets", response_model=models.SecretList)
def list_secrets(caller: Caller, ctx: Ctx) -> dict[str, Any]:
    access.allow(caller, Action.READ_METADATA)
    rows = ctx.stores.secrets.list_secrets(caller.org_id)
    return {
        "secrets": [
            {"name": r.name, "created_at": r.created_at, "updated_at": r.updated_at} for r in rows
        ]
    }


@router.post("/secrets", status_code=201, response_model=models.Secret)
def create_secret(body: models.SecretCreate, caller: Caller, ctx: Ctx) -> dict[str, Any]:
    access.allow(caller, Action.CHANGE_SECRET)
    row = ctx.stores.secrets.set(
        caller.org_id, body.name, SecretValue(body.value), actor=caller.actor()
    )
    return {"name": row.name, "created_at": row.created_at, "updated_at": row.updated_at}


@router.delete("/secrets/{name}", status_code=204)
def delete_secret(name: str, caller: Caller, ctx: Ctx) -> Response:
    access.allow(caller, Action.CHANGE_SECRET)
    ctx.stores.secrets.delete(caller.org_id, name, actor=caller.actor())
    return Response(status_code=204)


# --- users ------------------------------------------------------------------------------


@router.get("/users", response_model=models.UserList)
def list_users(caller: Caller, ctx: Ctx) -> dict[str, Any]:
    access.allow(caller, Action.MANAGE_USERS)
    rows = ctx.stores.workspaces.list_users(caller.org_id)
    return {"users": [{"name": r.name, "role": r.role, "email": r.email} for r in rows]}


@router.post("/users", status_code=201, response_model=models.User)
def create_user(body: models.UserCreate, caller: Caller, ctx: Ctx) -> dict[str, Any]:
    access.allow(caller, Action.MANAGE_USERS)
    row = ctx.stores.workspaces.add_user(
        caller.org_id,
        body.name,
        operator=body.role == "operator",
        email=body.email,
        actor=caller.actor(),
    )
    return {"name": row.name, "role": row.role, "email": row.email}


# --- API keys ---------------------------------------------------------------------------


@router.get("/api-keys", response_model=models.ApiKeyList)
def list_api_keys(caller: Caller, ctx: Ctx) -> dict[str, Any]:
    only = access.scope(caller, Action.MANAGE_API_KEYS)
    user_id = caller.user_id if only is not None else None
    rows = ctx.stores.api_keys.list(caller.org_id, user_id=user_id)
    return {"api_keys": [r.to_json() for r in rows]}


@router.post("/api-keys", status_code=201, response_model=models.ApiKeyCreated)
def create_api_key(body: models.ApiKeyCreate, caller: Caller, ctx: Ctx) -> dict[str, Any]:
    access.allow(caller, Action.MANAGE_API_KEYS, owner=body.user or caller.user)
    user = _known_user(ctx, caller, body.user, "user")
    row, token = ctx.stores.api_keys.create(
        caller.org_id, user, name=body.name, expires_in_s=body.expires_in_s, actor=caller.actor()
    )
    return {
        "id": row.id,
        "token": token,
        "user": row.user,
        "name": row.name,
        "expires_at": row.expires_at,
    }


@router.delete("/api-keys/{key_id}", status_code=204)
def revoke_api_key(key_id: str, caller: Caller, ctx: Ctx) -> Response:
    row, _ = ctx.stores.api_keys.get(caller.org_id, key_id)
    access.allow(caller, Action.MANAGE_API_KEYS, owner=row.user)
    ctx.stores.api_keys.revoke(caller.org_id, key_id, actor=caller.actor())
    return Response(status_code=204)


# --- workspaces -------------------------------------------------------------------------


def _workspace_json(ws: Any) -> dict[str, Any]:
    return {
        "id": ws.id,
        "role": ws.role,
        "user": ws.user,
        "created_at": ws.created_at,
        "expires_at": ws.expires_at,
        "revoked_at": ws.revoked_at,
    }


@router.get("/workspaces", response_model=models.WorkspaceList)
def list_workspaces(caller: Caller, ctx: Ctx) -> dict[str, Any]:
    only = access.scope(caller, Action.MANAGE_WORKSPACES)
    rows = ctx.stores.workspaces.list_workspaces(caller.org_id)
    if only is not None:
        rows = [r for r in rows if r.user_id == caller.user_id]
    return {"workspaces": [_workspace_json(r) for r in rows]}


@router.post("/workspaces", status_code=201, response_model=models.WorkspaceCreated)
def create_workspace(body: models.WorkspaceCreate, caller: Caller, ctx: Ctx) -> dict[str, Any]:
    access.allow(caller, Action.MANAGE_WORKSPACES, owner=body.user or caller.user)
    user = _known_user(ctx, caller, body.user, "user")
    configs = ctx.caps.configs()
    known = capsrefs.role_names(configs) if ctx.caps.paths else None
    provision.check_role(body.role, known)
    owner = ctx.stores.workspaces.get_user(caller.org_id, user)
    missing = capsrefs.preflight(ctx.stores, configs, caller.org_id, owner.id, body.role)
    made = provision.provision_workspace(
        ctx.stores, caller.org, body.role, user, ttl_s=body.ttl_s, known_roles=known
    )
    ws = made.workspace
    return {
        "id": ws.id,
        "token": made.token,
        "role": ws.role,
        "user": ws.user,
        "expires_at": ws.expires_at,
        "preflight": missing.to_json(),
    }


@router.delete("/workspaces/{workspace_id}", status_code=204)
def revoke_workspace(workspace_id: str, caller: Caller, ctx: Ctx) -> Response:
    ws = ctx.stores.workspaces.get(caller.org_id, workspace_id)
    access.allow(caller, Action.MANAGE_WORKSPACES, owner=ws.user)
    ctx.stores.workspaces.revoke(caller.org_id, workspace_id, actor=caller.actor())
    return Response(status_code=204)


# --- roles and caps ---------------------------------------------------------------------


@router.get("/roles", response_model=models.RoleList)
def list_roles(caller: Caller, ctx: Ctx) -> dict[str, Any]:
    access.allow(caller, Action.READ_ROLES)
    configs = ctx.caps.configs()
    roles = []
    for name in capsrefs.role_names(configs):
        capabilities, credentials, secrets = capsrefs.role_references(configs, name)
        missing = capsrefs.missing_for(
            ctx.stores, caller.org_id, caller.user_id, credentials, secrets
        )
        roles.append({"name": name, "capabilities": capabilities, **missing.to_json()})
    return {"roles": roles}


@router.post(
    "/caps/check",
    response_model=models.CapsCheck,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def caps_check(request: Request, caller: Caller, ctx: Ctx) -> dict[str, Any]:
    access.allow(caller, Action.READ_ROLES)
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "the body must be caps.yaml text in UTF-8") from None
    try:
        config = parse_caps(text, "caps.yaml")
    except CapsError as exc:
        return capsrefs.invalid_summary(exc)
    from starlette.concurrency import run_in_threadpool

    warnings = await run_in_threadpool(
        capsrefs.org_warnings, config, ctx.stores, caller.org_id, caller.org
    )
    return capsrefs.summary(config, warnings)


# --- decisions and audit ----------------------------------------------------------------


@router.get("/decisions", response_model=models.DecisionPage)
def list_decisions(
    caller: Caller,
    ctx: Ctx,
    workspace: Annotated[str | None, Query(max_length=128)] = None,
    limit: Limit = 100,
    after: Annotated[str | None, Query(max_length=32)] = None,
) -> dict[str, Any]:
    only = access.scope(caller, Action.READ_DECISIONS)
    cursor = _cursor(after)
    if workspace is not None:  # another org's workspace reads like a missing one: 404
        ws = ctx.stores.workspaces.get(caller.org_id, workspace)
        access.allow(caller, Action.READ_DECISIONS, owner=ws.user)
    rows = decisions.page(
        ctx.stores.control,
        caller.org_id,
        workspace_id=workspace,
        user_id=caller.user_id if only is not None else None,
        after=cursor,
        limit=limit,
    )
    last = rows[-1].id if rows else cursor
    return {
        "decisions": [r.to_json() for r in rows],
        "next": None if last is None else str(last),
    }


@router.get("/audit", response_model=models.AuditPage)
def list_audit(
    caller: Caller,
    ctx: Ctx,
    limit: Limit = 100,
    after: Annotated[str | None, Query(max_length=32)] = None,
) -> dict[str, Any]:
    access.scope(caller, Action.READ_AUDIT)
    cursor = _cursor(after)
    events = audit.page(ctx.stores.control, caller.org_id, after=cursor, limit=limit)
    last = events[-1].id if events else cursor
    body = []
    for event in events:
        data = event.to_json()
        data.pop("org_id", None)
        body.append(data)
    return {"events": body, "next": None if last is None else str(last)}
