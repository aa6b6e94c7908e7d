"""Console single sign-on: a real `capgate serve --oidc-*` against the authlib test server
acting as an OpenID Connect provider (discovery, JWKS, RS256 ID tokens with a nonce).

The provider signs in `srv.consent_user` at once (as if the person typed their password);
its `email` claim picks the capgate user. Every refusal leaves the browser signed out.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.e2e.cli_harness import CAPGATE, CliHome
from tests.oauth_server import OAuthServer
from tests.server.conftest import make_home
from tests.server.harness import ServeProcess, start_serve

from .conftest import ARTIFACTS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SSO_CLIENT = "capgate-console"
SSO_SECRET = "sso-CONSOLEcanaryClientSecret-7e6d5c4b"


@dataclass
class Sso:
    home: CliHome
    serve: ServeProcess
    idp: OAuthServer

    @contextlib.contextmanager
    def browser(self) -> Iterator[httpx.Client]:
        with httpx.Client(base_url=self.serve.base, timeout=30, follow_redirects=False) as c:
            yield c

    def to_provider(self, browser: httpx.Client) -> str:
        """/sso/start: the authorization URL the browser is sent to."""
        reply = browser.get("/sso/start")
        assert reply.status_code == 303, reply.text
        return reply.headers["location"]

    def provider_grants(self, authorization_url: str) -> str:
        with httpx.Client(timeout=30, follow_redirects=False) as tab:
            reply = tab.get(authorization_url)
        assert reply.status_code == 302, reply.text
        callback = reply.headers["location"]
        assert callback.startswith(self.serve.base + "/sso/callback?")
        return callback.removeprefix(self.serve.base)

    def signed_in_as(self, browser: httpx.Client) -> str | None:
        me = browser.get("/v1/me")
        return me.json()["user"] if me.status_code == 200 else None

    def code_calls(self) -> int:
        return len(self.idp.grant_calls("authorization_code"))


@pytest.fixture(scope="module")
def sso(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sso]:
    root = tmp_path_factory.mktemp("sso")
    with OAuthServer() as idp:
        idp.add_client(SSO_CLIENT, SSO_SECRET, scope="openid email")
        idp.emails = {"idp-bob": "Bob@Example.com", "idp-alice": "alice@example.com"}
        idp.consent_user = "idp-bob"
        home = make_home(root / "home")
        secret_file = root / "oidc-secret"
        secret_file.write_text(SSO_SECRET + "\n")
        served = start_serve(
            home,
            root / "logs",
            "--oidc-issuer",
            idp.issuer,
            "--oidc-client-id",
            SSO_CLIENT,
            "--oidc-client-secret-file",
            str(secret_file),
        )
        try:
            yield Sso(home, served, idp)
        finally:
            served.stop()
        output = served.output()
        assert SSO_SECRET not in output
        for call in idp.calls:  # no code, token or claim in the server's log either
            for value in call.form.values():
                if len(value) > 12:
                    assert value not in output


@pytest.fixture(autouse=True)
def _reset(sso: Sso) -> Iterator[None]:
    sso.idp.consent_user = "idp-bob"
    sso.idp.id_token_claims = {}
    yield
    sso.idp.id_token_claims = {}


def test_sign_in_through_the_provider_in_a_real_browser(sso: Sso, browser) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(base_url=sso.serve.base)
    try:
        page = context.new_page()
        page.goto("/credentials")
        link = page.get_by_role("link", name="Sign in with single sign-on")
        assert link.is_visible()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "signin-sso.png"), full_page=True)
        before = sso.code_calls()
        link.click()
        page.wait_for_url(sso.serve.base + "/credentials")
        assert page.locator("[data-user]").inner_text() == "bob"  # Bob@Example.com
        assert sso.code_calls() == before + 1
    finally:
        context.close()
    call = sso.idp.grant_calls("authorization_code")[-1]
    assert call.status == 200 and call.form["code_verifier"]
    asked = sso.idp.authorize_requests[-1]
    assert asked["code_challenge_method"] == "S256" and asked["nonce"]
    assert asked["redirect_uri"] == sso.serve.base + "/sso/callback"
    assert set(asked["scope"].split()) == {"openid", "email"}


def test_a_callback_works_once_and_only_in_the_browser_that_started_it(sso: Sso) -> None:
    with sso.browser() as mine, sso.browser() as other:
        callback = sso.provider_grants(sso.to_provider(mine))
        stolen = other.get(callback)  # no binding cookie: refused, no token call
        assert stolen.status_code == 403
        assert sso.signed_in_as(other) is None
        before = sso.code_calls()
        done = mine.get(callback)
        assert done.status_code == 303 and done.headers["location"] == "/credentials"
        cookie = done.headers["set-cookie"].lower()
        assert "capgate_session=cgs_" in cookie and "httponly" in cookie
        assert "samesite=lax" in cookie
        assert sso.signed_in_as(mine) == "bob"
        assert sso.code_calls() == before + 1
        again = mine.get(callback)
        assert again.status_code == 403
        assert sso.code_calls() == before + 1  # a used state never reaches the provider


def test_a_second_flow_in_one_browser_does_not_accept_the_first_state(sso: Sso) -> None:
    with sso.browser() as browser:
        first = sso.provider_grants(sso.to_provider(browser))
        sso.to_provider(browser)  # a newer start replaces the binding
        assert browser.get(first).status_code == 403
        assert sso.signed_in_as(browser) is None


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"email": "nobody@example.com"}, "no capgate user"),
        ({"email_verified": False}, "not verified"),
        ({"aud": ["another-client"]}, "does not verify"),
        ({"iss": "https://evil.example"}, "does not verify"),
        ({"nonce": "not-the-nonce"}, "does not verify"),
        ({"exp": 1_000_000}, "does not verify"),
    ],
)
def test_refused_sign_ins_sign_nobody_in(sso: Sso, change: dict, why: str) -> None:
    sso.idp.id_token_claims = change
    with sso.browser() as browser:
        reply = browser.get(sso.provider_grants(sso.to_provider(browser)))
        assert reply.status_code in (400, 403)
        assert why in reply.text
        assert "capgate_session" not in reply.headers.get("set-cookie", "")
        assert sso.signed_in_as(browser) is None


def test_a_provider_error_and_a_bad_state_are_refused(sso: Sso) -> None:
    with sso.browser() as browser:
        url = sso.to_provider(browser)
        state = parse_qs(urlsplit(url).query)["state"][0]
        before = sso.code_calls()
        assert browser.get("/sso/callback", params={"error": "access_denied"}).status_code == 400
        assert (
            browser.get("/sso/callback", params={"state": state + "x", "code": "c"}).status_code
            == 403
        )
        assert sso.code_calls() == before
        assert sso.signed_in_as(browser) is None


def test_serve_checks_the_oidc_options(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    secret = tmp_path / "s"
    secret.write_text("x")
    empty = tmp_path / "empty"
    empty.write_text("")
    for args in (
        ["--oidc-issuer", "https://idp.example"],
        ["--oidc-issuer", "http://idp.example", "--oidc-client-id", "c",
         "--oidc-client-secret-file", str(secret)],
        ["--oidc-issuer", "https://idp.example", "--oidc-client-id", "c",
         "--oidc-client-secret-file", str(empty)],
        ["--oidc-issuer", "https://idp.example", "--oidc-client-id", "c",
         "--oidc-client-secret-file", str(tmp_path / "missing")],
    ):  # fmt: skip
        done = subprocess.run(
            [*CAPGATE, "serve", "--listen", "127.0.0.1:0", *args],
            env=home.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (args, done.stderr)
        assert "oidc" in done.stderr
