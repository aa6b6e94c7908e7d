"""Token-endpoint calls: endpoints, the form POST, error classification, JWT assertions.

Token endpoints are fixed per provider (providers.py). Tests and private deployments may
point them elsewhere only through `CAPGATE_UNSAFE_TOKEN_ENDPOINTS` (and, for consent,
`CAPGATE_UNSAFE_AUTHORIZE_ENDPOINTS`): JSON objects mapping a provider slug to a URL, in
which `{tenant}` is replaced by the credential's tenant_id. Loading them logs a WARNING.

Failures surface as `MintError(code, terminal)`: `code` is a short, closed vocabulary
(an RFC 6749 error name or a transport condition), never text from the response body,
which can echo parts of the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from .errors import FieldError, InvalidInput
from .providers import PROVIDERS, Provider, oauth_urls
from .secretvalue import SecretValue

log = logging.getLogger("capgate.broker.oauth")

UNSAFE_TOKEN_ENV = "CAPGATE_UNSAFE_TOKEN_ENDPOINTS"
UNSAFE_AUTHORIZE_ENV = "CAPGATE_UNSAFE_AUTHORIZE_ENDPOINTS"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600  # RFC 7523 / Google: exp at most one hour after iat
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)

# PROVIDERS.md, "Terminal vs transient mint failures".
TERMINAL_ERRORS = frozenset(
    {
        "invalid_grant",
        "invalid_client",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_request",
        "interaction_required",
        "consent_required",
        "invalid_resource",
        "access_denied",
        "login_required",
    }
)
TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error", "internal_failure"})
TRANSIENT_STATUSES = frozenset({408, 429})
UNPARSEABLE = "unparseable_durable_value"


class MintError(Exception):
    """A mint that produced no token. `str()` is the code alone: safe to log."""

    def __init__(self, code: str, *, terminal: bool, retry_after: float | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.terminal = terminal
        self.retry_after = retry_after


@dataclass(frozen=True)
class TokenGrant:
    """A successful token response, values wrapped so they cannot be printed."""

    access_token: SecretValue
    expires_in: int | None
    refresh_token: SecretValue | None = None
    scope: str | None = None


# -- endpoints -----------------------------------------------------------------------------


def _load_overrides(env_name: str) -> Mapping[str, str]:
    raw = os.environ.get(env_name)
    if not raw:
        return MappingProxyType({})
    try:
        data = json.loads(raw)
    except ValueError:
        raise InvalidInput([FieldError(env_name, "must be a JSON object")]) from None
    if not isinstance(data, dict):
        raise InvalidInput([FieldError(env_name, "must be a JSON object")])
    errors = []
    for slug, url in data.items():
        if slug not in PROVIDERS or PROVIDERS[slug].oauth is None:
            errors.append(FieldError(f"{env_name}.{slug}", "not an OAuth provider"))
        elif not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            errors.append(FieldError(f"{env_name}.{slug}", "must be an http(s) URL"))
    if errors:
        raise InvalidInput(errors)
    for slug, url in sorted(data.items()):
        log.warning(
            "UNSAFE: %s overrides the %s OAuth endpoint with %s; "
            "credentials for %s will be sent there",
            env_name,
            slug,
            url,
            slug,
        )
    return MappingProxyType(dict(data))


@dataclass(frozen=True)
class Endpoints:
    """Where each provider's token (and authorization) endpoint is, overrides applied."""

    token_overrides: Mapping[str, str]
    authorize_overrides: Mapping[str, str]

    @classmethod
    def from_env(cls) -> Endpoints:
        """Read the UNSAFE override variables once, announcing each override loudly."""
        return cls(_load_overrides(UNSAFE_TOKEN_ENV), _load_overrides(UNSAFE_AUTHORIZE_ENV))

    @classmethod
    def fixed(cls) -> Endpoints:
        return cls(MappingProxyType({}), MappingProxyType({}))

    def token_url(self, provider: Provider, config: Mapping[str, str]) -> str:
        override = self.token_overrides.get(provider.slug)
        if override:
            return override.replace("{tenant}", config.get("tenant_id", ""))
        return oauth_urls(provider, config).token

    def authorize_url(self, provider: Provider, config: Mapping[str, str]) -> str:
        override = self.authorize_overrides.get(provider.slug)
        if override:
            return override.replace("{tenant}", config.get("tenant_id", ""))
        url = oauth_urls(provider, config).authorize
        if url is None:
            raise ValueError(f"provider {provider.slug!r} has no authorization endpoint")
        return url


# -- the token request ---------------------------------------------------------------------

_CODE_RE = re.compile(r"^[a-z_]{1,48}$")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def classify(response: httpx.Response) -> TokenGrant:
    """Turn a token-endpoint response into a TokenGrant, or raise a classified MintError."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if status == 200:
        return _parse_grant(body)
    transient_status = status >= 500 or status in TRANSIENT_STATUSES
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, str) or not _CODE_RE.match(error):
        # Non-JSON or no usable `error`: transient if 5xx/408/429, terminal otherwise.
        raise MintError(
            f"http_{status}", terminal=not transient_status, retry_after=_retry_after(response)
        )
    if error in TRANSIENT_ERRORS or (transient_status and error not in TERMINAL_ERRORS):
        raise MintError(error, terminal=False, retry_after=_retry_after(response))
    if error in TERMINAL_ERRORS:
        raise MintError(error, terminal=True)
    # An error name outside the vocabulary: do not echo it, classify by status.
    raise MintError(f"http_{status}", terminal=not transient_status)


def _parse_grant(body: object) -> TokenGrant:
    if not isinstance(body, dict):
        raise MintError("malformed_token_response", terminal=False)
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise MintError("malformed_token_response", terminal=False)
    expires_in = body.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)  # some servers send a string
    if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in < 0:
        expires_in = None
    refresh = body.get("refresh_token")
    scope = body.get("scope")
    return TokenGrant(
        access_token=SecretValue(access),
        expires_in=expires_in,
        refresh_token=SecretValue(refresh) if isinstance(refresh, str) and refresh else None,
        scope=scope if isinstance(scope, str) else None,
    )


# Token endpoints get a deadline for the whole exchange (connect, send, every byte of
# the answer), not only per read: a server trickling one byte every few seconds is cut
# off. And capgate reads at most MAX_TOKEN_RESPONSE bytes of a token response.
TOKEN_DEADLINE_S = 10.0
MAX_TOKEN_RESPONSE = 64 * 1024
# identity: a compressed answer could expand far beyond the cap while being decoded.
_HEADERS = {"Accept": "application/json", "Accept-Encoding": "identity"}


class _TooLarge(Exception):
    pass


def _declared_too_large(response: httpx.Response, cap: int) -> bool:
    length = response.headers.get("content-length", "")
    return length.isdigit() and int(length) > cap


def _capped(response: httpx.Response, body: bytes) -> httpx.Response:
    """A response holding only the (bounded) body read, for `classify`."""
    return httpx.Response(
        response.status_code,
        headers=[(k, v) for k, v in response.headers.items() if k not in _BODY_HEADERS],
        content=body,
    )


_BODY_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding"})


async def request_token(
    client: httpx.AsyncClient,
    url: str,
    form: Mapping[str, str | SecretValue],
    *,
    deadline: float = TOKEN_DEADLINE_S,
    max_bytes: int = MAX_TOKEN_RESPONSE,
) -> TokenGrant:
    """POST a form to a token endpoint; never raises anything but MintError.

    The whole exchange ends within `deadline` seconds (`timeout`), and a response body
    beyond `max_bytes` is not read (`token_response_too_large`, transient)."""
    data = {k: v.reveal() if isinstance(v, SecretValue) else v for k, v in form.items()}
    try:
        async with asyncio.timeout(deadline):
            async with client.stream("POST", url, data=data, headers=_HEADERS) as response:
                if _declared_too_large(response, max_bytes):
                    raise _TooLarge
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise _TooLarge
    except TimeoutError:
        log.warning("token endpoint %s: no complete answer within %.0f s", _origin(url), deadline)
        raise MintError("timeout", terminal=False) from None
    except _TooLarge:
        log.warning("token endpoint %s: answer larger than %d bytes", _origin(url), max_bytes)
        raise MintError("token_response_too_large", terminal=False) from None
    except httpx.TimeoutException:
        raise MintError("timeout", terminal=False) from None
    except httpx.HTTPError:
        raise MintError("network_error", terminal=False) from None
    return classify(_capped(response, bytes(body)))


def request_token_sync(
    client: httpx.Client,
    url: str,
    form: Mapping[str, str | SecretValue],
    *,
    deadline: float = TOKEN_DEADLINE_S,
    max_bytes: int = MAX_TOKEN_RESPONSE,
) -> TokenGrant:
    """The blocking twin of `request_token`, for the CLI (the deadline is checked after
    every read, so it is overrun by at most one read timeout)."""
    data = {k: v.reveal() if isinstance(v, SecretValue) else v for k, v in form.items()}
    ends = time.monotonic() + deadline
    try:
        with client.stream("POST", url, data=data, headers=_HEADERS) as response:
            if _declared_too_large(response, max_bytes):
                raise _TooLarge
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise _TooLarge
                if time.monotonic() > ends:
                    raise TimeoutError
            if time.monotonic() > ends:
                raise TimeoutError
    except TimeoutError:
        raise MintError("timeout", terminal=False) from None
    except _TooLarge:
        raise MintError("token_response_too_large", terminal=False) from None
    except httpx.TimeoutException:
        raise MintError("timeout", terminal=False) from None
    except httpx.HTTPError:
        raise MintError("network_error", terminal=False) from None
    return classify(_capped(response, bytes(body)))


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL: what a log line may say about an endpoint."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


# -- RFC 7523 assertions -------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceAccount:
    """The fields of a Google service-account JSON key that minting uses."""

    client_email: str
    private_key_id: str | None
    private_key: SecretValue

    @classmethod
    def parse(cls, value: SecretValue) -> ServiceAccount:
        """Parse the durable value; a bad one is a terminal `unparseable_durable_value`."""
        try:
            data = json.loads(value.reveal())
        except ValueError:
            raise MintError(UNPARSEABLE, terminal=True) from None
        if not isinstance(data, dict):
            raise MintError(UNPARSEABLE, terminal=True)
        email, key, kid = (data.get(k) for k in ("client_email", "private_key", "private_key_id"))
        if not (isinstance(email, str) and email and isinstance(key, str) and key):
            raise MintError(UNPARSEABLE, terminal=True)
        return cls(email, kid if isinstance(kid, str) and kid else None, SecretValue(key))


def sign_assertion(
    account: ServiceAccount,
    audience: str,
    scopes: Sequence[str],
    *,
    subject: str | None = None,
    now: int | None = None,
) -> SecretValue:
    """An RS256 JWT bearer assertion (RFC 7523 §3) in Google's service-account shape."""
    issued = int(time.time()) if now is None else now
    claims: dict[str, object] = {
        "iss": account.client_email,
        "aud": audience,
        "scope": " ".join(scopes),
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME,
        "jti": uuid.uuid4().hex,
    }
    if subject:
        claims["sub"] = subject
    header = {"alg": "RS256", "typ": "JWT"}
    if account.private_key_id:
        header["kid"] = account.private_key_id
    try:
        key = RSAKey.import_key(account.private_key.reveal())
        return SecretValue(jwt.encode(header, claims, key, algorithms=["RS256"]))
    except (JoseError, ValueError, TypeError):
        raise MintError(UNPARSEABLE, terminal=True) from None
