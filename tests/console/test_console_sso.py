"""Console single sign-on in a real browser: `capgate serve --oidc-*` (the control plane's
/login/oidc, tests/server/test_oidc_login.py covers its refusals) against the small OpenID
Connect provider on 127.0.0.1; the sign-in page offers it and it ends on the console
signed in as the user whose email the ID token names.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import make_home
from tests.server.harness import ServeProcess, start_serve
from tests.server.oidc_provider import OidcProvider

from .conftest import ARTIFACTS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SSO_CLIENT = "capgate-console"
SSO_SECRET = "sso-CONSOLEcanaryClientSecret-7e6d5c4b"


@dataclass
class Sso:
    serve: ServeProcess
    provider: OidcProvider


@pytest.fixture(scope="module")
def sso(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sso]:
    root: Path = tmp_path_factory.mktemp("sso")
    with OidcProvider(SSO_CLIENT, SSO_SECRET) as provider:
        home = make_home(root / "home")
        secret_file = root / "oidc-secret"
        secret_file.write_text(SSO_SECRET + "\n")
        served = start_serve(
            home,
            root / "logs",
            "--oidc-issuer",
            provider.issuer,
            "--oidc-client-id",
            SSO_CLIENT,
            "--oidc-client-secret-file",
            str(secret_file),
        )
        try:
            yield Sso(served, provider)
        finally:
            served.stop()
        assert SSO_SECRET not in served.output()


def test_the_sign_in_page_offers_single_sign_on_and_it_signs_in(sso: Sso, browser) -> None:  # type: ignore[no-untyped-def]
    sso.provider.email, sso.provider.email_verified = "Bob@Example.com", True
    context = browser.new_context(base_url=sso.serve.base)
    try:
        page = context.new_page()
        answer = page.goto("/credentials")
        assert answer is not None and answer.status == 401
        link = page.get_by_role("link", name="Sign in with single sign-on")
        assert link.get_attribute("href") == "/login/oidc"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "signin-sso.png"), full_page=True)
        link.click()  # to the provider, which signs the person in at once, and back
        page.wait_for_url(sso.serve.base + "/credentials")
        assert page.locator("[data-user]").inner_text() == "bob"
        assert page.locator('meta[name="csrf-token"]').get_attribute("content")
        assert sso.provider.token_calls, "the code was exchanged at the token endpoint"
        assert SSO_SECRET not in page.content()

        # an address no user has signs nobody in
        page.get_by_role("button", name="Sign out").click()
        sso.provider.email = "nobody@example.com"
        page.goto("/login/oidc")
        page.goto("/credentials")
        assert page.locator("h1").inner_text() == "Sign in to capgate"
    finally:
        context.close()


def test_without_oidc_the_sign_in_page_offers_only_links(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = make_home(tmp_path / "home")
    served = start_serve(home, tmp_path / "logs")
    context = browser.new_context(base_url=served.base)
    try:
        page = context.new_page()
        page.goto("/credentials")
        assert page.get_by_role("link", name="Sign in with single sign-on").count() == 0
        assert "capgate console-link" in page.locator("main").inner_text()
    finally:
        context.close()
        served.stop()


def test_a_callback_carried_to_another_browser_is_refused(sso: Sso) -> None:
    """Login CSRF: a callback URL someone else obtained (their account, their code) does
    not sign in the browser they send it to; the browser that started it still can."""
    sso.provider.email, sso.provider.email_verified = "bob@example.com", True
    base = sso.serve.base
    with (
        httpx.Client(base_url=base, timeout=30, follow_redirects=False) as starter,
        httpx.Client(base_url=base, timeout=30, follow_redirects=False) as victim,
    ):
        start = starter.get("/login/oidc")
        binding = start.headers["set-cookie"].lower()
        assert "capgate_oidc=" in binding and "httponly" in binding and "samesite=lax" in binding
        granted = httpx.get(start.headers["location"], follow_redirects=False)
        path = granted.headers["location"].removeprefix(base)
        calls = len(sso.provider.token_calls)
        carried = victim.get(path)
        assert carried.status_code == 403 and "set-cookie" not in carried.headers
        assert victim.get("/v1/me").status_code == 401
        assert len(sso.provider.token_calls) == calls  # refused before any exchange
        done = starter.get(path)
        assert done.status_code == 303 and starter.get("/v1/me").json()["user"] == "bob"
