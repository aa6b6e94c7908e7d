"""The console in Chromium: sign-in, the wizard, Connect, chips, pre-flight, CSRF, escaping,
canaries, security headers; a screenshot of every page in test-artifacts/console/.

The tests of this module share one server (module scope) and run in file order: the
wizard adds `github`, Connect activates bob's `drive`, the chip test adds `tenant-id`.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest

from .conftest import (
    API_KEY,
    CANARIES,
    CLIENT_ID,
    CLIENT_SECRET,
    SECRET,
    XSS_VALUE,
    Console,
    screenshot,
    sign_in,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PAGES = (
    "/credentials",
    "/credentials/new",
    "/credentials/new?provider=github_pat",
    "/credentials/new?provider=google",
    "/credentials/new?provider=google&kind=oauth2_authorization_code",
    "/secrets",
    "/secrets/new",
    "/roles",
    "/workspaces",
    "/workspaces/new?role=researcher",
    "/decisions",
    "/audit",
)


def _csp_errors(context) -> list[str]:  # type: ignore[no-untyped-def]
    return [e for e in context.errors if "Content Security Policy" in e or "Refused" in e]


def test_a_one_time_link_signs_in_once(console: Console, browser, context) -> None:  # type: ignore[no-untyped-def]
    url = console.link("alice")
    page = context.new_page()
    page.goto("/credentials")
    assert page.locator("h1").inner_text() == "Sign in to capgate"
    screenshot(console, page, "signin")
    page.goto(url)
    assert page.url == console.base + "/credentials"
    assert page.locator("[data-user]").inner_text() == "alice"
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token and len(token) == 64
    assert page.locator('input[name="csrf_token"]').first.get_attribute("value") == token

    other = browser.new_context(base_url=console.base)
    try:
        again = other.new_page()
        answer = again.goto(url)
        assert answer is not None and answer.status == 400
        again.goto("/credentials")
        assert again.locator("h1").inner_text() == "Sign in to capgate"
    finally:
        other.close()

    # sign-out ends the session: the next page asks to sign in again
    page.get_by_role("button", name="Sign out").click()
    page.goto("/credentials")
    assert page.locator("h1").inner_text() == "Sign in to capgate"
    assert not _csp_errors(context)


def test_the_wizard_adds_an_api_key_credential_that_is_active(console: Console, context) -> None:  # type: ignore[no-untyped-def]
    page = sign_in(console, context, "alice")
    page.get_by_role("link", name="Add credential").first.click()
    assert page.url.endswith("/credentials/new")
    screenshot(console, page, "wizard-1-provider")
    page.select_option("select[name=provider]", "github_pat")  # JS moves on at once
    page.wait_for_url(re.compile(r"provider=github_pat"))
    # github_pat has one legal kind: straight to its fields, only the fields it takes
    assert page.locator('input[name="kind"]').get_attribute("value") == "api_key"
    assert page.locator('input[name^="config."]').count() == 0
    value = page.locator('input[name="value"]')
    assert value.get_attribute("type") == "password"

    # a field error: shown beside the field, the name kept, the value not filled back
    page.fill('input[name="name"]', "bad name!")
    value.fill(API_KEY)
    page.get_by_role("button", name="Add credential").click()
    error = page.locator("#err-name")
    assert "letters, digits" in error.inner_text()
    assert page.locator('input[name="name"]').get_attribute("aria-invalid") == "true"
    assert page.locator('input[name="name"]').input_value() == "bad name!"
    assert page.locator('input[name="value"]').input_value() == ""
    assert API_KEY not in page.content()
    screenshot(console, page, "wizard-3-field-error")
    assert console.credential("bad name!") is None

    page.fill('input[name="name"]', "github")
    page.fill('input[name="value"]', API_KEY)
    page.get_by_role("button", name="Add credential").click()
    page.wait_for_url(re.compile(r"/credentials/cred_[0-9a-f]+\?created=1$"))
    head = page.locator('.page-head[data-credential="github"]')
    assert head.get_attribute("data-status") == "active"
    assert API_KEY not in page.content()
    screenshot(console, page, "credential-detail")

    page.goto("/credentials")
    row = page.locator('tr[data-credential="github"]')
    assert row.get_attribute("data-status") == "active"
    assert row.locator(".badge").inner_text() == "active"
    screenshot(console, page, "credentials")
    made = console.credential("github")
    assert made is not None and made["provider"] == "github_pat" and made["status"] == "active"
    assert not _csp_errors(context)


def test_the_wizard_offers_only_legal_kinds_and_checks_the_client_id(
    console: Console,
    context,  # type: ignore[no-untyped-def]
) -> None:
    page = sign_in(console, context, "alice")
    page.goto("/credentials/new?provider=google&name=drive-org")
    kinds = page.locator('input[name="kind"]').evaluate_all("els => els.map(e => e.value)")
    assert sorted(kinds) == [
        "oauth2_authorization_code",
        "oauth2_jwt_bearer",
        "oauth2_jwt_bearer_with_subject",
    ]
    screenshot(console, page, "wizard-2-kind")
    page.check('input[value="oauth2_authorization_code"]')
    page.get_by_role("button", name="Next").click()
    assert page.locator('input[name="config.client_id"]').count() == 1
    assert page.locator('input[name="config.client_secret_ref"]').count() == 0
    assert page.locator('input[name="value"]').count() == 0
    page.fill('input[name="config.client_id"]', "not-a-google-client")
    page.fill('input[name="client_secret"]', CLIENT_SECRET)
    page.fill('input[name="scopes"]', "read")
    page.get_by_role("button", name="Save and Connect").click()
    assert "apps.googleusercontent.com" in page.locator("#err-config-client_id").inner_text()
    assert page.locator('input[name="config.client_id"]').input_value() == "not-a-google-client"
    assert page.locator('input[name="scopes"]').input_value() == "read"
    assert page.locator('input[name="client_secret"]').input_value() == ""
    assert page.locator('input[name="name"]').input_value() == "drive-org"
    assert CLIENT_SECRET not in page.content()
    assert console.credential("drive-org") is None  # nothing written
    # a hand-made POST with an illegal pair: the API's refusal, shown at the top of the form
    token = page.locator('meta[name="csrf-token"]').get_attribute("content") or ""
    illegal = page.request.post(
        "/credentials/new",
        form={
            "csrf_token": token,
            "name": "illegal",
            "provider": "github_pat",
            "kind": "oauth2_client_credentials",
            "value": API_KEY,
        },
    )
    assert illegal.status == 422
    assert "does not take kind" in illegal.text() and API_KEY not in illegal.text()
    assert console.credential("illegal") is None


def test_connect_ends_on_the_credential_page_as_active(console: Console, context) -> None:  # type: ignore[no-untyped-def]
    page = sign_in(console, context, "bob")
    page.goto("/roles")
    chip = page.locator('[data-role="researcher"] a[data-missing-ref="credential:drive"]')
    href = chip.get_attribute("href") or ""
    query = parse_qs(urlsplit(href).query)
    assert query == {
        "name": ["drive"],
        "provider": ["google"],
        "kind": ["oauth2_authorization_code"],
        "user": ["bob"],
    }
    chip.click()
    assert page.locator('input[name="name"]').input_value() == "drive"
    assert page.locator('input[name="user"]').input_value() == "bob"
    screenshot(console, page, "wizard-3-connect")
    before = len(console.oauth.grant_calls("authorization_code"))
    page.fill('input[name="config.client_id"]', CLIENT_ID)
    page.fill('input[name="client_secret"]', CLIENT_SECRET)
    page.fill('input[name="scopes"]', "read")
    # Save and Connect: to the provider (the test server grants at once) and back
    page.get_by_role("button", name="Save and Connect").click()
    page.wait_for_url(re.compile(r"/credentials/cred_[0-9a-f]+\?connected=1$"))
    assert page.locator("[data-connected]").is_visible()
    head = page.locator('.page-head[data-credential="drive"]')
    assert head.get_attribute("data-status") == "active"
    assert page.get_by_role("button", name="Reconnect").is_visible()
    assert len(console.oauth.grant_calls("authorization_code")) == before + 1
    screenshot(console, page, "credential-connected")
    made = console.credential("drive")
    assert made is not None and made["user"] == "bob" and made["status"] == "active"
    assert CLIENT_SECRET not in page.content()

    # Reconnect goes round again and stays active
    page.get_by_role("button", name="Reconnect").click()
    page.wait_for_url(re.compile(r"\?connected=1$"))
    assert head.get_attribute("data-status") == "active"
    assert len(console.oauth.grant_calls("authorization_code")) == before + 2
    # Verify mints with the stored grant at the provider's token endpoint
    page.get_by_role("button", name="Verify").click()
    assert page.locator('[data-verified="ok"]').is_visible()
    assert console.oauth.token_url in page.locator("[data-verified]").inner_text()
    # bob's roles page no longer lists drive as missing
    page.goto("/roles")
    assert page.locator('[data-missing-ref="credential:drive"]').count() == 0
    assert not _csp_errors(context)


def test_a_missing_secret_chip_opens_the_form_with_the_name(console: Console, context) -> None:  # type: ignore[no-untyped-def]
    page = sign_in(console, context, "alice")
    page.goto("/roles")
    card = page.locator('[data-role="reader"]')
    assert card.count() == 1
    chip = card.locator('a[data-missing-ref="secret:tenant-id"]')
    assert chip.get_attribute("href") == "/secrets/new?name=tenant-id"
    slack = card.locator('a[data-missing-ref="credential:slack"]')
    assert slack.get_attribute("href") == "/credentials/new?name=slack&provider=slack_bot"
    screenshot(console, page, "roles-operator")
    chip.click()
    assert urlsplit(page.url).path == "/secrets/new"
    assert page.locator('input[name="name"]').input_value() == "tenant-id"
    screenshot(console, page, "secret-new")
    page.fill('input[name="value"]', SECRET)
    page.get_by_role("button", name="Add secret").click()
    assert urlsplit(page.url).path == "/secrets"
    assert page.locator('tr[data-secret="tenant-id"]').count() == 1
    assert SECRET not in page.content()
    screenshot(console, page, "secrets")
    page.goto("/roles")
    assert page.locator('[data-missing-ref="secret:tenant-id"]').count() == 0


def test_a_members_chips_are_plain_text_where_they_cannot_act(console: Console, context) -> None:  # type: ignore[no-untyped-def]
    with console.api("alice") as op:  # an org secret the roles reference, then gone again
        op.delete("/v1/secrets/tenant-id")
    page = sign_in(console, context, "bob")
    page.goto("/roles")
    card = page.locator('[data-role="researcher"]')
    plain = card.locator('span[data-missing-ref="secret:tenant-id"]')
    assert plain.count() == 1
    assert card.locator('a[data-missing-ref="secret:tenant-id"]').count() == 0
    # slack is used by a slack_bot auth transform: an api_key, org-scoped only, so a member
    # cannot create it: plain text; the operator's chip for it is a link
    reader = page.locator('[data-role="reader"]')
    assert reader.locator('span[data-missing-ref="credential:slack"]').count() == 1
    assert reader.locator('a[data-missing-ref="credential:slack"]').count() == 0
    screenshot(console, page, "roles-member")
    # a member may not open the secret form to any effect: it says who can
    page.goto("/secrets/new?name=tenant-id")
    assert page.locator('input[name="value"]').count() == 0
    with console.api("alice") as op:
        assert op.post("/v1/secrets", json={"name": "tenant-id", "value": SECRET}).status_code == (
            201
        )


def test_the_preflight_panel_and_the_token_shown_once(console: Console, context) -> None:  # type: ignore[no-untyped-def]
    with console.api("alice") as op:
        op.delete("/v1/secrets/tenant-id")
    page = sign_in(console, context, "carol")
    page.goto("/workspaces/new?role=researcher")
    panel = page.locator("[data-preflight]")
    refs = panel.locator("[data-missing-ref]").evaluate_all(
        "els => els.map(e => e.getAttribute('data-missing-ref'))"
    )
    # carol has no drive of her own (bob's is bob's); github is the org's and active
    assert sorted(refs) == ["credential:drive", "secret:tenant-id"]
    link = panel.locator('a[data-missing-ref="credential:drive"]')
    assert "user=carol" in (link.get_attribute("href") or "")
    screenshot(console, page, "workspace-new-preflight")
    page.get_by_role("button", name="Create workspace").click()
    token = page.locator("[data-token]").inner_text()
    assert token.startswith("cg_") and len(token) > 20
    lines = page.locator("[data-export]").inner_text()
    assert f"export HTTPS_PROXY=http://agent:{token}@127.0.0.1:8080" in lines.replace("'", "")
    assert "capgate ca --bundle" in lines
    copy = page.locator('button[data-copy="ws-export"]')
    assert copy.is_visible()  # the JS enabled it
    assert page.locator("[data-preflight] [data-missing-ref]").count() == 2
    screenshot(console, page, "workspace-created")
    page.goto("/workspaces")
    assert token not in page.content()  # shown once
    assert page.locator("tr[data-workspace]").count() >= 1
    screenshot(console, page, "workspaces")
    with console.api("alice") as op:
        op.post("/v1/secrets", json={"name": "tenant-id", "value": SECRET})


def test_a_post_without_the_csrf_token_is_refused(console: Console, context) -> None:  # type: ignore[no-untyped-def]
    page = sign_in(console, context, "alice")
    cookies = {c["name"] for c in context.cookies()}
    assert "capgate_session" in cookies
    for sent in ({}, {"csrf_token": "0" * 64}):
        answer = page.request.post(
            "/secrets/new", form={"name": "csrf-probe", "value": SECRET, **sent}
        )
        assert answer.status == 403
        assert answer.json()["error"] == "csrf"
    refused = page.request.post(
        f"/credentials/{console.credential('github')['id']}/delete",  # type: ignore[index]
        form={},
    )
    assert refused.status == 403
    assert console.credential("github") is not None
    with console.api("alice") as op:
        names = {s["name"] for s in op.get("/v1/secrets").json()["secrets"]}
    assert "csrf-probe" not in names
    # the cookie is HttpOnly and SameSite=Lax: page script cannot read it
    cookie = next(c for c in context.cookies() if c["name"] == "capgate_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert page.evaluate("document.cookie") == ""


def test_names_and_values_from_outside_render_as_text(console: Console, context) -> None:  # type: ignore[no-untyped-def]
    script = "<script>window.__xss=1</script>"
    image = '<img src=x onerror="window.__xss=2">'
    with console.api("alice") as op:
        made = op.post(
            "/v1/credentials",
            json={
                "name": "xss",
                "provider": "azure_openai",
                "kind": "api_key",
                "config": {"api_version": script},
                "value": XSS_VALUE,
            },
        )
        assert made.status_code == 201, made.text
    page = sign_in(console, context, "alice")
    page.goto(f"/credentials/{made.json()['id']}")
    html = page.content()
    assert script not in html and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    assert page.get_by_text(script).count() == 1
    # reflected: the wizard's pre-fill and a re-shown form keep the text inert
    page.goto("/credentials/new?provider=github_pat&name=" + image)
    assert page.locator('input[name="name"]').input_value() == image
    assert image not in page.content()
    page.goto("/secrets/new?name=" + script)
    assert page.locator('input[name="name"]').input_value() == script
    page.fill('input[name="value"]', SECRET)
    page.get_by_role("button", name="Add secret").click()
    assert page.locator("#err-name").is_visible()
    assert page.locator('input[name="name"]').input_value() == script
    assert page.evaluate("window.__xss") is None
    screenshot(console, page, "xss-rendered-as-text")


def test_delete_asks_for_confirmation(console: Console, context) -> None:  # type: ignore[no-untyped-def]
    made = console.credential("xss")
    assert made is not None
    page = sign_in(console, context, "alice")
    page.goto(f"/credentials/{made['id']}")
    page.get_by_role("link", name="Delete…").click()
    assert urlsplit(page.url).path == f"/credentials/{made['id']}/delete"
    screenshot(console, page, "credential-delete-confirm")
    page.get_by_role("link", name="Cancel").click()
    assert console.credential("xss") is not None  # looking is not deleting
    page.get_by_role("link", name="Delete…").click()
    page.get_by_role("button", name="Delete credential").click()
    assert page.url.endswith("/credentials?deleted=xss")
    assert page.locator('tr[data-credential="xss"]').count() == 0
    assert "Deleted credential xss" in page.locator("[role=status]").inner_text()
    assert console.credential("xss") is None
    # a crafted link cannot put its own words in the notice
    page.goto("/credentials?deleted=Your+session+expired,+sign+in+at+evil.example")
    assert page.locator("[role=status]").count() == 0
    # a secret, the same way
    with console.api("alice") as op:
        assert op.post("/v1/secrets", json={"name": "old-key", "value": SECRET}).status_code == 201
    page.goto("/secrets")
    page.locator('tr[data-secret="old-key"]').get_by_role("link", name="Delete…").click()
    page.get_by_role("button", name="Delete secret").click()
    assert page.url.endswith("/secrets?deleted=old-key")
    assert page.locator('tr[data-secret="old-key"]').count() == 0


def test_the_forms_work_without_javascript(console: Console, browser) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(base_url=console.base, java_script_enabled=False)
    try:
        page = sign_in(console, context, "alice")
        page.goto("/credentials/new?name=openai-nojs")
        page.select_option("select[name=provider]", "openai")
        page.get_by_role("button", name="Next").click()  # no JS: the button moves on
        assert page.locator('input[name="name"]').input_value() == "openai-nojs"
        assert sorted(
            page.locator('input[name^="config."]').evaluate_all("els => els.map(e => e.name)")
        ) == ["config.organization", "config.project"]
        page.fill('input[name="config.organization"]', "org-nojs")
        page.fill('input[name="value"]', API_KEY)
        page.get_by_role("button", name="Add credential").click()
        assert (
            page.locator('.page-head[data-credential="openai-nojs"]').get_attribute("data-status")
            == "active"
        )
        made = console.credential("openai-nojs")
        assert made is not None and made["provider_config"] == {"organization": "org-nojs"}

        page.goto("/workspaces/new")
        page.select_option("select[name=role]", "reader")
        page.get_by_role("button", name="Check the role").click()
        assert page.locator("[data-preflight]").count() == 1
        page.get_by_role("button", name="Create workspace").click()
        assert page.locator("[data-token]").inner_text().startswith("cg_")
        assert page.locator("[data-export]").is_visible()
        assert not page.locator('button[data-copy="ws-export"]').is_visible()  # JS only
        screenshot(console, page, "workspace-created-nojs")
    finally:
        context.close()


def test_a_member_sees_their_own_view(console: Console, context) -> None:  # type: ignore[no-untyped-def]
    with console.api("alice") as op:  # carol's own consent credential
        carols = op.post(
            "/v1/credentials",
            json={
                "name": "carol-drive",
                "provider": "google",
                "kind": "oauth2_authorization_code",
                "user": "carol",
                "config": {"client_id": CLIENT_ID},
            },
        )
        assert carols.status_code == 201, carols.text
    page = sign_in(console, context, "bob")
    page.goto("/credentials")
    listed = page.locator("tr[data-credential]").evaluate_all(
        "els => els.map(e => e.getAttribute('data-credential'))"
    )
    assert "drive" in listed and "github" in listed and "carol-drive" not in listed
    answer = page.goto(f"/credentials/{carols.json()['id']}")
    assert answer is not None and answer.status == 404
    # an org credential: readable, no buttons that would be refused
    page.goto(f"/credentials/{console.credential('github')['id']}")  # type: ignore[index]
    assert page.get_by_role("button", name="Verify").count() == 0
    assert page.get_by_role("link", name="Delete…").count() == 0
    # the wizard offers a member only the providers with a consent kind, and that kind
    page.goto("/credentials/new")
    offered = page.locator("select[name=provider] option").evaluate_all(
        "els => els.map(e => e.value).filter(Boolean)"
    )
    assert sorted(offered) == ["google", "microsoft"]
    page.goto("/credentials/new?provider=google")
    assert page.locator('input[name="kind"]').get_attribute("value") == "oauth2_authorization_code"
    assert page.locator('input[name="user"]').input_value() == "bob"
    # no audit for members; their nav says so
    assert page.get_by_role("link", name="Audit").count() == 0
    page.goto("/audit")
    assert "for operators" in page.locator("main").inner_text()
    screenshot(console, page, "member-audit")
    # a member's POST for another user is the API's 403, shown as a page
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    refused = page.request.post(
        "/credentials/new",
        form={
            "csrf_token": token or "",
            "name": "sneaky",
            "provider": "google",
            "kind": "oauth2_authorization_code",
            "user": "carol",
            "config.client_id": CLIENT_ID,
        },
    )
    assert refused.status == 403
    assert console.credential("sneaky") is None


def test_security_headers_on_every_page(console: Console, context) -> None:  # type: ignore[no-untyped-def]
    page = sign_in(console, context, "alice")
    for path in (*PAGES, "/static/console.js", "/static/console.css"):
        answer = page.goto(path)
        assert answer is not None and answer.status == 200, path
        headers = answer.headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp and "default-src 'none'" in csp
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        if not path.startswith("/static/"):
            assert headers["cache-control"] == "no-store"
            assert page.locator("script:not([src])").count() == 0  # no inline script
            assert page.locator("[style]").count() == 0  # no inline style
            assert page.locator("[onclick], [onload], [onerror]").count() == 0
            for form in page.locator("form[method=post]").all():
                assert form.locator('input[name="csrf_token"]').count() == 1, path
    assert not _csp_errors(context)


def test_no_canary_in_any_page_and_a_screenshot_of_each(console: Console, context) -> None:  # type: ignore[no-untyped-def]
    for user in ("alice", "bob"):
        page = sign_in(console, context, user)
        credential_pages = {
            f"/credentials/{c['id']}": f"/credential/{c['name']}"  # shots named stably
            for c in console.api(user).get("/v1/credentials").json()["credentials"]
            if user == "alice" or c["user"] in (None, user)  # a member's own view
        }
        for path in (*PAGES, *credential_pages):
            answer = page.goto(path)
            assert answer is not None and answer.status == 200, path
            html = page.content()
            for canary in CANARIES:
                assert canary not in html, (user, path)
            screenshot(console, page, f"{user}-{credential_pages.get(path, path)}")
        page.close()
    for path in console.store_files():
        data = path.read_bytes()
        for canary in CANARIES:
            assert canary.encode() not in data, path
