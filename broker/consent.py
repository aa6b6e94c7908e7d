"""Authorization-code consent: the browser round trip that yields a refresh token.

`Consent` builds the provider's authorization URL (random `state`, PKCE S256), listens on
a loopback HTTP server for the redirect at `/oauth/callback` (RFC 8252 §7.3), checks the
state, and exchanges the code at the token endpoint. Storing the refresh token and the
status change are the caller's business (the `cred connect` command).
"""

from __future__ import annotations

import hmac
import http.server
import logging
import queue
import secrets
import threading
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from .oauth import DEFAULT_TIMEOUT, Endpoints, MintError, TokenGrant, request_token_sync
from .providers import Provider
from .secretvalue import SecretValue
from .types import ResolvedCredential

log = logging.getLogger("capgate.broker.consent")

CALLBACK_PATH = "/oauth/callback"


class ConsentError(Exception):
    """Consent did not complete; `str()` is a short reason safe to show."""


@dataclass(frozen=True)
class _Callback:
    code: SecretValue | None
    error: str | None


def _error_code(value: str) -> str:
    return value if value.replace("_", "").isalnum() and len(value) <= 48 else "invalid"


class _CallbackServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, state: str) -> None:
        super().__init__(("127.0.0.1", port), _CallbackHandler)
        self.expected_state = state
        self.results: queue.Queue[_Callback] = queue.Queue()


class _CallbackHandler(http.server.BaseHTTPRequestHandler):
    server: _CallbackServer

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != CALLBACK_PATH:
            self._answer(404, "Not found.")
            return
        params = {k: v[0] for k, v in parse_qs(parts.query).items()}
        state = params.get("state", "")
        if not hmac.compare_digest(state.encode(), self.server.expected_state.encode()):
            # Not our request (or a forged one): refuse it and keep waiting.
            self._answer(400, "State mismatch: this is not the consent capgate started.")
            return
        if "error" in params:
            self.server.results.put(_Callback(None, _error_code(params["error"])))
            self._answer(400, "Authorization was not granted. You can close this window.")
        elif params.get("code"):
            self.server.results.put(_Callback(SecretValue(params["code"]), None))
            self._answer(200, "capgate received the authorization. You can close this window.")
        else:
            self._answer(400, "The redirect carried no code.")

    def _answer(self, status: int, text: str) -> None:
        body = f"<!doctype html><title>capgate</title><p>{text}</p>\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the query string carries the code: never log requests


class Consent:
    """One consent round trip for an authorization-code credential."""

    def __init__(
        self,
        provider: Provider,
        cred: ResolvedCredential,
        *,
        client_secret: SecretValue | None,
        endpoints: Endpoints,
        port: int = 0,
    ) -> None:
        self.provider = provider
        self.cred = cred
        self.client_secret = client_secret
        self.endpoints = endpoints
        self.state = secrets.token_urlsafe(24)
        self._verifier = SecretValue(secrets.token_urlsafe(48))
        try:
            self._server = _CallbackServer(port, self.state)
        except OSError as exc:
            raise ConsentError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror})") from None
        self.redirect_uri = f"http://127.0.0.1:{self._server.server_port}{CALLBACK_PATH}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def __enter__(self) -> Consent:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def scopes(self) -> tuple[str, ...]:
        return consent_scopes(self.provider, self.cred)

    def authorization_url(self) -> str:
        return authorization_url(
            self.provider,
            self.cred,
            self.endpoints,
            redirect_uri=self.redirect_uri,
            state=self.state,
            verifier=self._verifier,
        )

    def wait_for_code(self, timeout: float) -> SecretValue:
        """Block until the browser comes back with a code for our state."""
        try:
            result = self._server.results.get(timeout=timeout)
        except queue.Empty:
            raise ConsentError(f"no authorization arrived within {timeout:.0f} s") from None
        if result.error or result.code is None:
            raise ConsentError(f"the provider refused authorization: {result.error}")
        return result.code

    def exchange(
        self, code: SecretValue, *, timeout: httpx.Timeout = DEFAULT_TIMEOUT
    ) -> TokenGrant:
        """Trade the code (with the PKCE verifier) for tokens; a refresh token is required."""
        return exchange_code(
            self.provider,
            self.cred,
            self.endpoints,
            code=code,
            redirect_uri=self.redirect_uri,
            verifier=self._verifier,
            client_secret=self.client_secret,
            timeout=timeout,
        )


def consent_scopes(provider: Provider, cred: ResolvedCredential) -> tuple[str, ...]:
    extra = provider.oauth.consent_scopes if provider.oauth else ()
    return (*cred.scopes, *(s for s in extra if s not in cred.scopes))


def authorization_url(
    provider: Provider,
    cred: ResolvedCredential,
    endpoints: Endpoints,
    *,
    redirect_uri: str,
    state: str,
    verifier: SecretValue,
) -> str:
    """The provider's authorization URL for this credential: state and PKCE S256."""
    config = cred.provider_config
    params = {
        "response_type": "code",
        "client_id": config.get("client_id", ""),
        "redirect_uri": redirect_uri,
        "scope": " ".join(consent_scopes(provider, cred)),
        "state": state,
        "code_challenge": create_s256_code_challenge(verifier.reveal()),
        "code_challenge_method": "S256",
        **dict(provider.oauth.authorize_params if provider.oauth else ()),
    }
    base = endpoints.authorize_url(provider, config)
    return f"{base}{'&' if '?' in base else '?'}{urlencode(params)}"


def exchange_code(
    provider: Provider,
    cred: ResolvedCredential,
    endpoints: Endpoints,
    *,
    code: SecretValue,
    redirect_uri: str,
    verifier: SecretValue,
    client_secret: SecretValue | None,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
) -> TokenGrant:
    """Trade a code (with the PKCE verifier) for tokens; a refresh token is required."""
    config = cred.provider_config
    form: dict[str, str | SecretValue] = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": config.get("client_id", ""),
        "code_verifier": verifier,
    }
    if client_secret is not None:
        form["client_secret"] = client_secret
    url = endpoints.token_url(provider, config)
    with httpx.Client(timeout=timeout) as client:
        try:
            grant = request_token_sync(client, url, form)
        except MintError as exc:
            raise ConsentError(f"the token endpoint refused the code: {exc.code}") from None
    if grant.refresh_token is None:
        raise ConsentError("the provider returned no refresh token (it must grant offline access)")
    return grant
