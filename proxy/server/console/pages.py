"""The console's pages: server-rendered HTML over the very handlers of the JSON API.

Every read and every change goes through the `/v1` handler functions of api.py (called
directly, with the signed-in principal), so the console has no rules of its own: the role
policy, the org boundary, validation and audit are the API's. A page is only shaping: it
turns the handler's answer into HTML and its refusals into field errors beside the field.

Forms work without JavaScript and carry the session's CSRF token (`csrf_token`); a
state-changing request without it is refused (403 `{"error": "csrf"}`) before anything
runs. A value (an API key, a client secret, a secret) is accepted by a write-only field
and never rendered back, not even after a field error.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from capgate.broker import access, audit, capsrefs
from capgate.broker.access import Action
from capgate.broker.client_ids import client_id_problem
from capgate.broker.errors import CapgateError, Forbidden, InvalidInput, NotFound
from capgate.broker.identity import Principal
from capgate.broker.providers import (
    MICROSOFT_CLOUDS,
    PROVIDER_SLUGS,
    PROVIDERS,
    USER_SCOPABLE_KINDS,
    Kind,
    accepted_config,
    required_config,
)

from .. import api, models
from ..auth import check_csrf, session_principal
from ..context import ServerContext, context
from ..errors import ApiError, broker_error
from .chips import Chip, auth_providers, chips
from .render import STATIC, STATIC_TYPES, origin, query, render, secure_headers

CONSENT = Kind.OAUTH2_AUTHORIZATION_CODE.value
# Settings the wizard does not offer: written by capgate itself (client_secret_ref), or
# accepted but not used yet (redirect_uri: the redirect is always {public-url}/oauth/callback).
INTERNAL_CONFIG = frozenset({"client_secret_ref", "redirect_uri"})
KIND_LABELS = {
    "api_key": "API key (a header)",
    "basic_auth": "Basic auth (username and password or token)",
    "query_api_key": "API key (a query parameter)",
    "oauth2_client_credentials": "OAuth client credentials (app-only)",
    "oauth2_authorization_code": "OAuth consent (Connect a user's account)",
    "oauth2_jwt_bearer": "Service account (JWT bearer)",
    "oauth2_jwt_bearer_with_subject": "Service account acting as a user (JWT bearer)",
}
VALUE_LABELS = {
    "api_key": "API key",
    "basic_auth": "Password or token",
    "query_api_key": "API key",
    "oauth2_client_credentials": "Client secret",
    "oauth2_authorization_code": "Refresh token (optional: leave empty and Connect instead)",
    "oauth2_jwt_bearer": "Service-account key (JSON)",
    "oauth2_jwt_bearer_with_subject": "Service-account key (JSON)",
}
TTL_CHOICES: tuple[tuple[str, str], ...] = (
    ("", "No expiry"),
    ("3600", "1 hour"),
    ("28800", "8 hours"),
    ("86400", "1 day"),
    ("604800", "7 days"),
)
DECISION_CHOICES = ("allow", "deny")
DEFAULT_PROXY = "http://127.0.0.1:8080"


# --- plumbing -----------------------------------------------------------------------------


class _SignIn(Exception):
    """No console session: answer with the sign-in page."""


async def _caller(request: Request) -> Principal:
    found = await session_principal(request)
    if found is None:
        raise _SignIn()
    return found


async def _posted(request: Request) -> tuple[Principal, FormData]:
    """The signed-in caller of a form POST, after its CSRF token was checked."""
    caller = await _caller(request)
    await check_csrf(request, caller)  # 403 {"error": "csrf"} before anything runs
    return caller, await request.form()


NOTICE_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")


def _notice_name(request: Request, key: str) -> str:
    """The name a "Deleted X" notice after a redirect shows: a plain name or nothing (a
    crafted link cannot put other words on the page)."""
    value = request.query_params.get(key, "")
    return value if NOTICE_NAME.match(value) else ""


def _text(form: FormData, key: str) -> str:
    value = form.get(key)
    return value.strip() if isinstance(value, str) else ""


def _secret_text(form: FormData, key: str) -> str | None:
    """A write-only value exactly as typed (no stripping of inner content); None if empty."""
    value = form.get(key)
    if not isinstance(value, str) or value.strip() == "":
        return None
    return value.strip("\r\n")


async def _call[T](fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    return await run_in_threadpool(fn, *args, **kw)


def _ctx(request: Request) -> ServerContext:
    return context(request)


def _may(caller: Principal, action: Action, owner: str | None = None) -> bool:
    try:
        access.allow(caller, action, owner=owner)
    except Forbidden:
        return False
    return True


def form_origins(ctx: ServerContext) -> set[str]:
    """Where a form on our pages may end up: the providers' authorization endpoints (Connect
    posts to us, and we redirect there), overrides included."""
    found: set[str] = set()
    for provider in PROVIDERS.values():
        if Kind.OAUTH2_AUTHORIZATION_CODE not in provider.kinds:
            continue
        clouds = MICROSOFT_CLOUDS if provider.slug == "microsoft" else {"global": None}
        for cloud in clouds:
            try:
                url = ctx.endpoints.authorize_url(provider, {"cloud": cloud, "tenant_id": "t"})
            except (ValueError, KeyError):
                continue
            if (o := origin(url)) is not None:
                found.add(o)
    return found


def _page(request: Request, template: str, caller: Principal | None, **values: Any) -> Response:
    return render(template, caller=caller, form_origins=form_origins(_ctx(request)), **values)


def _error_page(request: Request, caller: Principal | None, exc: Exception) -> Response:
    err = exc if isinstance(exc, ApiError) else broker_error(exc)  # type: ignore[arg-type]
    titles = {403: "Not allowed", 404: "Not found", 409: "Conflict", 422: "Not valid"}
    return _page(
        request,
        "error.html",
        caller,
        status=err.status if err.status >= 400 else 400,
        title=titles.get(err.status, "Something went wrong"),
        message=err.message if err.status != 404 else "There is nothing here.",
        fields=err.fields,
    )


def _field_errors(exc: Exception) -> dict[str, str]:
    """field -> message, from a broker InvalidInput, an ApiError or a pydantic error."""
    if isinstance(exc, InvalidInput):
        return {e.field: e.message for e in exc.errors}
    if isinstance(exc, ApiError):
        return {f["field"]: f["message"] for f in exc.fields} or {"": exc.message}
    if isinstance(exc, ValidationError):
        out = {}
        for error in exc.errors():
            loc = [str(p) for p in error.get("loc", ())]
            name = loc[0] if loc else ""
            if name == "config" and len(loc) > 1:
                name = f"config.{loc[1]}"
            out[name] = str(error.get("msg", "invalid"))[:200]
        return out
    if isinstance(exc, CapgateError):
        err = broker_error(exc)
        return {f["field"]: f["message"] for f in err.fields} or {"": err.message}
    return {"": "the request could not be completed"}


def _sign_in_page(request: Request) -> Response:
    ctx = _ctx(request)
    return render(
        "signin.html",
        caller=None,
        status=401,
        sso=ctx.oidc is not None,
        form_origins=form_origins(ctx),
    )


class ConsoleRoute(APIRoute):
    """A console route: no session answers the sign-in page; a refusal or a missing object
    answers an HTML error page (a CSRF refusal stays the API's 403 `{"error": "csrf"}`)."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await original(request)
            except _SignIn:
                return _sign_in_page(request)
            except CapgateError as exc:
                caller = await session_principal(request)
                return _error_page(request, caller, exc)
            except ApiError as exc:
                if exc.code == "csrf":
                    raise
                caller = await session_principal(request)
                return _error_page(request, caller, exc)

        return handler


router = APIRouter(include_in_schema=False, route_class=ConsoleRoute)


# --- static -------------------------------------------------------------------------------


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        raise ApiError(404, "not_found", "not found")
    response = Response(STATIC[name], media_type=STATIC_TYPES[name])
    response.headers["Cache-Control"] = "public, max-age=3600"
    return secure_headers(response)


# --- credentials --------------------------------------------------------------------------


def _visible(caller: Principal, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A member's own view: the org's credentials and their own user-scoped ones."""
    if caller.operator:
        return rows
    return [r for r in rows if r["user"] is None or r["user"] == caller.user]


@router.get("/credentials")
async def credentials_page(request: Request) -> Response:
    caller = await _caller(request)
    listed = await _call(api.list_credentials, caller, _ctx(request))
    rows = _visible(caller, listed["credentials"])
    rows.sort(key=lambda r: (r["name"], r["user"] or ""))
    return _page(
        request,
        "credentials.html",
        caller,
        section="credentials",
        credentials=rows,
        deleted=_notice_name(request, "deleted"),
        may_create=True,
    )


def _wizard_state(caller: Principal, params: dict[str, str]) -> dict[str, Any]:
    """Which step the wizard is on, and the choices offered there."""
    providers = [
        p
        for p in PROVIDER_SLUGS
        if caller.operator or Kind.OAUTH2_AUTHORIZATION_CODE in PROVIDERS[p].kinds
    ]
    provider = params.get("provider", "")
    kind = params.get("kind", "")
    state: dict[str, Any] = {
        "providers": providers,
        "provider": provider if provider in providers else "",
        "kinds": [],
        "kind": "",
        "fields": [],
        "step": 1,
    }
    if not state["provider"]:
        return state
    spec = PROVIDERS[provider]
    kinds = sorted(k.value for k in spec.kinds if caller.operator or k in USER_SCOPABLE_KINDS)
    state["kinds"] = kinds
    if kind not in kinds:
        kind = kinds[0] if len(kinds) == 1 else ""
    state["step"] = 2
    if not kind:
        return state
    state["kind"] = kind
    state["step"] = 3
    kind_enum = Kind(kind)
    required = required_config(spec, kind_enum)
    offered = accepted_config(spec, kind_enum) - INTERNAL_CONFIG
    keys = sorted(offered, key=lambda k: (k not in required, k))
    state["fields"] = [
        {
            "key": key,
            "required": key in required,
            "choices": list(MICROSOFT_CLOUDS) if key == "cloud" else None,
        }
        for key in keys
    ]
    state["user_scopable"] = kind_enum in USER_SCOPABLE_KINDS
    state["consent"] = kind == CONSENT
    state["value_label"] = VALUE_LABELS.get(kind, "Value")
    state["default_username"] = spec.default_username
    return state


async def _wizard(
    request: Request,
    caller: Principal,
    params: dict[str, str],
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    ctx = _ctx(request)
    state = _wizard_state(caller, params)
    errors = _unplaced(errors or {}, state)
    users: list[str] = []
    if caller.operator and state.get("user_scopable"):
        listed = await _call(api.list_users, caller, ctx)
        users = [u["name"] for u in listed["users"]]
    return _page(
        request,
        "credential_new.html",
        caller,
        status=status,
        section="credentials",
        w=state,
        values=params,
        errors=errors,
        users=users,
        kind_labels=KIND_LABELS,
    )


def _unplaced(errors: dict[str, str], state: dict[str, Any]) -> dict[str, str]:
    """Errors for fields this step does not show (a kind the provider does not take, an
    unknown setting) go to the top of the form instead of nowhere."""
    if state["step"] < 3:
        shown = {"provider"} if state["step"] == 1 else set()
    else:
        shown = {"name", "value", "client_secret", "scopes"}
        shown |= {f"config.{f['key']}" for f in state["fields"]}
        if state.get("user_scopable"):
            shown.add("user")
    kept = {k: v for k, v in errors.items() if k in shown}
    loose = [f"{k}: {v}" if k else v for k, v in errors.items() if k not in shown]
    if loose:
        kept[""] = "; ".join(loose)
    return kept


@router.get("/credentials/new")
async def credential_new(request: Request) -> Response:
    caller = await _caller(request)
    keep = ("name", "provider", "kind", "user", "scopes")
    params = {k: request.query_params.get(k, "")[:256] for k in keep}
    for key, value in request.query_params.items():
        if key.startswith("config.") and len(key) < 80:
            params[key] = value[:512]
    if not caller.operator:
        params["user"] = caller.user  # a member may create only their own credentials
    return await _wizard(request, caller, params)


def _split_scopes(text: str) -> list[str]:
    return [s for s in text.replace(",", " ").split() if s]


@router.post("/credentials/new")
async def credential_create(request: Request) -> Response:
    caller, form = await _posted(request)
    ctx = _ctx(request)
    params = {k: _text(form, k) for k in ("name", "provider", "kind", "user", "scopes")}
    if not caller.operator:
        params["user"] = params["user"] or caller.user
    config = {}
    for key, value in form.multi_items():
        if key.startswith("config.") and isinstance(value, str) and value.strip():
            config[key.removeprefix("config.")] = value.strip()
            params[key] = value.strip()
    params["allow_user_override"] = "on" if _text(form, "allow_user_override") else ""
    errors: dict[str, str] = {}
    for required in ("name", "provider", "kind"):
        if not params[required]:
            errors[required] = "required"
    if "client_id" in config and params["provider"]:
        problem = client_id_problem(params["provider"], config["client_id"])
        if problem:
            errors["config.client_id"] = problem
    if errors:
        return await _wizard(request, caller, params, errors, status=422)
    try:
        body = models.CredentialCreate(
            name=params["name"],
            provider=params["provider"],
            kind=params["kind"],
            user=params["user"] or None,
            scopes=_split_scopes(params["scopes"]),
            config=config,
            allow_user_override=bool(params["allow_user_override"]),
            value=_secret_text(form, "value"),
            client_secret=_secret_text(form, "client_secret"),
        )
        made = await _call(api.create_credential, body, caller, ctx)
    except (ValidationError, CapgateError, ApiError) as exc:
        if isinstance(exc, Forbidden):
            return _error_page(request, caller, exc)
        return await _wizard(request, caller, params, _field_errors(exc), status=422)
    if made["kind"] == CONSENT and made["status"] != "active":
        return await _connect(request, caller, made["id"])
    return RedirectResponse(f"/credentials/{made['id']}?created=1", status_code=303)


async def _connect(request: Request, caller: Principal, credential_id: str) -> Response:
    """Start the hosted consent and send the browser to the provider."""
    started = await _call(api.oauth_start, credential_id, caller, _ctx(request), None)
    return RedirectResponse(started["authorization_url"], status_code=303)


async def _credential_view(
    request: Request,
    caller: Principal,
    credential_id: str,
    *,
    verified: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    try:
        row = await _call(api.get_credential, credential_id, caller, _ctx(request))
    except CapgateError as exc:
        return _error_page(request, caller, exc)
    if not caller.operator and row["user"] not in (None, caller.user):
        return _error_page(request, caller, NotFound("credential not found"))
    flags = request.query_params
    return _page(
        request,
        "credential.html",
        caller,
        status=status,
        section="credentials",
        c=row,
        may_change=_may(caller, Action.CHANGE_CREDENTIAL, row["user"]),
        consent=row["kind"] == CONSENT,
        connected=flags.get("connected") == "1",
        created=flags.get("created") == "1",
        updated=flags.get("updated") == "1",
        verified=verified,
        errors=errors or {},
        value_label=VALUE_LABELS.get(row["kind"], "Value"),
    )


@router.get("/credentials/{credential_id}")
async def credential_page(request: Request, credential_id: str) -> Response:
    caller = await _caller(request)
    return await _credential_view(request, caller, credential_id)


@router.post("/credentials/{credential_id}/connect")
async def credential_connect(request: Request, credential_id: str) -> Response:
    caller, _ = await _posted(request)
    try:
        return await _connect(request, caller, credential_id)
    except CapgateError as exc:
        return _error_page(request, caller, exc)


@router.post("/credentials/{credential_id}/verify")
async def credential_verify(request: Request, credential_id: str) -> Response:
    caller, _ = await _posted(request)
    try:
        outcome = await _call(api.verify_credential, credential_id, caller, _ctx(request))
    except CapgateError as exc:
        return _error_page(request, caller, exc)
    return await _credential_view(request, caller, credential_id, verified=outcome)


@router.post("/credentials/{credential_id}/value")
async def credential_value(request: Request, credential_id: str) -> Response:
    caller, form = await _posted(request)
    value, client_secret = _secret_text(form, "value"), _secret_text(form, "client_secret")
    if value is None and client_secret is None:
        errors = {"value": "type the new value"}
        return await _credential_view(request, caller, credential_id, errors=errors, status=422)
    try:
        body = models.CredentialValue(value=value, client_secret=client_secret)
        await _call(api.put_credential_value, credential_id, body, caller, _ctx(request))
    except (ValidationError, InvalidInput) as exc:
        errors = _field_errors(exc)
        return await _credential_view(request, caller, credential_id, errors=errors, status=422)
    except CapgateError as exc:
        return _error_page(request, caller, exc)
    return RedirectResponse(f"/credentials/{credential_id}?updated=1", status_code=303)


@router.get("/credentials/{credential_id}/delete")
async def credential_delete_confirm(request: Request, credential_id: str) -> Response:
    caller = await _caller(request)
    try:
        row = await _call(api.get_credential, credential_id, caller, _ctx(request))
        access.allow(caller, Action.CHANGE_CREDENTIAL, owner=row["user"])
    except CapgateError as exc:
        return _error_page(request, caller, exc)
    return _page(
        request,
        "confirm.html",
        caller,
        section="credentials",
        title=f"Delete credential {row['name']}?",
        what=row["name"],
        detail="Every proxy's next request goes without it. Its stored value is destroyed.",
        action=f"/credentials/{row['id']}/delete",
        back=f"/credentials/{row['id']}",
        button="Delete credential",
    )


@router.post("/credentials/{credential_id}/delete")
async def credential_delete(request: Request, credential_id: str) -> Response:
    caller, _ = await _posted(request)
    ctx = _ctx(request)
    try:
        row = await _call(api.get_credential, credential_id, caller, ctx)
        await _call(api.delete_credential, credential_id, caller, ctx)
    except CapgateError as exc:
        return _error_page(request, caller, exc)
    return RedirectResponse(query("/credentials", {"deleted": row["name"]}), status_code=303)


# --- secrets ------------------------------------------------------------------------------


@router.get("/secrets")
async def secrets_page(request: Request) -> Response:
    caller = await _caller(request)
    listed = await _call(api.list_secrets, caller, _ctx(request))
    return _page(
        request,
        "secrets.html",
        caller,
        section="secrets",
        secrets=sorted(listed["secrets"], key=lambda s: s["name"]),
        may_change=_may(caller, Action.CHANGE_SECRET),
        created=_notice_name(request, "created"),
        deleted=_notice_name(request, "deleted"),
    )


def _secret_form(
    request: Request, caller: Principal, name: str, errors: dict[str, str], status: int = 200
) -> Response:
    return _page(
        request,
        "secret_new.html",
        caller,
        status=status,
        section="secrets",
        name=name,
        errors=errors,
        may_change=_may(caller, Action.CHANGE_SECRET),
    )


@router.get("/secrets/new")
async def secret_new(request: Request) -> Response:
    caller = await _caller(request)
    return _secret_form(request, caller, request.query_params.get("name", "")[:256], {})


@router.post("/secrets/new")
async def secret_create(request: Request) -> Response:
    caller, form = await _posted(request)
    name, value = _text(form, "name"), _secret_text(form, "value")
    errors: dict[str, str] = {}
    if not name:
        errors["name"] = "required"
    if value is None:
        errors["value"] = "required"
    if not errors:
        try:
            body = models.SecretCreate(name=name, value=value or "")
            await _call(api.create_secret, body, caller, _ctx(request))
        except Forbidden as exc:
            return _error_page(request, caller, exc)
        except (ValidationError, CapgateError) as exc:
            errors = _field_errors(exc)
            if "" in errors and "name" not in errors:
                errors["name"] = errors.pop("")
    if errors:
        return _secret_form(request, caller, name, errors, status=422)
    return RedirectResponse(query("/secrets", {"created": name}), status_code=303)


@router.get("/secrets/{name}/delete")
async def secret_delete_confirm(request: Request, name: str) -> Response:
    caller = await _caller(request)
    if not _may(caller, Action.CHANGE_SECRET):
        return _error_page(request, caller, Forbidden("a member may not change secrets"))
    return _page(
        request,
        "confirm.html",
        caller,
        section="secrets",
        title=f"Delete secret {name}?",
        what=name,
        detail="Capabilities that use it stop working on the next request.",
        action=f"/secrets/{quote(name, safe='')}/delete",
        back="/secrets",
        button="Delete secret",
    )


@router.post("/secrets/{name}/delete")
async def secret_delete(request: Request, name: str) -> Response:
    caller, _ = await _posted(request)
    try:
        await _call(api.delete_secret, name, caller, _ctx(request))
    except CapgateError as exc:
        return _error_page(request, caller, exc)
    return RedirectResponse(query("/secrets", {"deleted": name}), status_code=303)


# --- roles --------------------------------------------------------------------------------


@router.get("/roles")
async def roles_page(request: Request) -> Response:
    caller = await _caller(request)
    ctx = _ctx(request)
    listed = await _call(api.list_roles, caller, ctx)
    configs = ctx.caps.configs()
    cards = []
    for role in listed["roles"]:
        providers = auth_providers(configs, role["name"])
        cards.append(
            {
                **role,
                "chips": chips(
                    caller, role["missing_credentials"], role["missing_secrets"], providers
                ),
            }
        )
    return _page(
        request,
        "roles.html",
        caller,
        section="roles",
        roles=cards,
        has_caps=bool(ctx.caps.paths),
    )


# --- workspaces ---------------------------------------------------------------------------


@router.get("/workspaces")
async def workspaces_page(request: Request) -> Response:
    caller = await _caller(request)
    listed = await _call(api.list_workspaces, caller, _ctx(request))
    rows = sorted(listed["workspaces"], key=lambda w: w["created_at"], reverse=True)
    return _page(
        request,
        "workspaces.html",
        caller,
        section="workspaces",
        workspaces=rows,
        revoked=_notice_name(request, "revoked"),
    )


def _preflight_chips(ctx: ServerContext, caller: Principal, role: str, user: str) -> list[Chip]:
    configs = ctx.caps.configs()
    owner = ctx.stores.workspaces.get_user(caller.org_id, user)
    missing = capsrefs.preflight(ctx.stores, configs, caller.org_id, owner.id, role)
    return chips(caller, missing.credentials, missing.secrets, auth_providers(configs, role))


async def _workspace_form(
    request: Request,
    caller: Principal,
    values: dict[str, str],
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    ctx = _ctx(request)
    configs = ctx.caps.configs()
    roles = capsrefs.role_names(configs)
    users = [caller.user]
    if caller.operator:
        listed = await _call(api.list_users, caller, ctx)
        users = [u["name"] for u in listed["users"]]
    role, user = values.get("role", ""), values.get("user") or caller.user
    gaps: list[Chip] | None = None
    if role and (role in roles or not ctx.caps.paths) and user in users:
        try:
            gaps = await _call(_preflight_chips, ctx, caller, role, user)
        except CapgateError:
            gaps = None
    return _page(
        request,
        "workspace_new.html",
        caller,
        status=status,
        section="workspaces",
        roles=roles,
        users=users,
        values={**values, "user": user, "proxy": values.get("proxy") or DEFAULT_PROXY},
        gaps=gaps,
        errors=errors or {},
        ttl_choices=TTL_CHOICES,
        has_caps=bool(ctx.caps.paths),
    )


@router.get("/workspaces/new")
async def workspace_new(request: Request) -> Response:
    caller = await _caller(request)
    keep = ("role", "user", "ttl_s", "proxy")
    values = {k: request.query_params.get(k, "")[:256] for k in keep}
    return await _workspace_form(request, caller, values)


def export_lines(workspace_id: str, token: str, proxy: str) -> str:
    """The `capgate env`-style lines for a POSIX shell (the CA paths come from the proxy's
    host: `capgate ca --bundle` and `capgate ca`)."""
    scheme, _, rest = proxy.partition("://")
    url = f"{scheme}://agent:{token}@{rest.rstrip('/')}"
    lines = [f"export CAPGATE_WORKSPACE={shlex.quote(workspace_id)}"]
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        lines.append(f"export {name}={shlex.quote(url)}")
    lines.append("export NO_PROXY='' no_proxy=''")
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"):
        lines.append(f'export {name}="$(capgate ca --bundle)"')
    lines.append('export NODE_EXTRA_CA_CERTS="$(capgate ca)" NODE_USE_ENV_PROXY=1')
    return "\n".join(lines)


def _proxy_problem(proxy: str) -> str | None:
    scheme, sep, rest = proxy.partition("://")
    if not sep or scheme not in ("http", "https") or not rest or "@" in rest or "/" in rest:
        return "must be http://HOST:PORT (without credentials)"
    if any(ch.isspace() or ch in "'\"\\$`" for ch in rest):
        return "must be http://HOST:PORT (without credentials)"
    return None


@router.post("/workspaces/new")
async def workspace_create(request: Request) -> Response:
    caller, form = await _posted(request)
    values = {k: _text(form, k) for k in ("role", "user", "ttl_s", "proxy")}
    proxy = values["proxy"] or DEFAULT_PROXY
    errors: dict[str, str] = {}
    if not values["role"]:
        errors["role"] = "required"
    if values["ttl_s"] and not values["ttl_s"].isdigit():
        errors["ttl_s"] = "a number of seconds"
    if (problem := _proxy_problem(proxy)) is not None:
        errors["proxy"] = problem
    if errors:
        return await _workspace_form(request, caller, values, errors, status=422)
    try:
        body = models.WorkspaceCreate(
            role=values["role"],
            user=values["user"] or None,
            ttl_s=int(values["ttl_s"]) if values["ttl_s"] else None,
        )
        made = await _call(api.create_workspace, body, caller, _ctx(request))
    except Forbidden as exc:
        return _error_page(request, caller, exc)
    except (ValidationError, CapgateError, ApiError) as exc:
        return await _workspace_form(request, caller, values, _field_errors(exc), status=422)
    ctx = _ctx(request)
    configs = ctx.caps.configs()
    pre = made["preflight"]
    gaps = chips(
        caller,
        pre["missing_credentials"],
        pre["missing_secrets"],
        auth_providers(configs, made["role"]),
    )
    return _page(
        request,
        "workspace_created.html",
        caller,
        section="workspaces",
        ws=made,
        gaps=gaps,
        lines=export_lines(made["id"], made["token"], proxy),
    )


@router.post("/workspaces/{workspace_id}/revoke")
async def workspace_revoke(request: Request, workspace_id: str) -> Response:
    caller, _ = await _posted(request)
    try:
        await _call(api.revoke_workspace, workspace_id, caller, _ctx(request))
    except CapgateError as exc:
        return _error_page(request, caller, exc)
    return RedirectResponse(query("/workspaces", {"revoked": workspace_id}), status_code=303)


# --- decisions and audit ------------------------------------------------------------------

DECISIONS_SHOWN = 200
DECISIONS_SCANNED = 1000


def _matches(row: dict[str, Any], decision: str, capability: str, host: str) -> bool:
    if decision and row.get("decision") != decision:
        return False
    if capability and capability.lower() not in (row.get("capability") or "").lower():
        return False
    return not (host and host.lower() not in (row.get("host") or "").lower())


@router.get("/decisions")
async def decisions_page(request: Request) -> Response:
    caller = await _caller(request)
    q = request.query_params
    decision = q.get("decision", "")[:16]
    decision = decision if decision in DECISION_CHOICES else ""
    capability, host = q.get("capability", "")[:128], q.get("host", "")[:256]
    page = await _call(api.list_decisions, caller, _ctx(request), None, DECISIONS_SCANNED, None)
    rows = [r for r in reversed(page["decisions"]) if _matches(r, decision, capability, host)]
    return _page(
        request,
        "decisions.html",
        caller,
        section="decisions",
        decisions=rows[:DECISIONS_SHOWN],
        cursor=page["next"] or "",
        filters={"decision": decision, "capability": capability, "host": host},
        decision_choices=DECISION_CHOICES,
    )


@router.get("/audit")
async def audit_page(request: Request) -> Response:
    caller = await _caller(request)
    ctx = _ctx(request)
    if not _may(caller, Action.READ_AUDIT):
        return _page(request, "audit.html", caller, section="audit", events=None)
    events = await _call(audit.list_events, ctx.stores.control, caller.org_id, limit=200)
    rows = [e.to_json() for e in events]
    return _page(request, "audit.html", caller, section="audit", events=rows)
