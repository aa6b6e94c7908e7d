"""Request and response bodies of the JSON API (the OpenAPI document is built from them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Unknown fields are field errors (422), not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Me(BaseModel):
    user: str
    org: str
    role: Literal["operator", "member"]
    csrf_token: str | None = None


class Credential(BaseModel):
    id: str
    name: str
    user: str | None
    provider: str
    kind: str
    scopes: list[str]
    provider_config: dict[str, str]
    status: str
    last_minted_at: str | None
    last_minted_status: str | None
    allow_user_override: bool
    created_at: str
    updated_at: str


class CredentialList(BaseModel):
    credentials: list[Credential]


class CredentialCreate(Strict):
    name: str = Field(max_length=256)
    provider: str = Field(max_length=128)
    kind: str = Field(max_length=128)
    user: str | None = Field(default=None, max_length=256)
    scopes: list[str] = Field(default_factory=list, max_length=100)
    config: dict[str, str] = Field(default_factory=dict, max_length=50)
    allow_user_override: bool = False
    value: str | None = Field(default=None, max_length=65536)
    client_secret: str | None = Field(default=None, max_length=65536)
    verify: bool = False


class CredentialValue(Strict):
    value: str | None = Field(default=None, max_length=65536)
    client_secret: str | None = Field(default=None, max_length=65536)


class VerifyResult(BaseModel):
    ok: bool
    status: int | None
    call: str


class OAuthStart(Strict):
    return_to: str | None = Field(default=None, max_length=2048)


class OAuthStarted(BaseModel):
    authorization_url: str
    expires_at: str


class Secret(BaseModel):
    name: str
    created_at: str
    updated_at: str


class SecretList(BaseModel):
    secrets: list[Secret]


class SecretCreate(Strict):
    name: str = Field(max_length=256)
    value: str = Field(max_length=65536)


class User(BaseModel):
    name: str
    role: Literal["operator", "member"]
    email: str | None


class UserList(BaseModel):
    users: list[User]


class UserCreate(Strict):
    name: str = Field(max_length=256)
    role: Literal["operator", "member"] = "member"
    email: str | None = Field(default=None, max_length=320)


class ApiKey(BaseModel):
    id: str
    user: str
    name: str | None
    prefix: str
    created_at: str
    expires_at: str | None
    last_used_at: str | None


class ApiKeyList(BaseModel):
    api_keys: list[ApiKey]


class ApiKeyCreate(Strict):
    name: str | None = Field(default=None, max_length=256)
    expires_in_s: int | None = Field(default=None, ge=1, le=10 * 365 * 86400)
    user: str | None = Field(default=None, max_length=256)


class ApiKeyCreated(BaseModel):
    id: str
    token: str
    user: str
    name: str | None
    expires_at: str | None


class Workspace(BaseModel):
    id: str
    role: str
    user: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None


class WorkspaceList(BaseModel):
    workspaces: list[Workspace]


class WorkspaceCreate(Strict):
    role: str = Field(max_length=256)
    user: str | None = Field(default=None, max_length=256)
    ttl_s: int | None = Field(default=None, ge=1, le=10 * 365 * 86400)


class Preflight(BaseModel):
    missing_credentials: list[str]
    missing_secrets: list[str]


class WorkspaceCreated(BaseModel):
    id: str
    token: str
    role: str
    user: str
    expires_at: str | None
    preflight: Preflight


class RoleCapability(BaseModel):
    name: str
    hosts: list[str]
    credentials: list[str]
    secrets: list[str]


class Role(BaseModel):
    name: str
    capabilities: list[RoleCapability]
    missing_credentials: list[str]
    missing_secrets: list[str]


class RoleList(BaseModel):
    roles: list[Role]


class CapsProblem(BaseModel):
    file: str | None
    line: int | None
    column: int | None
    message: str


class CapsCheck(BaseModel):
    valid: bool
    errors: list[CapsProblem]
    capabilities: list[str]
    roles: dict[str, list[str]]
    credentials: list[str]
    secrets: list[str]
    warnings: list[str]


class Decision(BaseModel):
    model_config = ConfigDict(extra="allow")  # later columns (seq, chain) pass through

    id: int
    at: float
    org_id: str | None
    workspace_id: str | None
    capability: str | None
    decision: str
    reason: str | None
    method: str | None
    scheme: str | None
    host: str | None
    port: int | None
    path: str | None
    transforms_applied: list[str]
    transforms_failed: dict[str, str]
    auth_failures: dict[str, str]
    upstream_status: int | None
    duration_ms: float | None


class DecisionPage(BaseModel):
    decisions: list[Decision]
    next: str | None


class AuditEvent(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    at: str
    actor: str | None
    action: str
    target_type: str | None
    target_name: str | None
    from_status: str | None = None
    to_status: str | None = None
    reason: str | None = None


class AuditPage(BaseModel):
    events: list[AuditEvent]
    next: str | None


class Health(BaseModel):
    ok: bool
