"""Console sign-in through a real `capgate serve`: one-time links, the session cookie, CSRF,
logout; and `serve` refusing a public listener without TLS in front."""

from __future__ import annotations

import json
import secrets

import httpx
import pytest

from tests.e2e.cli_harness import CliHome

from .conftest import TENANT, World, make_home
from .harness import start_serve

pytestmark = pytest.mark.e2e


def _link(home: CliHome, user: str, *args: str) -> dict[str, str]:
    return json.loads(home.cli("console-link", "--user", user, "--json", *args))


def _browser(world: World) -> httpx.Client:
    return httpx.Client(base_url=world.serve.base, timeout=30, follow_redirects=False)


def test_a_link_signs_in_once_with_an_httponly_lax_cookie(world: World) -> None:
    link = _link(world.home, "alice")
    assert set(link) == {"url", "expires_at"}
    assert link["url"].startswith(world.serve.base + "/login/cgl_")  # the recorded base
    with _browser(world) as browser:
        reply = browser.get(link["url"])
        assert reply.status_code == 303 and reply.headers["location"] == "/credentials"
        cookie = reply.headers["set-cookie"]
        assert cookie.startswith("capgate_session=cgs_")
        lowered = cookie.lower()
        assert "httponly" in lowered and "samesite=lax" in lowered and "secure" not in lowered
        me = browser.get("/v1/me").json()
        assert me["user"] == "alice" and me["role"] == "operator" and len(me["csrf_token"]) == 64
    with _browser(world) as other:
        again = other.get(link["url"])
        assert again.status_code == 400 and again.json()["error"] == "bad_request"
        assert other.get("/v1/me").status_code == 401


def test_state_changing_requests_from_a_session_need_the_csrf_token(world: World) -> None:
    with _browser(world) as browser:
        browser.get(_link(world.home, "alice")["url"])
        csrf = browser.get("/v1/me").json()["csrf_token"]
        name = f"s-{secrets.token_hex(3)}"
        body = {"name": name, "value": TENANT}
        missing = browser.post("/v1/secrets", json=body)
        assert missing.status_code == 403 and missing.json()["error"] == "csrf"
        wrong = browser.post("/v1/secrets", json=body, headers={"X-CSRF-Token": "0" * 64})
        assert wrong.status_code == 403 and wrong.json()["error"] == "csrf"
        assert name not in {s["name"] for s in browser.get("/v1/secrets").json()["secrets"]}
        done = browser.post("/v1/secrets", json=body, headers={"X-CSRF-Token": csrf})
        assert done.status_code == 201
        gone = browser.delete(f"/v1/secrets/{name}", headers={"X-CSRF-Token": csrf})
        assert gone.status_code == 204
    # an API key needs no CSRF token, and a session's token means nothing to another session
    with _browser(world) as second:
        second.get(_link(world.home, "alice")["url"])
        refused = second.post(
            "/v1/secrets", json={"name": "x", "value": "y"}, headers={"X-CSRF-Token": csrf}
        )
        assert refused.status_code == 403


def test_the_me_of_an_api_key_has_no_csrf_token(world: World) -> None:
    with world.op() as op:
        assert "csrf_token" not in op.get("/v1/me").json()


def test_logout_ends_the_session(world: World) -> None:
    with _browser(world) as browser:
        browser.get(_link(world.home, "bob")["url"])
        session = browser.cookies["capgate_session"]
        assert browser.get("/v1/me").json()["user"] == "bob"
        out = browser.get("/logout")
        assert out.status_code == 303
        assert browser.get("/v1/me").status_code == 401
    with httpx.Client(base_url=world.serve.base, cookies={"capgate_session": session}) as replay:
        assert replay.get("/v1/me").status_code == 401


def test_a_session_of_a_member_is_held_to_the_role_table(world: World) -> None:
    with _browser(world) as browser:
        browser.get(_link(world.home, "bob")["url"])
        csrf = browser.get("/v1/me").json()["csrf_token"]
        made = browser.post(
            "/v1/secrets", json={"name": "nope", "value": "v"}, headers={"X-CSRF-Token": csrf}
        )
        assert made.status_code == 403 and made.json()["error"] == "forbidden"


def test_https_public_url_makes_the_cookie_secure(tmp_path) -> None:
    home = make_home(tmp_path / "home")
    served = start_serve(home, tmp_path / "logs", "--public-url", "https://cg.example.test")
    try:
        link = _link(home, "alice")
        assert link["url"].startswith("https://cg.example.test/login/")
        path = link["url"].removeprefix("https://cg.example.test")
        with httpx.Client(base_url=served.base, follow_redirects=False) as browser:
            reply = browser.get(path)
            assert reply.status_code == 303
            assert "secure" in reply.headers["set-cookie"].lower()
    finally:
        served.stop()


@pytest.mark.parametrize(
    "extra",
    [(), ("--public-url", "http://cg.example.test")],
)
def test_serve_refuses_a_public_listener_without_tls_in_front(tmp_path, extra) -> None:
    home = make_home(tmp_path / "home")
    done = home.run("serve", "--listen", "0.0.0.0:0", *extra, check=False, timeout=30)
    assert done.returncode == 2
    assert "--insecure-public" in done.stderr and "not loopback" in done.stderr


def test_serve_refuses_an_invalid_caps_file(tmp_path) -> None:
    home = make_home(tmp_path / "home")
    caps = tmp_path / "caps.yaml"
    caps.write_text("version: 7\n")
    done = home.run("serve", "--caps", str(caps), check=False, timeout=30)
    assert done.returncode == 1 and "not a valid caps file" in done.stderr
