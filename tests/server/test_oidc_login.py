"""Console single sign-on (`serve --oidc-*`) against a real OpenID Connect provider on
127.0.0.1: code + PKCE, the ID token verified, its email matched to `user add --email`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.cli_harness import CliHome

from .conftest import make_home
from .harness import ServeProcess, start_serve
from .oidc_provider import OidcProvider

pytestmark = pytest.mark.e2e

CLIENT_SECRET = "oidc-SERVEcanaryClientSecret-4455667788"


@dataclass
class Sso:
    home: CliHome
    serve: ServeProcess
    provider: OidcProvider

    def sign_in(self, browser: httpx.Client) -> httpx.Response:
        start = browser.get("/login/oidc")
        assert start.status_code == 303
        assert start.headers["location"].startswith(self.provider.issuer + "/authorize?")
        granted = httpx.get(start.headers["location"], follow_redirects=False)
        assert granted.status_code == 302
        callback = granted.headers["location"]
        assert callback.startswith(self.serve.base + "/login/oidc/callback?")
        return browser.get(callback.removeprefix(self.serve.base))

    def browser(self) -> httpx.Client:
        return httpx.Client(base_url=self.serve.base, timeout=30, follow_redirects=False)


@pytest.fixture(scope="module")
def sso(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sso]:
    root: Path = tmp_path_factory.mktemp("sso")
    with OidcProvider("capgate-console", CLIENT_SECRET) as provider:
        home = make_home(root / "home")
        secret_file = root / "oidc-secret"
        secret_file.write_text(CLIENT_SECRET + "\n")
        served = start_serve(
            home,
            root / "logs",
            "--oidc-issuer",
            provider.issuer,
            "--oidc-client-id",
            "capgate-console",
            "--oidc-client-secret-file",
            str(secret_file),
        )
        try:
            yield Sso(home, served, provider)
        finally:
            served.stop()
        assert CLIENT_SECRET not in served.output()


def test_single_sign_on_matches_the_email_to_a_user(sso: Sso) -> None:
    sso.provider.email, sso.provider.email_verified = "Alice@Example.com", True
    with sso.browser() as browser:
        done = sso.sign_in(browser)
        assert done.status_code == 303 and done.headers["location"] == "/credentials"
        assert "httponly" in done.headers["set-cookie"].lower()
        me = browser.get("/v1/me").json()
        assert (me["user"], me["role"]) == ("alice", "operator") and me["csrf_token"]
    call = sso.provider.token_calls[-1]
    assert call["code_verifier"] and call["client_secret"] == CLIENT_SECRET


@pytest.mark.parametrize(
    ("email", "verified", "audience", "status"),
    [
        ("nobody@example.com", True, None, 403),  # no user has it
        ("carol@example.com", True, None, 403),  # carol has no email
        ("bob@example.com", False, None, 400),  # not verified by the provider
        ("bob@example.com", True, "another-client", 400),  # a token for someone else
    ],
)
def test_refused_sign_ins_start_no_session(
    sso: Sso, email: str, verified: bool, audience: str | None, status: int
) -> None:
    sso.provider.email, sso.provider.email_verified = email, verified
    sso.provider.audience = audience
    try:
        with sso.browser() as browser:
            reply = sso.sign_in(browser)
            assert reply.status_code == status, reply.text
            assert "set-cookie" not in reply.headers
            assert browser.get("/v1/me").status_code == 401
    finally:
        sso.provider.audience = None


def test_a_callback_is_single_use(sso: Sso) -> None:
    sso.provider.email, sso.provider.email_verified = "bob@example.com", None
    with sso.browser() as browser:
        start = browser.get("/login/oidc")
        callback = httpx.get(start.headers["location"], follow_redirects=False).headers["location"]
        path = callback.removeprefix(sso.serve.base)
        assert browser.get(path).status_code == 303
        calls = len(sso.provider.token_calls)
        assert browser.get(path).status_code == 400
        assert len(sso.provider.token_calls) == calls  # no second exchange


def test_without_oidc_flags_there_is_no_single_sign_on(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    served = start_serve(home, tmp_path / "logs")
    try:
        with httpx.Client(base_url=served.base, follow_redirects=False) as browser:
            assert browser.get("/login/oidc").status_code == 404
    finally:
        served.stop()
    refused = home.run("serve", "--oidc-issuer", "http://sso.example.test", check=False)
    assert refused.returncode == 2
