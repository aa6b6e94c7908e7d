"""Live decisions: the console, a real proxy and a real upstream on one home. A member
creates a workspace in the console, requests go through the proxy with its token, and the
decisions page (already open, not reloaded) shows them newest first; the filters apply as
you type; a request path with markup shows as text; another member sees none of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.certs import TestPki, make_test_pki
from tests.e2e.cli_harness import CliHome, ProxyProcess, curl, start_proxy_process
from tests.e2e.upstream import Upstream, start_upstream
from tests.server.conftest import make_home
from tests.server.harness import ServeProcess, api_key, start_serve

from .conftest import API_KEY, ARTIFACTS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CAPS = """\
version: 1
capabilities:
  - name: repos
    match: {{hosts: ["localhost:{port}"], paths: ["/repos/**"]}}
    transforms:
      - auth: {{credential: github, provider: github_pat}}
roles:
  researcher:
    capabilities: [repos]
"""


@dataclass
class Live:
    home: CliHome
    serve: ServeProcess
    proxy: ProxyProcess
    upstream: Upstream
    ca: Path


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    pki: TestPki = make_test_pki(tmp_path / "pki")
    upstream = start_upstream(str(pki.server_cert_pem), str(pki.server_key_pem))
    home = make_home(tmp_path / "home")
    caps = tmp_path / "caps.yaml"
    caps.write_text(CAPS.format(port=upstream.port))
    served = start_serve(home, tmp_path / "logs", "--caps", str(caps))
    proxy = start_proxy_process(home, caps, pki.ca_pem, tmp_path / "logs")
    try:
        with served.client(api_key(home, "alice")) as op:
            made = op.post(
                "/v1/credentials",
                json={
                    "name": "github",
                    "provider": "github_pat",
                    "kind": "api_key",
                    "value": API_KEY,
                },
            )
            assert made.status_code == 201
        yield Live(home, served, proxy, upstream, Path(home.cli("ca").strip()))
    finally:
        proxy.terminate()
        served.stop()
        upstream.stop()
    output = served.output() + proxy.output()
    assert API_KEY not in output


def _link(home: CliHome, user: str) -> str:
    return json.loads(home.cli("console-link", "--user", user, "--json"))["url"]


def test_decisions_arrive_live_and_filter(live: Live, browser) -> None:  # type: ignore[no-untyped-def]
    try:
        bob = browser.new_context(base_url=live.serve.base)
        errors: list[str] = []
        page = bob.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(_link(live.home, "bob"))
        page.goto("/workspaces/new?role=researcher")
        assert page.locator("[data-preflight] [data-missing-ref]").count() == 0
        page.get_by_role("button", name="Create workspace").click()
        token = page.locator("[data-token]").inner_text()

        page.goto("/decisions")
        assert page.locator("tr[data-decision]").count() == 0
        assert page.locator("[data-empty]").is_visible()

        allowed = live.upstream.url("/repos/<b>x</b>", host="localhost")
        denied = live.upstream.url("/admin", host="localhost")
        assert curl(live.proxy.url(token), live.ca, allowed)[0] == 200
        status, _ = curl(live.proxy.url(token), live.ca, denied)
        assert status == 403
        # no reload: the page polls /v1/decisions and adds the rows at the top
        page.wait_for_selector('tr[data-decision="deny"]', timeout=20_000)
        page.wait_for_selector('tr[data-decision="allow"]', timeout=20_000)
        rows = page.locator("tr[data-decision]")
        assert rows.nth(0).get_attribute("data-decision") == "deny"  # newest first
        assert rows.nth(1).get_attribute("data-capability") == "repos"
        assert "<b>x</b>" in rows.nth(1).inner_text()  # text, not markup
        assert page.locator("tr[data-decision] b").count() == 0
        assert not page.locator("[data-empty]").is_visible()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "decisions-live.png"), full_page=True)

        # the filters apply as you type, and as a plain GET form without JS
        page.select_option("#f-decision", "allow")
        assert not rows.nth(0).is_visible() and rows.nth(1).is_visible()
        page.select_option("#f-decision", "")
        page.fill("#f-host", "nomatch.example")
        assert page.locator("tr[data-decision]:visible").count() == 0
        page.goto("/decisions?decision=deny")
        assert page.locator("tr[data-decision]").count() == 1
        assert page.locator('select[name="decision"]').input_value() == "deny"
        assert not [e for e in errors if "Content Security Policy" in e]

        # another member sees none of bob's decisions; the operator sees them all
        carol = browser.new_context(base_url=live.serve.base)
        theirs = carol.new_page()
        theirs.goto(_link(live.home, "carol"))
        theirs.goto("/decisions")
        assert theirs.locator("tr[data-decision]").count() == 0
        alice = browser.new_context(base_url=live.serve.base)
        ops = alice.new_page()
        ops.goto(_link(live.home, "alice"))
        ops.goto("/decisions?capability=repos")
        assert ops.locator("tr[data-decision]").count() == 1
        for html in (page.content(), theirs.content(), ops.content()):
            assert API_KEY not in html
        assert re.search(r"<td>\s*repos\s*</td>", ops.content())
    finally:
        for made in browser.contexts:
            made.close()
