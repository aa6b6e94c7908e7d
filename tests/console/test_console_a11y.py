"""An accessibility pass: axe-core (from npm, installed by the Makefile into
tests/console/axe) injected into each main page; no serious or critical violation.

axe is injected as a script, which the console's Content-Security-Policy rightly forbids;
this one browser context bypasses CSP for that (the other tests run with it enforced).
"""

from __future__ import annotations

import json

import pytest

from .conftest import AXE, Console, screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAIN_PAGES = (
    "/credentials",
    "/credentials/new",
    "/credentials/new?provider=google&kind=oauth2_authorization_code&name=drive",
    "/credentials/new?provider=jira",
    "/secrets",
    "/secrets/new?name=tenant-id",
    "/roles",
    "/workspaces",
    "/workspaces/new?role=researcher",
    "/decisions",
    "/audit",
)
BLOCKING = ("serious", "critical")


def _violations(page) -> list[dict]:  # type: ignore[no-untyped-def]
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [v for v in result["violations"] if v.get("impact") in BLOCKING]


def test_no_serious_accessibility_violations_on_the_main_pages(
    browser,  # type: ignore[no-untyped-def]
    console: Console,
) -> None:
    if not AXE.exists():
        pytest.skip("axe-core is not installed: `make venv` runs npm ci in tests/console/axe")
    context = browser.new_context(base_url=console.base, bypass_csp=True)
    try:
        page = context.new_page()
        page.goto("/credentials")
        signed_out = _violations(page)  # the sign-in page
        page.goto(console.link("alice"))
        found = {"/ (signed out)": signed_out}
        for path in MAIN_PAGES:
            answer = page.goto(path)
            assert answer is not None and answer.status == 200, path
            found[path] = _violations(page)
        page.goto(console.link("bob"))
        for path in ("/credentials", "/roles", "/workspaces/new?role=researcher"):
            page.goto(path)
            found[f"{path} (member)"] = _violations(page)
        screenshot(console, page, "a11y-last-page")
    finally:
        context.close()
    problems = {
        path: [
            {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]]}
            for v in violations
        ]
        for path, violations in found.items()
        if violations
    }
    assert not problems, json.dumps(problems, indent=1)
