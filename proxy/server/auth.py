"""Who is calling: `Authorization: Bearer cgk_...` or the console session cookie.

Every request re-reads the key or session row (no cache outlives a request), so a revoke
from any process is seen on the next request. A state-changing request from a session
must carry the session's CSRF token (`X-CSRF-Token` header or a `csrf_token` form field):
403 `{"error": "csrf"}` otherwise. API-key requests need no CSRF token (no ambient
credential: a browser never attaches a bearer token by itself).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from capgate.broker.identity import Principal

from .context import SESSION_COOKIE, ServerContext, context
from .errors import ApiError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def _unauthenticated() -> ApiError:
    return ApiError(401, "unauthenticated", "a valid API key or console session is required")


async def session_principal(request: Request) -> Principal | None:
    """The console session's principal, or None (no cookie, unknown, revoked, expired)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    ctx: ServerContext = context(request)
    return await run_in_threadpool(ctx.stores.sessions.authenticate, token)


async def principal(request: Request) -> Principal:
    ctx: ServerContext = context(request)
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthenticated()
        found = await run_in_threadpool(ctx.stores.api_keys.authenticate, token.strip())
        if found is None:
            raise _unauthenticated()
        return found
    found = await session_principal(request)
    if found is None:
        raise _unauthenticated()
    if request.method not in SAFE_METHODS:
        await check_csrf(request, found)
    return found


async def check_csrf(request: Request, found: Principal) -> None:
    sent = request.headers.get("x-csrf-token")
    content_type = request.headers.get("content-type", "")
    if sent is None and content_type.startswith(FORM_TYPES):
        form = await request.form()
        value = form.get("csrf_token")
        sent = value if isinstance(value, str) else None
    expected = found.csrf_token or ""
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise ApiError(403, "csrf", "a state-changing console request needs its CSRF token")


Caller = Annotated[Principal, Depends(principal)]
Ctx = Annotated[ServerContext, Depends(context)]
