"""The root paths: `/healthz`, `/`, `/login/<token>`, `/logout` and `/oauth/callback`."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from capgate.broker.errors import CapgateError
from capgate.broker.sessions import Session

from .auth import Ctx, session_principal
from .context import SESSION_COOKIE, ServerContext
from .errors import ApiError
from .models import Health

router = APIRouter()


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(ctx: Ctx) -> JSONResponse:
    """200 when both stores answer."""
    try:
        ctx.stores.control.query("SELECT 1")
        ctx.stores.vault.ping()
    except Exception:
        return JSONResponse({"ok": False}, status_code=503)
    return JSONResponse({"ok": True})


@router.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    return RedirectResponse("/credentials", status_code=303)


@router.get("/login/oidc", include_in_schema=False)
def login_oidc(ctx: Ctx) -> Response:
    """Single sign-on: off to the OpenID Connect provider (code + PKCE S256)."""
    if ctx.oidc is None:
        raise ApiError(404, "not_found", "single sign-on is not configured")
    url = ctx.oidc.start(ctx.public_url + "/login/oidc/callback")
    # Bind the sign-in to this browser: a callback URL carried to another browser (login
    # CSRF: someone else's account signed in on your screen) is refused there.
    state = parse_qs(urlsplit(url).query).get("state", [""])[0]
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(
        OIDC_BINDING_COOKIE,
        _binding(state),
        max_age=600,
        httponly=True,
        secure=ctx.secure_cookies,
        samesite="lax",
        path="/login/oidc",
    )
    return response


OIDC_BINDING_COOKIE = "capgate_oidc"


def _binding(state: str) -> str:
    return hashlib.sha256(b"capgate oidc binding\0" + state.encode()).hexdigest()


@router.get("/login/oidc/callback", include_in_schema=False)
def login_oidc_callback(
    request: Request,
    ctx: Ctx,
    state: Annotated[str | None, Query(max_length=512)] = None,
    code: Annotated[str | None, Query(max_length=4096)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
) -> Response:
    """The ID token's email names the user (`user add NAME --email E`) of the server's org."""
    if ctx.oidc is None:
        raise ApiError(404, "not_found", "single sign-on is not configured")
    bound = request.cookies.get(OIDC_BINDING_COOKIE, "")
    if state and not hmac.compare_digest(bound.encode(), _binding(state).encode()):
        raise ApiError(403, "forbidden", "this sign-in was not started in this browser")
    try:
        email = ctx.oidc.complete(state, code, error)
    except CapgateError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    org_id = ctx.stores.control.find_org_id(ctx.org)
    user = ctx.stores.workspaces.user_by_email(org_id, email) if org_id else None
    if user is None or org_id is None:
        raise ApiError(403, "forbidden", "no user of this capgate has that email")
    return _signed_in(ctx, ctx.stores.sessions.create_session(org_id, user.id, user.name))


@router.get("/login/{token}", include_in_schema=False)
def login(token: str, ctx: Ctx) -> Response:
    """Redeem a one-time console link for a session cookie, then go to the console."""
    session = ctx.stores.sessions.redeem_link(token)
    if session is None:
        raise ApiError(400, "bad_request", "this sign-in link is unknown, used or expired")
    return _signed_in(ctx, session)


def _signed_in(ctx: ServerContext, session: Session) -> Response:
    response = RedirectResponse("/credentials", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session.token,
        httponly=True,
        secure=ctx.secure_cookies,
        samesite="lax",
        path="/",
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@router.api_route("/logout", methods=["GET", "POST"], include_in_schema=False)
def logout(request: Request, ctx: Ctx) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        ctx.stores.sessions.revoke(token)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=ctx.secure_cookies, httponly=True)
    return response


@router.get("/oauth/callback", include_in_schema=False)
async def oauth_callback(
    request: Request,
    ctx: Ctx,
    state: Annotated[str | None, Query(max_length=512)] = None,
    code: Annotated[str | None, Query(max_length=4096)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
) -> Response:
    """Complete a hosted consent: only in the browser of the user who started it."""
    signed_in = await session_principal(request)
    try:
        done = await run_in_threadpool(
            ctx.stores.consents.complete,
            state=state,
            code=code,
            error=error,
            signed_in_user_id=signed_in.user_id if signed_in else None,
            endpoints=ctx.endpoints,
        )
    except CapgateError as exc:
        raise ApiError(getattr(exc, "http_status", 400), "consent_failed", str(exc)) from None
    target = done.return_to or f"/credentials/{done.credential_id}?connected=1"
    return RedirectResponse(target, status_code=303)
