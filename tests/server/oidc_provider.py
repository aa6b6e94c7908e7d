"""A small OpenID Connect provider on 127.0.0.1 for the console's single sign-on tests.

Discovery, `/authorize` (grants at once and redirects back with a code, as if the person
signed in), `/token` (checks the code, redirect URI, client secret and the PKCE S256
verifier, and issues an RS256 ID token), `/jwks`. What the ID token says is set per
test: `email`, `email_verified`, and `audience` (to forge a token for another client).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import RSAKey


@dataclass
class OidcProvider:
    client_id: str
    client_secret: str
    email: str = "alice@example.com"
    email_verified: bool | None = True
    audience: str | None = None  # default: client_id
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "k1"}))
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    token_calls: list[dict[str, str]] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def issuer(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> OidcProvider:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "jwks_uri": self.issuer + "/jwks",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
        }

    def id_token(self, request: dict[str, str]) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience or self.client_id,
            "sub": "person-1",
            "email": self.email,
            "nonce": request["nonce"],
            "iat": now,
            "exp": now + 300,
        }
        if self.email_verified is not None:
            claims["email_verified"] = self.email_verified
        return jwt.encode({"alg": "RS256", "kid": "k1"}, claims, self.key)

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.token_calls.append(form)
        request = self.codes.pop(form.get("code", ""), None)
        if request is None or form.get("redirect_uri") != request["redirect_uri"]:
            return 400, {"error": "invalid_grant"}
        if form.get("client_secret") != self.client_secret:
            return 401, {"error": "invalid_client"}
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if challenge != request["code_challenge"] or request["code_challenge_method"] != "S256":
            return 400, {"error": "invalid_grant"}
        return 200, {
            "access_token": "at",
            "token_type": "Bearer",
            "id_token": self.id_token(request),
        }


def _handler(provider: OidcProvider) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/.well-known/openid-configuration":
                self._json(200, provider.metadata())
            elif parts.path == "/jwks":
                self._json(200, {"keys": [provider.key.as_dict(private=False)]})
            elif parts.path == "/authorize":
                request = {k: v[0] for k, v in parse_qs(parts.query).items()}
                code = secrets.token_urlsafe(16)
                provider.codes[code] = request
                target = (
                    request["redirect_uri"]
                    + "?"
                    + urlencode({"code": code, "state": request["state"]})
                )
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._json(404, {})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            self._json(*provider.token(form))

        def _json(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Handler
