"""`capgate cred connect`: authorization code + PKCE end to end against a loopback server.

The "browser" is an httpx client that opens the authorization URL and follows the
server's redirect to capgate's loopback callback, exactly as a real browser would.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from capgate.broker.consent import Consent
from capgate.broker.credential_rows import NEEDS_REAUTH
from capgate.broker.home import Home
from capgate.broker.oauth import Endpoints
from capgate.broker.providers import PROVIDERS
from capgate.broker.service import Broker
from capgate.broker.stores import Stores
from capgate.broker.types import ResolvedCredential
from tests.broker.oauth_harness import point_at
from tests.oauth_server import OAuthServer


class Browser:
    """Stands in for `webbrowser.open`: visits the URL in a thread, following redirects."""

    def __init__(self, *, forged_first: bool = False) -> None:
        self.forged_first = forged_first
        self.responses: list[httpx.Response] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, url: str) -> bool:
        thread = threading.Thread(target=self._visit, args=(url,), daemon=True)
        thread.start()
        self.threads.append(thread)
        return True

    def _visit(self, url: str) -> None:
        with httpx.Client(follow_redirects=True, timeout=5) as client:
            if self.forged_first:  # someone else's redirect, with the wrong state
                redirect = parse_qs(urlsplit(url).query)["redirect_uri"][0]
                forged = client.get(redirect, params={"code": "evil", "state": "wrong"})
                self.responses.append(forged)
            self.responses.append(client.get(url))


@pytest.fixture
def server(monkeypatch):
    with OAuthServer() as srv:
        srv.add_client("web-1", "csecret")
        point_at(monkeypatch, srv)
        yield srv


@pytest.fixture
def browser(monkeypatch) -> Browser:
    fake = Browser()
    monkeypatch.setattr("capgate.proxy.cli.oauth.webbrowser.open", fake)
    return fake


@pytest.fixture
def drive(cli, tmp_path: Path) -> str:
    """A pending google authorization-code credential, added through the CLI."""
    assert cli("user", "add", "alice").exit_code == 0
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("csecret\n")
    result = cli(
        "cred", "add", "drive", "--provider", "google", "--kind", "oauth2_authorization_code",
        "--scope", "read", "--config", "client_id=web-1", "--client-secret-file", str(secret_file),
        input="",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return "drive"


def stored_refresh_token(root: Path, name: str) -> tuple[str, str]:
    stores = Stores.open(Home(root))
    try:
        row = stores.credentials.get(stores.control.org_id("default"), name)
        value = stores.credentials.durable_value(row)
        return row.status, value.reveal() if value else ""
    finally:
        stores.close()


def test_connect_runs_pkce_consent_and_activates_the_credential(server, browser, cli, drive):
    result = cli("cred", "connect", drive, "--timeout", "10")
    assert result.exit_code == 0, result.output
    assert "connected" in result.stdout
    assert "WARNING: UNSAFE" in result.stderr
    (authorize,) = server.authorize_requests
    assert authorize["code_challenge_method"] == "S256" and authorize["code_challenge"]
    assert authorize["access_type"] == "offline" and authorize["prompt"] == "consent"
    assert authorize["redirect_uri"].startswith("http://127.0.0.1:")
    assert urlsplit(authorize["redirect_uri"]).path == "/oauth/callback"
    (exchange,) = server.calls
    assert exchange.grant_type == "authorization_code" and exchange.form["code_verifier"]
    assert browser.responses[-1].status_code == 200
    status, refresh = stored_refresh_token(cli.root, drive)
    assert status == "active" and refresh in server.refresh_tokens


def test_the_connected_credential_mints(server, browser, cli, drive):
    assert cli("cred", "connect", drive, "--timeout", "10").exit_code == 0
    created = cli("workspace", "create", "--role", "agent", "--user", "alice", "--json")
    token = json.loads(created.stdout)["token"]
    broker = Broker.open(cli.root)
    try:
        activation = broker.activate(broker.authenticate(token), ["drive"], [])
        outcome = asyncio.run(broker.mint(activation, "drive"))
    finally:
        broker.close()
    assert outcome.ok
    access = outcome.wire.headers[0][1].reveal().removeprefix("Bearer ")
    assert server.token_valid(access)


def test_rerunning_connect_recovers_needs_reauth(server, browser, cli, drive):
    assert cli("cred", "connect", drive, "--timeout", "10").exit_code == 0
    stores = Stores.open(Home(cli.root))
    row = stores.credentials.get(stores.control.org_id("default"), drive)
    stores.credentials.set_status(row.id, NEEDS_REAUTH, "invalid_grant")
    stores.close()
    _, before = stored_refresh_token(cli.root, drive)
    result = cli("cred", "connect", drive, "--timeout", "10")
    assert result.exit_code == 0, result.output
    status, after = stored_refresh_token(cli.root, drive)
    assert status == "active" and after != before


def test_a_redirect_with_the_wrong_state_is_refused(server, monkeypatch, cli, drive):
    browser = Browser(forged_first=True)
    monkeypatch.setattr("capgate.proxy.cli.oauth.webbrowser.open", browser)
    result = cli("cred", "connect", drive, "--timeout", "10")
    assert result.exit_code == 0, result.output
    forged, real = browser.responses
    assert forged.status_code == 400 and real.status_code == 200
    assert all(c.form.get("code") != "evil" for c in server.calls)


def test_a_denied_consent_fails_and_stores_nothing(server, browser, cli, drive, monkeypatch):
    def deny(url: str) -> bool:
        params = parse_qs(urlsplit(url).query)
        query = {"error": "access_denied", "state": params["state"][0]}
        return browser(f"{params['redirect_uri'][0]}?{httpx.QueryParams(query)}")

    monkeypatch.setattr("capgate.proxy.cli.oauth.webbrowser.open", deny)
    result = cli("cred", "connect", drive, "--timeout", "10")
    assert result.exit_code == 1
    assert "access_denied" in result.stderr
    assert stored_refresh_token(cli.root, drive) == ("pending_consent", "")


def test_connect_refuses_other_kinds(cli):
    assert cli("cred", "add", "gh", "--provider", "github_pat", "--kind", "api_key",
               input="ghp_x\n").exit_code == 0  # fmt: skip
    result = cli("cred", "connect", "gh", "--no-browser", "--timeout", "1")
    assert result.exit_code == 2


def test_microsoft_consent_asks_for_offline_access():
    cred = ResolvedCredential(
        id="c", org_id="o", name="mail", provider="microsoft", kind="oauth2_authorization_code",
        user_id=None, status="pending_consent", scopes=("Mail.Read",),
        provider_config={"client_id": "app", "tenant_id": "contoso", "cloud": "usgov"},
    )  # fmt: skip
    with Consent(
        PROVIDERS["microsoft"], cred, client_secret=None, endpoints=Endpoints.fixed()
    ) as consent:
        url = consent.authorization_url()
    parts = urlsplit(url)
    assert parts.netloc == "login.microsoftonline.us"
    assert parts.path == "/contoso/oauth2/v2.0/authorize"
    assert parse_qs(parts.query)["scope"] == ["Mail.Read offline_access"]
