"""A real OAuth 2.0 authorization server on 127.0.0.1 for tests, built from authlib.

Grants: authorization_code (PKCE S256 required), refresh_token (optionally rotating, and
optionally *strict*: presenting an already-rotated refresh token revokes the whole grant,
as oidc-provider does), client_credentials, and RFC 7523 jwt-bearer (authlib's
`JWTBearerGrant` really verifies the assertion's signature, `aud`, `exp`, `iss`; this
server also checks `kid`, `iat`, the one-hour lifetime, the `scope` claim and `sub`).

    with OAuthServer(rotate_refresh_tokens=True, strict_rotation=True) as srv:
        srv.add_client("cid", "csecret")
        refresh = srv.issue_refresh_token("cid", user="alice", scope="read")
        ... point capgate at srv.token_url / srv.authorize_url ...
        assert len(srv.calls) == 1 and srv.token_valid(access_token)
        srv.set_failure(503, {"error": "temporarily_unavailable"}, times=1)

The server runs in a daemon thread (werkzeug, threaded); token-endpoint processing is
serialised like a database transaction, so races are decided by arrival order.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidScopeError, grants
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7523 import JWTBearerGrant
from authlib.oauth2.rfc7636 import CodeChallenge
from flask import Flask, Response, request
from joserfc.jwk import RSAKey
from werkzeug.serving import WSGIRequestHandler, make_server

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"

# The server's own logs (authlib debug lines print issued tokens) stay out of the test's
# caplog, so that "no canary in logs" checks see only capgate's records.
for _name in ("authlib", "werkzeug", "tests.oauth_server"):
    logging.getLogger(_name).propagate = False


@dataclass
class Client:
    client_id: str
    client_secret: str
    grant_types: tuple[str, ...]
    scope: str = ""
    kid: str | None = None  # jwt-bearer service accounts: expected key id
    public_key: RSAKey | None = None
    subjects: frozenset[str] = frozenset()  # users a service account may impersonate

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return self.scope
        allowed = set(self.scope.split())
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # RFC 8252 §7.3: loopback redirects may use any port.
        parts = urlsplit(redirect_uri)
        return parts.scheme == "http" and parts.hostname == "127.0.0.1" and bool(parts.port)

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_post", "client_secret_basic", "none")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class Token:
    client_id: str
    user: str | None
    scope: str
    grant_id: str
    expires_at: float
    access_token: str
    refresh_token: str | None = None
    revoked: bool = False  # the access token
    refresh_revoked: bool = False  # the refresh token was rotated away

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope


@dataclass
class AuthCode:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: str
    code_challenge: str | None
    code_challenge_method: str | None

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class TokenCall:
    """One request that reached the token endpoint (failures injected included)."""

    grant_type: str
    form: dict[str, str]
    at: float
    status: int = 0


@dataclass
class _Failure:
    status: int
    body: Any
    content_type: str
    delay: float
    times: int | None
    headers: dict[str, str] = field(default_factory=dict)


class OAuthServer:
    """An authlib authorization server on an ephemeral loopback port; see module docstring."""

    def __init__(
        self,
        *,
        rotate_refresh_tokens: bool = False,
        strict_rotation: bool = False,
        expires_in: int = 3600,
        response_delay: float = 0.0,
    ) -> None:
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.strict_rotation = strict_rotation
        self.expires_in = expires_in
        self.response_delay = response_delay
        self.consent_user = "alice"
        self.calls: list[TokenCall] = []
        self.authorize_requests: list[dict[str, str]] = []
        self.clients: dict[str, Client] = {}
        self.tokens: dict[str, Token] = {}  # access token -> Token
        self.refresh_tokens: dict[str, Token] = {}
        self.codes: dict[str, AuthCode] = {}
        self.revoked_grants: set[str] = set()
        self._failure: _Failure | None = None
        self._lock = threading.RLock()
        self._app = self._build_app()
        self._server = make_server(
            "127.0.0.1", 0, self._app, threaded=True, request_handler=_QuietHandler
        )
        self.base_url = f"http://127.0.0.1:{self._server.server_port}"
        self.token_url = f"{self.base_url}/token"
        self.authorize_url = f"{self.base_url}/authorize"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> OAuthServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- set-up ------------------------------------------------------------------------

    def add_client(
        self,
        client_id: str,
        client_secret: str,
        *,
        grant_types: tuple[str, ...] = (
            "authorization_code",
            "refresh_token",
            "client_credentials",
        ),
        scope: str = "read write offline_access",
    ) -> Client:
        client = Client(client_id, client_secret, grant_types, scope)
        self.clients[client_id] = client
        return client

    def add_service_account(
        self,
        client_email: str,
        public_key_pem: bytes | str,
        *,
        kid: str,
        scope: str = "read write",
        subjects: tuple[str, ...] = (),
    ) -> Client:
        client = Client(
            client_email,
            secrets.token_urlsafe(16),
            (JWT_BEARER,),
            scope,
            kid=kid,
            public_key=RSAKey.import_key(public_key_pem),
            subjects=frozenset(subjects),
        )
        self.clients[client_email] = client
        return client

    def issue_refresh_token(self, client_id: str, *, user: str = "alice", scope: str = "") -> str:
        """Seed a grant as if consent had happened; return its refresh token."""
        with self._lock:
            token = self._store_token(client_id, user, scope, secrets.token_urlsafe(8), True)
            assert token.refresh_token
            return token.refresh_token

    def set_failure(
        self,
        status: int,
        body: Any = None,
        *,
        content_type: str = "application/json",
        delay: float = 0.0,
        times: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next `times` token requests (all, if None) with this response.

        `body` may be a dict (sent as JSON) or str/bytes (sent raw, e.g. malformed JSON).
        A `delay` longer than the client's timeout simulates a timeout.
        """
        self._failure = _Failure(status, body, content_type, delay, times, headers or {})

    def clear_failure(self) -> None:
        self._failure = None

    # -- inspection --------------------------------------------------------------------

    def token_valid(self, access_token: str) -> bool:
        with self._lock:
            token = self.tokens.get(access_token)
            return bool(
                token
                and not token.revoked
                and token.grant_id not in self.revoked_grants
                and token.expires_at > time.time()
            )

    def token_info(self, access_token: str) -> Token | None:
        return self.tokens.get(access_token)

    def grant_calls(self, grant_type: str) -> list[TokenCall]:
        return [c for c in self.calls if c.grant_type == grant_type]

    # -- internals ---------------------------------------------------------------------

    def _store_token(
        self, client_id: str, user: str | None, scope: str, grant_id: str, with_refresh: bool
    ) -> Token:
        token = Token(
            client_id=client_id,
            user=user,
            scope=scope,
            grant_id=grant_id,
            expires_at=time.time() + self.expires_in,
            access_token=secrets.token_urlsafe(24),
            refresh_token=secrets.token_urlsafe(32) if with_refresh else None,
        )
        self.tokens[token.access_token] = token
        if token.refresh_token:
            self.refresh_tokens[token.refresh_token] = token
        return token

    def _build_app(self) -> Flask:
        app = Flask("tests.oauth_server")
        srv = self
        server = AuthorizationServer(app, query_client=self.clients.get, save_token=self._save)
        server.register_token_generator(
            "default",
            BearerTokenGenerator(
                lambda *a, **k: secrets.token_urlsafe(24),
                lambda *a, **k: secrets.token_urlsafe(32),
                lambda client, grant_type: srv.expires_in,
            ),
        )
        server.register_grant(_make_code_grant(self), [CodeChallenge(required=True)])
        server.register_grant(_make_refresh_grant(self))
        server.register_grant(_ClientCredentialsGrant)
        server.register_grant(_make_jwt_grant(self))

        @app.post("/token")
        def token() -> Response:
            call = TokenCall(
                request.form.get("grant_type", ""), request.form.to_dict(), time.time()
            )
            srv.calls.append(call)
            failure = srv._take_failure()
            if failure is not None:
                time.sleep(failure.delay)
                call.status = failure.status
                body = failure.body
                if isinstance(body, dict):
                    body = json.dumps(body)
                return Response(
                    body or "",
                    status=failure.status,
                    content_type=failure.content_type,
                    headers=failure.headers,
                )
            if srv.response_delay:
                time.sleep(srv.response_delay)
            with srv._lock:
                response = server.create_token_response()
            call.status = response.status_code
            return response

        @app.get("/authorize")
        def authorize() -> Response:
            srv.authorize_requests.append(request.args.to_dict())
            return server.create_authorization_response(grant_user=srv.consent_user)

        return app

    def _take_failure(self) -> _Failure | None:
        with self._lock:
            failure = self._failure
            if failure is None:
                return None
            if failure.times is not None:
                failure.times -= 1
                if failure.times <= 0:
                    self._failure = None
            return failure

    def _save(self, token: dict[str, Any], req: Any) -> None:
        grant_id = getattr(req, "capgate_grant_id", None) or secrets.token_urlsafe(8)
        record = Token(
            client_id=req.client.client_id,
            user=getattr(req, "user", None),
            scope=token.get("scope", ""),
            grant_id=grant_id,
            expires_at=time.time() + token["expires_in"],
            access_token=token["access_token"],
            refresh_token=token.get("refresh_token"),
        )
        self.tokens[record.access_token] = record
        if record.refresh_token:
            self.refresh_tokens[record.refresh_token] = record


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


class _ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]  # noqa: RUF012


def _make_code_grant(srv: OAuthServer) -> type:
    class CodeGrant(grants.AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]  # noqa: RUF012

        def save_authorization_code(self, code: str, req: Any) -> None:
            data = req.payload.data
            srv.codes[code] = AuthCode(
                code,
                req.client.client_id,
                req.payload.redirect_uri,
                req.payload.scope or "",
                req.user,
                data.get("code_challenge"),
                data.get("code_challenge_method"),
            )

        def query_authorization_code(self, code: str, client: Client) -> AuthCode | None:
            item = srv.codes.get(code)
            return item if item and item.client_id == client.client_id else None

        def delete_authorization_code(self, authorization_code: AuthCode) -> None:
            srv.codes.pop(authorization_code.code, None)

        def authenticate_user(self, authorization_code: AuthCode) -> str:
            return authorization_code.user

    return CodeGrant


def _make_refresh_grant(srv: OAuthServer) -> type:
    class RefreshGrant(grants.RefreshTokenGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]  # noqa: RUF012
        INCLUDE_NEW_REFRESH_TOKEN = srv.rotate_refresh_tokens

        def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
            token = srv.refresh_tokens.get(refresh_token)
            if token is None or token.grant_id in srv.revoked_grants:
                return None
            if token.refresh_revoked:
                if srv.strict_rotation:  # reuse detected: the whole grant dies
                    srv.revoked_grants.add(token.grant_id)
                return None
            self.request.capgate_grant_id = token.grant_id
            return token

        def authenticate_user(self, refresh_token: Token) -> str | None:
            return refresh_token.user

        def revoke_old_credential(self, refresh_token: Token) -> None:
            if srv.rotate_refresh_tokens:
                refresh_token.refresh_revoked = True

        def issue_token(self, user: str, refresh_token: Token) -> dict[str, Any]:
            token = super().issue_token(user, refresh_token)
            self.request.capgate_grant_id = refresh_token.grant_id
            return token

    return RefreshGrant


def _make_jwt_grant(srv: OAuthServer) -> type:
    class JWTGrant(JWTBearerGrant):
        CLAIMS_OPTIONS = {  # noqa: RUF012
            "iss": {"essential": True},
            "aud": {"essential": True},
            "exp": {"essential": True},
            "iat": {"essential": True},
            "scope": {"essential": True},
        }
        LEEWAY = 5

        def extract_assertion(self, assertion: str) -> tuple[dict, dict]:
            headers, claims = super().extract_assertion(assertion)
            client = srv.clients.get(str(claims.get("iss")))
            if headers.get("alg") != "RS256" or client is None or headers.get("kid") != client.kid:
                raise InvalidGrantError(description="bad assertion header")
            exp, iat = claims.get("exp"), claims.get("iat")
            if not isinstance(exp, int) or not isinstance(iat, int) or exp - iat > 3600:
                raise InvalidGrantError(description="assertion lifetime over one hour")
            self.request.capgate_scope = claims.get("scope", "")
            return headers, claims

        def get_audiences(self) -> list[str]:
            return [srv.token_url]

        def resolve_issuer_client(self, issuer: str) -> Client | None:
            return srv.clients.get(issuer)

        def resolve_client_public_key(self, client: Client) -> RSAKey | None:
            return client.public_key

        def authenticate_user(self, subject: str) -> str | None:
            return subject

        def has_granted_permission(self, client: Client, user: str) -> bool:
            return user in client.subjects

        def validate_requested_scope(self) -> None:
            scope = getattr(self.request, "capgate_scope", "")
            client = self.request.client
            if not scope or not set(scope.split()) <= set(client.scope.split()):
                raise InvalidScopeError()

        def create_token_response(self) -> tuple[int, dict, list]:
            # Google carries the scope as a claim, not a form field.
            token = self.generate_token(
                scope=self.request.capgate_scope,
                user=self.request.user,
                include_refresh_token=False,
            )
            self.save_token(token)
            return 200, token, self.TOKEN_RESPONSE_HEADER

    return JWTGrant


def make_service_account(client_email: str, kid: str) -> tuple[str, bytes]:
    """A Google-style service-account JSON key (fresh RSA key) and its public key PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    document = {
        "type": "service_account",
        "project_id": "capgate-tests",
        "private_key_id": kid,
        "private_key": private_pem,
        "client_email": client_email,
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    return json.dumps(document), public_pem
