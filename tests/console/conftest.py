"""The console in a real browser: Debian's Chromium driven by Playwright, a real
`capgate serve` on a home with an operator (alice) and two members (bob, carol), a caps
file, and the authlib test authorization server standing in for Google.

Never `playwright install` (it downloads a browser): the Makefile installs Debian's
chromium; the tests launch /usr/bin/chromium headless. Screenshots of every page go to
test-artifacts/console/ (git-ignored) for people to look at.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.cli_harness import CliHome
from tests.oauth_server import OAuthServer
from tests.server.conftest import make_home
from tests.server.harness import ServeProcess, api_key, start_serve

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parent.parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "console"
AXE = Path(__file__).resolve().parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"

CLIENT_ID = "capgate-console-test.apps.googleusercontent.com"
# Canaries: values that must never appear in a page, a log or a response.
API_KEY = "ghp_CONSOLEcanaryApiKey_0a1b2c3d4e5f6a7b8c9d"
SECRET = "tenant-CONSOLEcanarySecret-5f4e3d2c1b0a"
CLIENT_SECRET = "client-CONSOLEcanaryClientSecret-99aa88bb"
XSS_VALUE = "openai-CONSOLEcanaryValue-1234567890ab"
CANARIES = (API_KEY, SECRET, CLIENT_SECRET, XSS_VALUE)

CAPS = """\
version: 1
capabilities:
  - name: github-api
    match: {hosts: ["api.github.com"]}
    transforms:
      - auth: {credential: github, provider: github_pat}
      - header: {name: X-Tenant, action: set, value: 'secrets["tenant-id"]'}
  - name: drive
    match: {hosts: ["www.googleapis.com"], paths: ["/drive/**"]}
    transforms:
      - auth: {credential: drive, provider: google}
  - name: chat
    match: {hosts: ["slack.com"]}
    transforms:
      - auth: {credential: slack, provider: slack_bot}
roles:
  researcher:
    capabilities: [github-api, drive]
  reader:
    capabilities: [github-api, chat]
"""


@dataclass
class Console:
    home: CliHome
    serve: ServeProcess
    oauth: OAuthServer
    keys: dict[str, str]
    root: Path
    shots: list[Path] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.serve.base

    def link(self, user: str) -> str:
        return json.loads(self.home.cli("console-link", "--user", user, "--json"))["url"]

    def api(self, user: str) -> httpx.Client:
        return self.serve.client(self.keys[user])

    def credential(self, name: str) -> dict | None:
        with self.api("alice") as op:
            rows = op.get("/v1/credentials").json()["credentials"]
        return next((r for r in rows if r["name"] == name), None)

    def store_files(self) -> list[Path]:
        """Every file of the home except the vault (and its key): where no value may be."""
        return [
            p
            for p in self.home.root.rglob("*")
            if p.is_file() and not p.name.startswith("vault.db") and p.name != "key"
        ]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:80] or "page"


def screenshot(console: Console, page, name: str) -> Path:  # type: ignore[no-untyped-def]
    """Save a full-page screenshot as a test artefact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{_slug(name)}.png"
    page.screenshot(path=str(path), full_page=True)
    console.shots.append(path)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium for one test module. Not session-wide: while Playwright's sync API is
    running it holds an event loop in this thread, and later modules' asyncio.run() would
    fail."""
    if not CHROMIUM.exists():
        pytest.fail(
            "/usr/bin/chromium is missing: `make venv` installs Debian's chromium (as root)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    root = tmp_path_factory.mktemp("console")
    with OAuthServer() as oauth:
        oauth.add_client(CLIENT_ID, CLIENT_SECRET)
        home = make_home(root / "home")
        home.extra_env.update(
            {
                "CAPGATE_UNSAFE_TOKEN_ENDPOINTS": json.dumps({"google": oauth.token_url}),
                "CAPGATE_UNSAFE_AUTHORIZE_ENDPOINTS": json.dumps({"google": oauth.authorize_url}),
            }
        )
        caps = root / "caps.yaml"
        caps.write_text(CAPS)
        served = start_serve(home, root / "logs", "--caps", str(caps))
        try:
            keys = {user: api_key(home, user) for user in ("alice", "bob", "carol")}
            yield Console(home, served, oauth, keys, root)
        finally:
            served.stop()
        output = served.output()
        for canary in CANARIES:
            assert canary not in output, "a value reached the server's output"


@pytest.fixture
def context(browser, console: Console) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """A fresh browser profile (no cookies); console errors collected on `context.errors`."""
    made = browser.new_context(base_url=console.base)  # type: ignore[attr-defined]
    made.errors = []  # type: ignore[attr-defined]

    def _watch(page) -> None:  # type: ignore[no-untyped-def]
        page.on(
            "console",
            lambda msg: made.errors.append(msg.text) if msg.type == "error" else None,
        )
        page.on("pageerror", lambda exc: made.errors.append(str(exc)))

    made.on("page", _watch)
    try:
        yield made
    finally:
        made.close()


def sign_in(console: Console, context, user: str):  # type: ignore[no-untyped-def]
    """A page signed in as `user` through a one-time link."""
    page = context.new_page()
    page.goto(console.link(user))
    assert page.url == console.base + "/credentials", page.url
    return page
