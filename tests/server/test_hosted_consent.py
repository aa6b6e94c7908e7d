"""Hosted OAuth consent end to end: a real `capgate serve`, the test authlib authorization
server on 127.0.0.1, and cookie-holding browsers (httpx clients) signed in to the console.

The authorization server grants at once (as if the user clicked Allow) and redirects to
the redirect URI the flow named; the browser then follows that redirect to
`/oauth/callback`. Every refusal must store nothing and a reused or unknown state must not
reach the token endpoint.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.e2e.cli_harness import CliHome
from tests.oauth_server import OAuthServer

from .conftest import CANARIES, CLIENT_SECRET, make_home
from .harness import ServeProcess, api_key, start_serve

pytestmark = pytest.mark.e2e

CLIENT_ID = "capgate-test.apps.googleusercontent.com"


@dataclass
class Consent:
    home: CliHome
    serve: ServeProcess
    oauth: OAuthServer
    keys: dict[str, str]

    @contextlib.contextmanager
    def browser(self, user: str | None) -> Iterator[httpx.Client]:
        """A cookie-holding client, signed in to the console as `user` (None: not at all)."""
        with httpx.Client(base_url=self.serve.base, timeout=30, follow_redirects=False) as client:
            if user is not None:
                link = json.loads(self.home.cli("console-link", "--user", user, "--json"))
                assert client.get(link["url"]).status_code == 303
            yield client

    def credential(self, user: str | None) -> str:
        """A pending oauth2_authorization_code credential (org-scoped or `user`'s)."""
        body: dict[str, object] = {
            "name": f"drive-{secrets.token_hex(3)}",
            "provider": "google",
            "kind": "oauth2_authorization_code",
            "config": {"client_id": CLIENT_ID},
            "client_secret": CLIENT_SECRET,
            "scopes": ["read"],
        }
        if user is not None:
            body["user"] = user
        with self.serve.client(self.keys["alice"]) as op:
            made = op.post("/v1/credentials", json=body)
        assert made.status_code == 201, made.text
        assert made.json()["status"] == "pending_consent"
        return made.json()["id"]

    def start(self, browser: httpx.Client, credential_id: str, **body: str) -> str:
        csrf = browser.get("/v1/me").json()["csrf_token"]
        reply = browser.post(
            f"/v1/credentials/{credential_id}/oauth/start",
            json=body,
            headers={"X-CSRF-Token": csrf},
        )
        assert reply.status_code == 200, reply.text
        assert set(reply.json()) == {"authorization_url", "expires_at"}
        return reply.json()["authorization_url"]

    def authorize(self, authorization_url: str) -> str:
        """The provider's side: grant and return the callback URL it redirects to."""
        with httpx.Client(timeout=30, follow_redirects=False) as provider_tab:
            reply = provider_tab.get(authorization_url)
        assert reply.status_code == 302, reply.text
        callback = reply.headers["location"]
        assert callback.startswith(self.serve.base + "/oauth/callback?")
        return callback

    def status(self, credential_id: str) -> str:
        with self.serve.client(self.keys["alice"]) as op:
            return op.get(f"/v1/credentials/{credential_id}").json()["status"]

    def code_calls(self) -> int:
        return len(self.oauth.grant_calls("authorization_code"))


@pytest.fixture(scope="module")
def consent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consent]:
    root: Path = tmp_path_factory.mktemp("consent")
    with OAuthServer() as oauth:
        oauth.add_client(CLIENT_ID, CLIENT_SECRET)
        home = make_home(root / "home")
        home.extra_env.update(
            {
                "CAPGATE_UNSAFE_TOKEN_ENDPOINTS": json.dumps({"google": oauth.token_url}),
                "CAPGATE_UNSAFE_AUTHORIZE_ENDPOINTS": json.dumps({"google": oauth.authorize_url}),
            }
        )
        served = start_serve(home, root / "logs")
        try:
            keys = {user: api_key(home, user) for user in ("alice", "bob", "carol")}
            yield Consent(home, served, oauth, keys)
        finally:
            served.stop()
        output = served.output()
        assert "WARNING: UNSAFE CAPGATE_UNSAFE_TOKEN_ENDPOINTS" in output
        for canary in CANARIES:
            assert canary not in output


def test_consent_end_to_end_activates_the_users_credential(consent: Consent) -> None:
    cid = consent.credential("bob")
    with consent.browser("bob") as bob:
        url = consent.start(bob, cid)
        query = parse_qs(urlsplit(url).query)
        assert query["code_challenge_method"] == ["S256"]
        assert query["redirect_uri"] == [consent.serve.base + "/oauth/callback"]
        assert query["client_id"] == [CLIENT_ID] and query["access_type"] == ["offline"]
        callback = consent.authorize(url)
        code = parse_qs(urlsplit(callback).query)["code"][0]
        before = consent.code_calls()
        done = bob.get(callback.removeprefix(consent.serve.base))
        assert done.status_code == 303, done.text
        assert done.headers["location"] == f"/credentials/{cid}?connected=1"
        assert consent.code_calls() == before + 1
        call = consent.oauth.grant_calls("authorization_code")[-1]
        assert call.status == 200 and call.form["code_verifier"]
        assert call.form["redirect_uri"] == consent.serve.base + "/oauth/callback"
        assert consent.status(cid) == "active"
        # reused: refused, and the token endpoint is not called again
        again = bob.get(callback.removeprefix(consent.serve.base))
        assert again.status_code == 400 and again.json()["error"] == "consent_failed"
        assert consent.code_calls() == before + 1
    # the access log names the path, never the query (code, state) or a login token
    output = consent.serve.output()
    assert "GET /oauth/callback 303" in output and "GET /login/… 303" in output
    assert code not in output and query["state"][0] not in output and "cgl_" not in output
    # the stored refresh token works: verify mints with it
    with consent.serve.client(consent.keys["bob"]) as api:
        verified = api.post(f"/v1/credentials/{cid}/verify")
        assert verified.status_code == 200, verified.text
        assert verified.json() == {
            "ok": True,
            "status": 200,
            "call": f"POST {consent.oauth.token_url}",
        }
        assert api.get(f"/v1/credentials/{cid}").json()["last_minted_status"] == "ok"


def test_another_signed_in_user_cannot_complete_the_flow(consent: Consent) -> None:
    cid = consent.credential("bob")
    with consent.browser("bob") as bob, consent.browser("carol") as carol:
        callback = consent.authorize(consent.start(bob, cid))
        before = consent.code_calls()
        stolen = carol.get(callback.removeprefix(consent.serve.base))
        assert stolen.status_code == 403
        assert consent.code_calls() == before and consent.status(cid) == "pending_consent"
        # the state is spent: the starter must begin again
        late = bob.get(callback.removeprefix(consent.serve.base))
        assert late.status_code == 400 and consent.code_calls() == before
        assert consent.status(cid) == "pending_consent"


def test_a_browser_not_signed_in_cannot_complete_the_flow(consent: Consent) -> None:
    cid = consent.credential(None)  # an org credential, started by the operator
    with consent.browser("alice") as alice, consent.browser(None) as anonymous:
        callback = consent.authorize(consent.start(alice, cid))
        before = consent.code_calls()
        reply = anonymous.get(callback.removeprefix(consent.serve.base))
        assert reply.status_code == 403 and consent.code_calls() == before
        assert consent.status(cid) == "pending_consent"


def test_provider_error_and_unknown_state_store_nothing(consent: Consent) -> None:
    cid = consent.credential("bob")
    with consent.browser("bob") as bob:
        url = consent.start(bob, cid)
        state = parse_qs(urlsplit(url).query)["state"][0]
        before = consent.code_calls()
        denied = bob.get("/oauth/callback", params={"state": state, "error": "access_denied"})
        assert denied.status_code == 400 and "access_denied" in denied.json()["message"]
        unknown = bob.get("/oauth/callback", params={"state": "forged", "code": "abc"})
        assert unknown.status_code == 400
        nothing = bob.get("/oauth/callback")
        assert nothing.status_code == 400
        assert consent.code_calls() == before and consent.status(cid) == "pending_consent"


def test_return_to_must_be_local(consent: Consent) -> None:
    cid = consent.credential("bob")
    with consent.browser("bob") as bob:
        csrf = bob.get("/v1/me").json()["csrf_token"]
        for target in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
            reply = bob.post(
                f"/v1/credentials/{cid}/oauth/start",
                json={"return_to": target},
                headers={"X-CSRF-Token": csrf},
            )
            assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == "return_to"
        callback = consent.authorize(consent.start(bob, cid, return_to="/roles"))
        done = bob.get(callback.removeprefix(consent.serve.base))
        assert done.status_code == 303 and done.headers["location"] == "/roles"


def test_only_authorization_code_credentials_start_consent(consent: Consent) -> None:
    with consent.serve.client(consent.keys["alice"]) as op:
        made = op.post(
            "/v1/credentials",
            json={
                "name": f"gh-{secrets.token_hex(3)}",
                "provider": "github_pat",
                "kind": "api_key",
                "value": "ghp_x",
            },
        ).json()
        reply = op.post(f"/v1/credentials/{made['id']}/oauth/start", json={})
        assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == "kind"
