"""The JSON API through a real `capgate serve` process: identity, resources, errors."""

from __future__ import annotations

import json
import secrets
import time

import pytest

from .conftest import CANARIES, GITHUB, TENANT, World
from .harness import api_key, file_bytes

pytestmark = pytest.mark.e2e

CREDENTIAL_FIELDS = {
    "id",
    "name",
    "user",
    "provider",
    "kind",
    "scopes",
    "provider_config",
    "status",
    "last_minted_at",
    "last_minted_status",
    "allow_user_override",
    "created_at",
    "updated_at",
}


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


# --- who is calling -----------------------------------------------------------------------


def test_me_names_user_org_and_role(world: World) -> None:
    with world.op() as op, world.bob() as bob:
        assert op.get("/v1/me").json() == {"user": "alice", "org": "default", "role": "operator"}
        assert bob.get("/v1/me").json() == {"user": "bob", "org": "default", "role": "member"}


@pytest.mark.parametrize(
    "header",
    [None, "Bearer cgk_unknownunknownunknownunknown", "Bearer x", "Basic YWxpY2U6eA==", "cgk_x"],
)
def test_no_or_unknown_key_is_401(world: World, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    with world.serve.client() as anon:
        for path in ("/v1/me", "/v1/credentials", "/v1/users"):
            reply = anon.get(path, headers=headers)
            assert reply.status_code == 401
            assert reply.json()["error"] == "unauthenticated"


def test_revoke_from_another_process_is_401_on_the_next_request(world: World) -> None:
    token = api_key(world.home, "bob", "--name", "to-revoke")
    with world.serve.client(token) as client:
        assert client.get("/v1/me").status_code == 200
        listed = world.home.run("apikey", "list", "--json").stdout  # a subprocess
        key = next(k for k in json.loads(listed) if k["name"] == "to-revoke")
        assert key["last_used_at"] is not None and key["prefix"] == token[:12]
        world.home.run("apikey", "revoke", key["id"])
        reply = client.get("/v1/me")
        assert reply.status_code == 401 and reply.json()["error"] == "unauthenticated"


def test_an_expired_key_is_401(world: World) -> None:
    with world.bob() as bob:
        created = bob.post("/v1/api-keys", json={"name": "short", "expires_in_s": 1})
        assert created.status_code == 201, created.text
        body = created.json()
        assert set(body) == {"id", "token", "user", "name", "expires_at"}
        assert body["token"].startswith("cgk_") and body["user"] == "bob"
    with world.serve.client(body["token"]) as short:
        assert short.get("/v1/me").status_code == 200
        time.sleep(1.2)
        assert short.get("/v1/me").status_code == 401


def test_api_keys_are_stored_as_prefix_and_sha256(world: World) -> None:
    token = api_key(world.home, "carol")
    raw = (world.home.root / "control.db").read_bytes()
    wal = world.home.root / "control.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert token.encode() not in raw
    assert token[:12].encode() in raw  # the lookup prefix


# --- the role table, row by row -----------------------------------------------------------


def test_row_read_metadata_operator_and_member(world: World) -> None:
    with world.op() as op, world.bob() as bob:
        for client in (op, bob):
            assert client.get("/v1/credentials").status_code == 200
            assert client.get("/v1/secrets").status_code == 200
            assert client.get("/v1/roles").status_code == 200


def test_row_org_scoped_credential_and_secret_changes(world: World) -> None:
    name = _name("gh")
    body = {"name": name, "provider": "github_pat", "kind": "api_key", "value": GITHUB}
    with world.op() as op, world.bob() as bob:
        refused = bob.post("/v1/credentials", json=body)
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
        created = op.post("/v1/credentials", json=body)
        assert created.status_code == 201, created.text
        cred = created.json()
        assert set(cred) == CREDENTIAL_FIELDS and cred["user"] is None
        cid = cred["id"]
        for attempt in (
            bob.put(f"/v1/credentials/{cid}/value", json={"value": GITHUB + "x"}),
            bob.delete(f"/v1/credentials/{cid}"),
            bob.post(f"/v1/credentials/{cid}/verify"),
            bob.post(f"/v1/credentials/{cid}/oauth/start", json={}),
        ):
            assert attempt.status_code == 403, attempt.text
        # members read metadata of every credential of the org
        assert bob.get(f"/v1/credentials/{cid}").json()["name"] == name
        put = op.put(f"/v1/credentials/{cid}/value", json={"value": GITHUB + "2"})
        assert put.status_code == 200 and put.json()["status"] == "active"
        assert op.delete(f"/v1/credentials/{cid}").status_code == 204
        assert op.get(f"/v1/credentials/{cid}").status_code == 404

        secret = _name("s")
        assert bob.post("/v1/secrets", json={"name": secret, "value": TENANT}).status_code == 403
        assert op.post("/v1/secrets", json={"name": secret, "value": TENANT}).status_code == 201
        assert bob.delete(f"/v1/secrets/{secret}").status_code == 403
        assert op.delete(f"/v1/secrets/{secret}").status_code == 204


def test_row_user_scoped_credentials(world: World) -> None:
    name = _name("drive")
    own = {
        "name": name,
        "provider": "google",
        "kind": "oauth2_authorization_code",
        "config": {"client_id": "cid.apps.googleusercontent.com"},
    }
    with world.op() as op, world.bob() as bob, world.carol() as carol:
        # a member: only with user = themselves
        assert bob.post("/v1/credentials", json={**own, "user": "carol"}).status_code == 403
        mine = bob.post("/v1/credentials", json={**own, "user": "bob"})
        assert mine.status_code == 201, mine.text
        assert mine.json()["status"] == "pending_consent" and mine.json()["user"] == "bob"
        cid = mine.json()["id"]
        assert carol.delete(f"/v1/credentials/{cid}").status_code == 403
        assert carol.put(f"/v1/credentials/{cid}/value", json={"value": "r"}).status_code == 403
        assert carol.post(f"/v1/credentials/{cid}/oauth/start", json={}).status_code == 403
        assert bob.put(f"/v1/credentials/{cid}/value", json={"value": "r1"}).status_code == 200
        assert bob.delete(f"/v1/credentials/{cid}").status_code == 204
        # an operator: for any user of the org
        theirs = op.post("/v1/credentials", json={**own, "user": "carol"})
        assert theirs.status_code == 201 and theirs.json()["user"] == "carol"
        assert op.delete(f"/v1/credentials/{theirs.json()['id']}").status_code == 204
        # a user of no org of theirs: a field error, nothing written
        nobody = op.post("/v1/credentials", json={**own, "user": "mallory"})
        assert nobody.status_code == 422 and nobody.json()["fields"][0]["field"] == "user"


def test_row_users_and_other_users_api_keys(world: World) -> None:
    user = _name("dave")
    with world.op() as op, world.bob() as bob:
        assert bob.get("/v1/users").status_code == 403
        assert bob.post("/v1/users", json={"name": user, "role": "member"}).status_code == 403
        made = op.post("/v1/users", json={"name": user, "role": "member", "email": "d@x.io"})
        assert made.status_code == 201 and made.json() == {
            "name": user,
            "role": "member",
            "email": "d@x.io",
        }
        assert op.post("/v1/users", json={"name": user, "role": "member"}).json()["error"] == (
            "exists"
        )
        users = op.get("/v1/users").json()["users"]
        assert {"name": "alice", "role": "operator", "email": "alice@example.com"} in users

        # API keys: a member manages their own only
        assert bob.post("/v1/api-keys", json={"name": "x", "user": "carol"}).status_code == 403
        carols = op.post("/v1/api-keys", json={"name": "for-carol", "user": "carol"})
        assert carols.status_code == 201 and carols.json()["user"] == "carol"
        listed = bob.get("/v1/api-keys").json()["api_keys"]
        assert listed and all(k["user"] == "bob" for k in listed)
        assert set(listed[0]) == {
            "id",
            "user",
            "name",
            "prefix",
            "created_at",
            "expires_at",
            "last_used_at",
        }
        assert bob.delete(f"/v1/api-keys/{carols.json()['id']}").status_code == 403
        everyone = {k["user"] for k in op.get("/v1/api-keys").json()["api_keys"]}
        assert {"alice", "bob", "carol"} <= everyone
        assert op.delete(f"/v1/api-keys/{carols.json()['id']}").status_code == 204
        own = bob.post("/v1/api-keys", json={"name": "mine"}).json()
        assert bob.delete(f"/v1/api-keys/{own['id']}").status_code == 204


def test_row_workspaces(world: World) -> None:
    with world.op() as op, world.bob() as bob:
        assert bob.post("/v1/workspaces", json={"role": "reader", "user": "carol"}).status_code == (
            403
        )
        mine = bob.post("/v1/workspaces", json={"role": "reader"})
        assert mine.status_code == 201, mine.text
        ws = mine.json()
        assert set(ws) == {"id", "token", "role", "user", "expires_at", "preflight"}
        assert ws["user"] == "bob" and ws["token"].startswith("cg_")
        carols = op.post("/v1/workspaces", json={"role": "reader", "user": "carol"}).json()
        assert bob.delete(f"/v1/workspaces/{carols['id']}").status_code == 403
        listed = bob.get("/v1/workspaces").json()["workspaces"]
        assert listed and all(w["user"] == "bob" for w in listed)
        assert "token" not in listed[0]
        assert {w["user"] for w in op.get("/v1/workspaces").json()["workspaces"]} >= {
            "bob",
            "carol",
        }
        assert bob.delete(f"/v1/workspaces/{ws['id']}").status_code == 204
        assert op.delete(f"/v1/workspaces/{carols['id']}").status_code == 204
        unknown_role = op.post("/v1/workspaces", json={"role": "nope"})
        assert unknown_role.status_code == 422 and unknown_role.json()["fields"][0]["field"] == (
            "role"
        )


def test_row_decisions_and_audit(world: World) -> None:
    with world.op() as op, world.bob() as bob:
        assert op.get("/v1/audit").status_code == 200
        assert bob.get("/v1/audit").status_code == 403
        assert op.get("/v1/decisions").status_code == 200
        assert bob.get("/v1/decisions").status_code == 200  # their own workspaces'


# --- errors -------------------------------------------------------------------------------


def test_illegal_pair_is_422_with_fields_and_the_vault_is_untouched(world: World) -> None:
    stores = (world.home.root / "vault.db", world.home.root / "control.db")
    with world.op() as op:
        op.get("/v1/me")  # the key's last_used_at is written now, not during the check
        before = file_bytes(*stores)
        reply = op.post(
            "/v1/credentials",
            json={
                "name": "bad",
                "provider": "github_pat",
                "kind": "oauth2_client_credentials",
                "value": GITHUB,
            },
        )
        assert reply.status_code == 422
        body = reply.json()
        assert body["error"] == "invalid" and body["fields"][0]["field"] == "kind"
        unknown = op.post(
            "/v1/credentials",
            json={
                "name": "bad",
                "provider": "openai",
                "kind": "api_key",
                "config": {"nope": "1"},
                "value": GITHUB,
            },
        )
        assert unknown.status_code == 422
        assert unknown.json()["fields"][0]["field"] == "config.nope"
        bad_name = op.post(
            "/v1/credentials",
            json={"name": "no spaces", "provider": "openai", "kind": "api_key", "value": GITHUB},
        )
        assert bad_name.status_code == 422
        bad_scope = op.post(
            "/v1/credentials",
            json={
                "name": "bad",
                "provider": "microsoft",
                "kind": "oauth2_client_credentials",
                "config": {"client_id": "c", "tenant_id": "t"},
                "scopes": ["two words"],
                "value": GITHUB,
            },
        )
        assert bad_scope.status_code == 422
        assert bad_scope.json()["fields"][0]["field"] == "scopes"
        for answer in (reply, unknown, bad_name):
            assert GITHUB not in answer.text
        assert file_bytes(*stores) == before


def test_other_orgs_ids_read_like_missing_ones(world: World) -> None:
    world.home.cli(
        "--org",
        "elsewhere",
        "cred",
        "add",
        "theirs",
        "--provider",
        "github_pat",
        "--kind",
        "api_key",
        stdin=GITHUB + "other",
    )
    listed = json.loads(world.home.cli("--org", "elsewhere", "cred", "list", "--json"))
    theirs = listed[0]["id"]
    with world.op() as op:
        foreign = [
            op.get(f"/v1/credentials/{theirs}"),
            op.delete(f"/v1/credentials/{theirs}"),
            op.put(f"/v1/credentials/{theirs}/value", json={"value": "x"}),
        ]
        missing = [
            op.get("/v1/credentials/cred_0000000000000000"),
            op.delete("/v1/credentials/cred_0000000000000000"),
            op.put("/v1/credentials/cred_0000000000000000/value", json={"value": "x"}),
        ]
        for a, b in zip(foreign, missing, strict=True):
            assert a.status_code == b.status_code == 404
            assert a.json() == b.json()
        assert all(c["name"] != "theirs" for c in op.get("/v1/credentials").json()["credentials"])
    # still there
    assert json.loads(world.home.cli("--org", "elsewhere", "cred", "list", "--json"))


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "bad_request"),
        (b"[1, 2]", 400, "bad_request"),
        (b'"a string"', 400, "bad_request"),
        (b'{"name": "x", "role": "member", "extra": 1}', 422, "invalid"),
        (b'{"role": "member"}', 422, "invalid"),
        (b'{"name": "x", "role": "king"}', 422, "invalid"),
    ],
)
def test_validation_errors_are_json(world: World, content: bytes, status: int, code: str) -> None:
    with world.op() as op:
        reply = op.post("/v1/users", content=content, headers={"Content-Type": "application/json"})
        assert reply.status_code == status, reply.text
        body = reply.json()
        assert body["error"] == code and isinstance(body["fields"], list) and body["message"]


def test_routing_errors_and_size_limit_are_json(world: World) -> None:
    with world.op() as op:
        missing = op.get("/v1/nothing-here")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        wrong = op.put("/v1/me")
        assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
        big = op.post(
            "/v1/secrets",
            content=b'{"name": "big", "value": "' + b"a" * (2 << 20) + b'"}',
            headers={"Content-Type": "application/json"},
        )
        assert big.status_code == 413 and big.json()["error"] == "too_large"

        def chunks():  # no Content-Length: the limit is enforced while reading
            yield b'{"name": "big", "value": "'
            for _ in range(40):
                yield b"a" * 65536
            yield b'"}'

        streamed = op.post(
            "/v1/secrets", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413 and streamed.json()["error"] == "too_large"
        assert "big" not in {s["name"] for s in op.get("/v1/secrets").json()["secrets"]}
        assert op.get("/v1/decisions", params={"workspace": "ws_nothere"}).status_code == 404
        bad_query = op.get("/v1/decisions", params={"limit": "lots"})
        assert bad_query.status_code == 400 and bad_query.json()["error"] == "bad_request"
        assert op.get("/v1/decisions", params={"after": "x"}).status_code == 400


def test_secrets_have_no_update(world: World) -> None:
    name = _name("tenant")
    with world.op() as op:
        assert op.post("/v1/secrets", json={"name": name, "value": TENANT}).status_code == 201
        again = op.post("/v1/secrets", json={"name": name, "value": TENANT + "2"})
        assert again.status_code == 409 and again.json()["error"] == "exists"
        listed = op.get("/v1/secrets").json()["secrets"]
        entry = next(s for s in listed if s["name"] == name)
        assert set(entry) == {"name", "created_at", "updated_at"}
        assert op.delete(f"/v1/secrets/{name}").status_code == 204
        assert op.delete(f"/v1/secrets/{name}").status_code == 404


def test_health_openapi_and_metrics(world: World) -> None:
    with world.serve.client() as anon:
        assert anon.get("/healthz").json() == {"ok": True}
        spec = anon.get("/openapi.json").json()
        assert spec["openapi"].startswith("3.1")
        assert "/v1/credentials/{credential_id}/oauth/start" in spec["paths"]
        metrics = anon.get("/metrics")
        assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]
        for name in (
            "capgate_requests_total",
            "capgate_mints_total",
            "capgate_decision_queue_depth",
        ):
            assert f"# TYPE {name.removesuffix('_total')}" in metrics.text  # the same registry
        root = anon.get("/", follow_redirects=False)
        assert root.status_code in (302, 303, 307) and root.headers["location"] == "/credentials"


def test_caps_check_and_roles(world: World) -> None:
    with world.bob() as bob:
        checked = bob.post(
            "/v1/caps/check",
            content=world.caps.read_text(),
            headers={"Content-Type": "text/plain"},
        )
        assert checked.status_code == 200
        body = checked.json()
        assert body["valid"] is True and body["roles"]["reader"] == ["github-api"]
        broken = bob.post("/v1/caps/check", content="version: 9\n").json()
        assert broken["valid"] is False and broken["errors"]
        roles = {r["name"]: r for r in bob.get("/v1/roles").json()["roles"]}
        assert set(roles) == {"researcher", "reader"}
        reader = roles["reader"]
        assert reader["capabilities"][0] == {
            "name": "github-api",
            "hosts": ["api.github.com"],
            "credentials": ["github"],
            "secrets": ["tenant-id"],
        }


def test_no_canary_in_the_server_output(world: World) -> None:
    output = world.serve.output()
    assert "capgate.server.access" in output  # the access log is there
    control = file_bytes(world.home.root / "control.db")  # rows and audit events
    for canary in CANARIES:
        assert canary not in output
        assert all(canary.encode() not in data for data in control.values())
    with world.op() as op:
        events = op.get("/v1/audit", params={"limit": 1000}).text
    assert '"actor":"api:alice"' in events
    for canary in CANARIES:
        assert canary not in events
