"""Verify: one safe read-only provider call (the provider table's `verify` column), through a
real `capgate serve` and the CLI, against a fake provider on 127.0.0.1 that the verify
calls reach only through CAPGATE_UNSAFE_VERIFY_ENDPOINTS."""

from __future__ import annotations

import http.server
import json
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from capgate.broker.providers import PROVIDERS
from tests.e2e.cli_harness import CliHome

from .conftest import make_home
from .harness import ServeProcess, api_key, file_bytes, start_serve

pytestmark = pytest.mark.e2e

GOOD = "ghp_VERIFYcanaryGood_1a2b3c4d5e6f7a8b9c"
BAD = "ghp_VERIFYcanaryBad_9z8y7x6w5v4u3t2s1r"
SLACK_GOOD = "xoxb-VERIFYcanarySlack-0011223344"


@dataclass
class FakeProvider:
    """GitHub's GET /user and Slack's POST auth.test, answering by the token they get."""

    seen: list[dict[str, str]] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_port}"


def _handler(fake: FakeProvider) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            auth = self.headers.get("Authorization", "")
            fake.seen.append({"method": self.command, "path": self.path, **dict(self.headers)})
            if self.path.startswith("/api/auth.test"):
                body = {"ok": auth == f"Bearer {SLACK_GOOD}"}
                self._send(200, body)  # Slack answers 200 either way
            elif auth == f"Bearer {GOOD}":
                self._send(200, {"login": "octocat"})
            else:
                self._send(401, {"message": "Bad credentials"})

        do_GET = _answer
        do_POST = _answer

        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@dataclass
class Setup:
    home: CliHome
    serve: ServeProcess
    fake: FakeProvider
    key: str
    dead: str


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v3/scopes"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root: Path = tmp_path_factory.mktemp("verify")
    fake = FakeProvider()
    fake.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    dead = _dead_url()
    home = make_home(root / "home")
    home.extra_env["CAPGATE_UNSAFE_VERIFY_ENDPOINTS"] = json.dumps(
        {
            "github_pat": fake.base + "/user",
            "slack_bot": fake.base + "/api/auth.test",
            "sendgrid": dead,
        }
    )
    served = start_serve(home, root / "logs")
    try:
        yield Setup(home, served, fake, api_key(home, "alice"), dead)
    finally:
        served.stop()
        fake.server.shutdown()
        fake.server.server_close()
    output = served.output()
    assert "WARNING: UNSAFE CAPGATE_UNSAFE_VERIFY_ENDPOINTS: github_pat" in output
    for canary in (GOOD, BAD, SLACK_GOOD):
        assert canary not in output


def _create(setup: Setup, provider: str, value: str, **extra: object):
    with setup.serve.client(setup.key) as op:
        return op.post(
            "/v1/credentials",
            json={
                "name": f"{provider.replace('_', '-')}-{secrets.token_hex(3)}",
                "provider": provider,
                "kind": "api_key",
                "value": value,
                **extra,
            },
        )


def test_the_provider_table_has_a_verify_call_for_the_common_providers() -> None:
    assert str(PROVIDERS["github_pat"].verify) == "GET https://api.github.com/user"
    assert str(PROVIDERS["openai"].verify) == "GET https://api.openai.com/v1/models"
    assert str(PROVIDERS["slack_bot"].verify) == "POST https://slack.com/api/auth.test"
    assert PROVIDERS["slack_bot"].verify.json_ok  # type: ignore[union-attr]


def test_verify_success_and_failure_of_a_stored_credential(setup: Setup) -> None:
    good = _create(setup, "github_pat", GOOD).json()
    bad = _create(setup, "github_pat", BAD).json()
    with setup.serve.client(setup.key) as op:
        ok = op.post(f"/v1/credentials/{good['id']}/verify")
        assert ok.status_code == 200
        assert ok.json() == {"ok": True, "status": 200, "call": f"GET {setup.fake.base}/user"}
        seen = setup.fake.seen[-1]
        assert seen["method"] == "GET" and seen["Authorization"] == f"Bearer {GOOD}"
        assert seen["X-GitHub-Api-Version"] == "2022-11-28"
        failed = op.post(f"/v1/credentials/{bad['id']}/verify").json()
        assert failed == {"ok": False, "status": 401, "call": f"GET {setup.fake.base}/user"}
        assert op.get(f"/v1/credentials/{good['id']}").json()["last_minted_status"] == "ok"
        after = op.get(f"/v1/credentials/{bad['id']}").json()
        assert after["last_minted_status"] == "verify_failed:401" and after["last_minted_at"]
        assert after["status"] == "active"
        assert GOOD not in ok.text


def test_verify_on_create_writes_nothing_when_it_fails(setup: Setup) -> None:
    stores = (setup.home.root / "vault.db", setup.home.root / "control.db")
    with setup.serve.client(setup.key) as op:
        op.get("/v1/me")  # the key's last_used_at is written now, not during the check
    before = file_bytes(*stores)
    reply = _create(setup, "github_pat", BAD, verify=True)
    assert reply.status_code == 422
    body = reply.json()
    assert body["error"] == "verify_failed" and body["status"] == 401
    assert BAD not in reply.text
    assert file_bytes(*stores) == before
    made = _create(setup, "github_pat", GOOD, verify=True)
    assert made.status_code == 201 and made.json()["status"] == "active"


def test_slack_needs_ok_true_in_the_body(setup: Setup) -> None:
    good = _create(setup, "slack_bot", SLACK_GOOD).json()
    bad = _create(setup, "slack_bot", "xoxb-wrong").json()
    with setup.serve.client(setup.key) as op:
        assert op.post(f"/v1/credentials/{good['id']}/verify").json()["ok"] is True
        refused = op.post(f"/v1/credentials/{bad['id']}/verify").json()
        assert refused["ok"] is False and refused["status"] == 200
        assert refused["call"] == f"POST {setup.fake.base}/api/auth.test"


def test_no_answer_is_status_null_and_no_verify_call_is_a_field_error(setup: Setup) -> None:
    with setup.serve.client(setup.key) as op:
        dead = _create(setup, "sendgrid", "SG.x").json()
        assert op.post(f"/v1/credentials/{dead['id']}/verify").json() == {
            "ok": False,
            "status": None,
            "call": f"GET {setup.dead}",
        }
        failed = _create(setup, "sendgrid", "SG.y", verify=True)
        assert failed.status_code == 422 and failed.json()["status"] is None
        none = _create(setup, "azure_openai", "k").json()
        reply = op.post(f"/v1/credentials/{none['id']}/verify")
        assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == "provider"


def test_cli_cred_verify_and_add_verify(setup: Setup) -> None:
    name = f"gh-{secrets.token_hex(3)}"
    added = setup.home.run(
        "cred", "add", name, "--provider", "github_pat", "--kind", "api_key", "--verify",
        stdin=GOOD,
    )  # fmt: skip
    assert "WARNING: UNSAFE CAPGATE_UNSAFE_VERIFY_ENDPOINTS" in added.stderr
    done = setup.home.run("cred", "verify", name, "--json")
    assert json.loads(done.stdout) == {
        "ok": True,
        "status": 200,
        "call": f"GET {setup.fake.base}/user",
    }
    bad = f"gh-{secrets.token_hex(3)}"
    refused = setup.home.run(
        "cred", "add", bad, "--provider", "github_pat", "--kind", "api_key", "--verify",
        stdin=BAD, check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "verify call failed" in refused.stderr
    assert BAD not in refused.stdout + refused.stderr
    listed = json.loads(setup.home.cli("cred", "list", "--json"))
    assert bad not in {c["name"] for c in listed}
    setup.home.cli("cred", "add", bad, "--provider", "github_pat", "--kind", "api_key", stdin=BAD)
    failed = setup.home.run("cred", "verify", bad, check=False)
    assert failed.returncode == 1 and "failed" in failed.stdout and "HTTP 401" in failed.stdout
