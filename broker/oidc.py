"""Console single sign-on with an OpenID Connect provider (authorization code + PKCE S256).

`OidcLogin.start(redirect_uri)` discovers the provider (`{issuer}/.well-known/
openid-configuration`), keeps a pending login (state, nonce, PKCE verifier; single use,
10 minutes, in this process's memory: the console is one process) and returns the
authorization URL. `complete(state, code)` exchanges the code, verifies the ID token
(signature against the provider's JWKS, RS256/ES256 only; `iss`, `aud`, `exp`, `iat`,
`nonce`, `azp` when there are several audiences) and returns the `email` claim (refused
when `email_verified` is false). Matching the email to a user is the caller's next step.
Nothing here logs a token or a code.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import httpx
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .errors import CapgateError, FieldError, InvalidInput
from .oauth import DEFAULT_TIMEOUT

STATE_TTL_S = 600
ALGORITHMS = ("RS256", "ES256")
LEEWAY_S = 60


class OidcRefused(CapgateError):
    """Sign-in did not complete; the message is safe to show."""


@dataclass(frozen=True)
class _Pending:
    nonce: str
    verifier: str
    redirect_uri: str
    expires: float


def check_issuer(issuer: str) -> None:
    """An https issuer (http only on loopback, for tests and local providers)."""
    parts = urlsplit(issuer)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise InvalidInput([FieldError("oidc_issuer", "must be an https URL")])


class OidcLogin:
    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str | None,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        check_issuer(issuer)
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self._client_secret = client_secret
        self._timeout = timeout
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._metadata: dict | None = None

    def _discover(self) -> dict:
        if self._metadata is None:
            url = self.issuer + "/.well-known/openid-configuration"
            try:
                reply = httpx.get(url, timeout=self._timeout)
                data = reply.json() if reply.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                data = None
            needed = ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")
            if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in needed):
                raise OidcRefused("the single sign-on provider cannot be reached or is not OIDC")
            if data["issuer"].rstrip("/") != self.issuer:
                raise OidcRefused("the provider's metadata names another issuer")
            self._metadata = data
        return self._metadata

    def start(self, redirect_uri: str) -> str:
        metadata = self._discover()
        state = secrets.token_urlsafe(32)
        pending = _Pending(
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(48),
            redirect_uri,
            time.monotonic() + STATE_TTL_S,
        )
        with self._lock:
            now = time.monotonic()
            self._pending = {k: v for k, v in self._pending.items() if v.expires > now}
            self._pending[state] = pending
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid email",
            "state": state,
            "nonce": pending.nonce,
            "code_challenge": create_s256_code_challenge(pending.verifier),
            "code_challenge_method": "S256",
        }
        base = metadata["authorization_endpoint"]
        return f"{base}{'&' if '?' in base else '?'}{urlencode(params)}"

    def complete(self, state: str | None, code: str | None, error: str | None) -> str:
        """The verified email of the signed-in person; OidcRefused otherwise."""
        with self._lock:
            pending = self._pending.pop(state or "", None)
        if pending is None or pending.expires <= time.monotonic():
            raise OidcRefused("unknown, used or expired sign-in; start again")
        if error is not None or not code:
            raise OidcRefused("the provider did not sign you in")
        metadata = self._discover()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": pending.redirect_uri,
            "client_id": self.client_id,
            "code_verifier": pending.verifier,
        }
        if self._client_secret is not None:
            form["client_secret"] = self._client_secret
        try:
            with httpx.Client(timeout=self._timeout) as http:
                reply = http.post(
                    metadata["token_endpoint"], data=form, headers={"Accept": "application/json"}
                )
                body = reply.json() if reply.status_code == 200 else None
                keys = http.get(metadata["jwks_uri"]).json()
        except (httpx.HTTPError, ValueError):
            raise OidcRefused("the single sign-on provider could not be reached") from None
        id_token = body.get("id_token") if isinstance(body, dict) else None
        if not isinstance(id_token, str):
            raise OidcRefused("the provider refused the sign-in code")
        return self._email(id_token, keys, pending.nonce, metadata["issuer"])

    def _email(self, id_token: str, keys: object, nonce: str, issuer: str) -> str:
        try:
            key_set = KeySet.import_key_set(keys)  # type: ignore[arg-type]
            token = jwt.decode(id_token, key_set, algorithms=list(ALGORITHMS))
            registry = jwt.JWTClaimsRegistry(
                leeway=LEEWAY_S,
                iss={"essential": True, "value": issuer},
                aud={"essential": True, "value": self.client_id},
                exp={"essential": True},
                iat={"essential": True},
                nonce={"essential": True},
            )
            registry.validate(token.claims)
        except (JoseError, ValueError, TypeError, KeyError):
            raise OidcRefused("the ID token is not valid") from None
        claims = token.claims
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise OidcRefused("the ID token is not valid")
        audience = claims.get("aud")
        if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != self.client_id:
            raise OidcRefused("the ID token is not valid")
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise OidcRefused("the ID token carries no email")
        if claims.get("email_verified") is False:
            raise OidcRefused("the provider has not verified this email")
        return email
