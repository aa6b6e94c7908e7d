"""Console single sign-on with an OpenID Connect provider (`capgate serve --oidc-*`).

Authorization code flow with PKCE (S256) through authlib's OAuth 2 client; `openid email`
scopes. `/sso/start` makes a state, a nonce and a code verifier, keeps them in this
process for 10 minutes bound to the browser by an HttpOnly cookie, and sends the browser
to the provider. `/sso/callback` accepts only the state it issued, to the browser it
issued it to, once; exchanges the code (client secret + verifier); verifies the ID token
(the provider's JWKS signature, `iss`, `aud`, `exp`, `nonce`); and signs the browser in as
the one user whose e-mail equals the `email` claim (refused when `email_verified` is
false). The new session is an ordinary console session (HttpOnly, SameSite=Lax cookie).

The provider's metadata comes from `{issuer}/.well-known/openid-configuration` and must
name the same issuer. Nothing here logs a code, a token or a claim value.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from starlette.concurrency import run_in_threadpool

from capgate.broker.sso import users_with_email

from ..context import SESSION_COOKIE, ServerContext, context
from .render import render

log = logging.getLogger("capgate.server.sso")

BINDING_COOKIE = "capgate_sso"
PENDING_TTL_S = 600
MAX_PENDING = 10_000
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


class SsoFailed(Exception):
    """A sign-in that must not succeed; the message is safe to show."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)


@dataclass
class _Pending:
    state: str
    nonce: str
    verifier: str
    expires: float


class Sso:
    """One provider's settings, its cached metadata and the sign-ins in flight."""

    def __init__(self, settings: OidcSettings, public_url: str) -> None:
        self.settings = settings
        self.redirect_uri = public_url.rstrip("/") + "/sso/callback"
        self._metadata: dict[str, Any] | None = None
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._fetch_lock = asyncio.Lock()

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is not None:
            return self._metadata
        async with self._fetch_lock:
            if self._metadata is None:
                url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
                try:
                    async with httpx.AsyncClient(timeout=10) as client:
                        reply = await client.get(url)
                    reply.raise_for_status()
                    found = reply.json()
                except (httpx.HTTPError, ValueError):
                    raise SsoFailed("the sign-in provider is not reachable", 503) from None
                if not isinstance(found, dict) or found.get("issuer") != self.settings.issuer:
                    raise SsoFailed("the sign-in provider's metadata names another issuer")
                for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not isinstance(found.get(key), str):
                        raise SsoFailed("the sign-in provider's metadata is incomplete")
                self._metadata = found
        assert self._metadata is not None
        return self._metadata

    def _client(self) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.settings.client_id,
            client_secret=self.settings.client_secret,
            scope="openid email",
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_basic",
            timeout=15,
        )

    async def start(self) -> tuple[str, str]:
        """(the provider's authorization URL, the browser binding for the cookie)."""
        meta = await self.metadata()
        pending = _Pending(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(48),
            expires=time.monotonic() + PENDING_TTL_S,
        )
        binding = secrets.token_urlsafe(32)
        with self._lock:
            self._expire()
            if len(self._pending) >= MAX_PENDING:
                raise SsoFailed("too many sign-ins in progress; try again shortly")
            self._pending[binding] = pending
        async with self._client() as client:
            url, _ = client.create_authorization_url(
                meta["authorization_endpoint"],
                state=pending.state,
                nonce=pending.nonce,
                code_verifier=pending.verifier,
            )
        return url, binding

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, p in self._pending.items() if p.expires < now]:
            del self._pending[key]

    def _take(self, binding: str | None, state: str | None) -> _Pending:
        """The browser's sign-in in flight for `state`, used up; SsoFailed otherwise."""
        if not binding or not state:
            raise SsoFailed("this sign-in was not started in this browser", 403)
        with self._lock:
            self._expire()
            pending = self._pending.get(binding)
            if pending is None or not secrets.compare_digest(pending.state, state):
                raise SsoFailed("this sign-in is unknown, used or expired", 403)
            del self._pending[binding]
        return pending

    async def finish(self, binding: str | None, state: str | None, code: str | None) -> str:
        """The verified e-mail address of the person who signed in at the provider."""
        pending = self._take(binding, state)
        if not code:
            raise SsoFailed("the sign-in provider sent no code")
        meta = await self.metadata()
        try:
            async with self._client() as client:
                token = await client.fetch_token(
                    meta["token_endpoint"],
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=pending.verifier,
                )
                jwks = (await client.get(meta["jwks_uri"])).json()
        except Exception as exc:  # authlib raises its own OAuthError types, httpx others
            log.warning("sso: the token exchange failed (%s)", type(exc).__name__)
            raise SsoFailed("the sign-in provider refused the code") from None
        id_token = token.get("id_token") if isinstance(token, dict) else None
        if not isinstance(id_token, str):
            raise SsoFailed("the sign-in provider sent no ID token")
        return self._email(id_token, jwks, pending.nonce)

    def _email(self, id_token: str, jwks: Any, nonce: str) -> str:
        try:
            keys = KeySet.import_key_set(jwks)
            decoded = jwt.decode(id_token, keys, algorithms=ALGORITHMS)
            jwt.JWTClaimsRegistry(
                leeway=60,
                iss={"essential": True, "value": self.settings.issuer},
                aud={"essential": True, "value": self.settings.client_id},
                exp={"essential": True},
                nonce={"essential": True, "value": nonce},
            ).validate(decoded.claims)
        except (JoseError, ValueError, TypeError, KeyError):
            raise SsoFailed("the ID token does not verify") from None
        claims = decoded.claims
        email = claims.get("email")
        if not isinstance(email, str) or not email:
            raise SsoFailed("the ID token carries no email claim")
        if claims.get("email_verified") is False:
            raise SsoFailed("the sign-in provider has not verified this e-mail address")
        return email


# --- routes -------------------------------------------------------------------------------

router = APIRouter(include_in_schema=False)


def _sso(request: Request) -> Sso | None:
    return getattr(request.app.state, "capgate_oidc", None)


def _refused(request: Request, message: str, status: int = 403) -> Response:
    return render(
        "error.html",
        caller=None,
        status=status,
        title="Sign-in refused",
        message=message,
        fields=[],
    )


@router.get("/sso/start")
async def sso_start(request: Request) -> Response:
    sso = _sso(request)
    if sso is None:
        return _refused(request, "single sign-on is not configured", 404)
    try:
        url, binding = await sso.start()
    except SsoFailed as exc:
        return _refused(request, str(exc), exc.status)
    ctx: ServerContext = context(request)
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(
        BINDING_COOKIE,
        binding,
        max_age=PENDING_TTL_S,
        httponly=True,
        secure=ctx.secure_cookies,
        samesite="lax",
        path="/sso",
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/sso/callback")
async def sso_callback(request: Request) -> Response:
    sso = _sso(request)
    if sso is None:
        return _refused(request, "single sign-on is not configured", 404)
    q = request.query_params
    ctx: ServerContext = context(request)
    if q.get("error"):
        response = _refused(request, "the sign-in provider did not sign you in", 400)
        response.delete_cookie(BINDING_COOKIE, path="/sso")
        return response
    try:
        email = await sso.finish(request.cookies.get(BINDING_COOKIE), q.get("state"), q.get("code"))
    except SsoFailed as exc:
        response = _refused(request, str(exc), exc.status)
        response.delete_cookie(BINDING_COOKIE, path="/sso")
        return response
    matches = await run_in_threadpool(users_with_email, ctx.stores.control, email)
    if len(matches) != 1:
        log.warning("sso: a verified sign-in matched %d users", len(matches))
        response = _refused(request, "no capgate user has this e-mail address")
        response.delete_cookie(BINDING_COOKIE, path="/sso")
        return response
    match = matches[0]

    def _session() -> str | None:
        link = ctx.stores.sessions.create_link(match.org_id, match.user)
        session = ctx.stores.sessions.redeem_link(link.token)
        return session.token if session else None

    token = await run_in_threadpool(_session)
    if token is None:
        return _refused(request, "the session could not be started", 500)
    response = RedirectResponse("/credentials", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        secure=ctx.secure_cookies,
        samesite="lax",
        path="/",
    )
    response.delete_cookie(BINDING_COOKIE, path="/sso")
    response.headers["Cache-Control"] = "no-store"
    return response
