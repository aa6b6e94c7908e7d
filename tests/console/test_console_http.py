"""The console over plain HTTP (no browser; in the fast tier): a real `capgate serve`, its
pages for an operator and a member, their headers, the forms' CSRF and field errors, and
no value in any page."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.cli_harness import CliHome
from tests.server.conftest import make_home
from tests.server.harness import ServeProcess, api_key, start_serve

from .conftest import API_KEY, CAPS, SECRET

pytestmark = pytest.mark.e2e

PAGES = (
    "/credentials",
    "/credentials/new",
    "/credentials/new?provider=google",
    "/credentials/new?provider=microsoft&kind=oauth2_client_credentials",
    "/secrets",
    "/secrets/new?name=tenant-id",
    "/roles",
    "/workspaces",
    "/workspaces/new?role=researcher",
    "/decisions",
    "/audit",
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CliHome, ServeProcess]]:
    root: Path = tmp_path_factory.mktemp("console-http")
    home = make_home(root / "home")
    caps = root / "caps.yaml"
    caps.write_text(CAPS)
    serve = start_serve(home, root / "logs", "--caps", str(caps))
    try:
        with serve.client(api_key(home, "alice")) as op:
            made = op.post(
                "/v1/credentials",
                json={"name": "github", "provider": "github_pat", "kind": "api_key",
                      "value": API_KEY},
            )  # fmt: skip
            assert made.status_code == 201
            assert op.post("/v1/secrets", json={"name": "s1", "value": SECRET}).status_code == 201
        yield home, serve
    finally:
        serve.stop()
    assert API_KEY not in serve.output() and SECRET not in serve.output()


@contextlib.contextmanager
def _browser(home: CliHome, serve: ServeProcess, user: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve.base, timeout=30, follow_redirects=False) as client:
        link = json.loads(home.cli("console-link", "--user", user, "--json"))["url"]
        assert client.get(link).status_code == 303
        yield client


def _csrf(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', html)
    assert found
    return found.group(1)


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_every_page_answers_with_its_headers_and_no_value(served, user: str) -> None:  # type: ignore[no-untyped-def]
    home, serve = served
    with _browser(home, serve, user) as browser:
        for path in PAGES:
            reply = browser.get(path)
            assert reply.status_code == 200, (path, reply.text[:300])
            assert reply.headers["content-type"].startswith("text/html")
            policy = reply.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "unsafe-inline" not in policy
            assert reply.headers["x-frame-options"] == "DENY"
            assert reply.headers["x-content-type-options"] == "nosniff"
            assert reply.headers["cache-control"] == "no-store"
            csrf = _csrf(reply.text)
            forms = reply.text.count('method="post"')
            assert reply.text.count(f'name="csrf_token" value="{csrf}"') >= forms
            assert "<script>" not in reply.text  # only <script src=...>
            assert API_KEY not in reply.text and SECRET not in reply.text


def test_signed_out_pages_ask_to_sign_in(served) -> None:  # type: ignore[no-untyped-def]
    _, serve = served
    with serve.client() as anonymous:
        for path in PAGES:
            reply = anonymous.get(path)
            assert reply.status_code == 401 and "capgate console-link" in reply.text
        posted = anonymous.post("/secrets/new", data={"name": "x", "value": SECRET})
        assert posted.status_code == 401


def test_forms_need_the_csrf_token_and_keep_typed_values_but_never_the_value(served) -> None:  # type: ignore[no-untyped-def]
    home, serve = served
    with _browser(home, serve, "alice") as browser:
        csrf = _csrf(browser.get("/credentials").text)
        form = {"name": "gh-2", "provider": "github_pat", "kind": "api_key", "value": API_KEY}
        refused = browser.post("/credentials/new", data=form)
        assert refused.status_code == 403 and refused.json()["error"] == "csrf"
        bad = browser.post(
            "/credentials/new",
            data={**form, "name": "bad name", "csrf_token": csrf},
        )
        assert bad.status_code == 422
        assert 'value="bad name"' in bad.text and API_KEY not in bad.text
        assert 'id="err-name"' in bad.text
        made = browser.post("/credentials/new", data={**form, "csrf_token": csrf})
        assert made.status_code == 303
        assert re.fullmatch(r"/credentials/cred_[0-9a-f]+\?created=1", made.headers["location"])
        page = browser.get(made.headers["location"].split("?")[0]).text
        assert 'data-credential="gh-2" data-status="active"' in page and API_KEY not in page
        # Microsoft's client_id is a GUID: checked beside the field, nothing written
        wrong = browser.post(
            "/credentials/new",
            data={
                "csrf_token": csrf,
                "name": "graph",
                "provider": "microsoft",
                "kind": "oauth2_client_credentials",
                "config.client_id": "not-a-guid",
                "config.tenant_id": "contoso",
                "value": SECRET,
            },
        )
        assert wrong.status_code == 422 and 'id="err-config-client_id"' in wrong.text
        assert 'value="contoso"' in wrong.text and SECRET not in wrong.text
        names = {c["name"] for c in browser.get("/v1/credentials").json()["credentials"]}
        assert "graph" not in names and "gh-2" in names


def test_a_member_cannot_act_for_the_org(served) -> None:  # type: ignore[no-untyped-def]
    home, serve = served
    with _browser(home, serve, "bob") as browser:
        csrf = _csrf(browser.get("/secrets").text)
        assert 'href="/secrets/new"' not in browser.get("/secrets").text
        refused = browser.post("/secrets/new", data={"csrf_token": csrf, "name": "x", "value": "y"})
        assert refused.status_code == 403
        roles = browser.get("/roles").text
        assert '<span class="chip chip-secret chip-plain" data-missing-ref="secret:tenant-id"' in (
            roles
        )
        assert '<a class="chip chip-credential" data-missing-ref="credential:drive"' in roles
