"""`GET /v1/roles` and the workspace pre-flight: missing references for the calling user,
with the override rules applied (a user-only row resolves for that user alone; a
pending_consent or needs_reauth row does not resolve)."""

from __future__ import annotations

import pytest

from .conftest import GITHUB, REFRESH, TENANT, World

pytestmark = pytest.mark.e2e

DRIVE = {
    "name": "drive",
    "provider": "google",
    "kind": "oauth2_authorization_code",
    "config": {"client_id": "cid.apps.googleusercontent.com"},
}


def _missing(client, role: str) -> tuple[list[str], list[str]]:
    roles = {r["name"]: r for r in client.get("/v1/roles").json()["roles"]}
    return roles[role]["missing_credentials"], roles[role]["missing_secrets"]


def test_missing_references_follow_the_override_rules(world: World) -> None:
    with world.op() as op, world.bob() as bob, world.carol() as carol:
        assert _missing(bob, "researcher") == (["drive", "github"], ["tenant-id"])
        assert _missing(bob, "reader") == (["github"], ["tenant-id"])

        github = op.post(
            "/v1/credentials",
            json={"name": "github", "provider": "github_pat", "kind": "api_key", "value": GITHUB},
        )
        assert github.status_code == 201
        assert op.post("/v1/secrets", json={"name": "tenant-id", "value": TENANT}).status_code == (
            201
        )
        # bob's own row, still waiting for consent: not resolved yet
        pending = bob.post("/v1/credentials", json={**DRIVE, "user": "bob"})
        assert pending.status_code == 201
        assert _missing(bob, "researcher") == (["drive"], [])
        # with a refresh token it resolves, for bob alone
        put = bob.put(f"/v1/credentials/{pending.json()['id']}/value", json={"value": REFRESH})
        assert put.status_code == 200 and put.json()["status"] == "active"
        assert _missing(bob, "researcher") == ([], [])
        assert _missing(carol, "researcher") == (["drive"], [])

        # the pre-flight of a workspace is the same computation for its user
        ws = op.post("/v1/workspaces", json={"role": "researcher", "user": "carol"}).json()
        assert ws["preflight"] == {"missing_credentials": ["drive"], "missing_secrets": []}
        own = bob.post("/v1/workspaces", json={"role": "researcher"}).json()
        assert own["preflight"] == {"missing_credentials": [], "missing_secrets": []}

        # an org row that allows no override shadows nobody here, because bob's row exists:
        # adding one is refused (the store's rule), and the answer says so
        clash = op.post("/v1/credentials", json={**DRIVE, "value": REFRESH})
        assert clash.status_code == 409 and clash.json()["error"] == "conflict"
        # with overrides allowed, the org row serves carol and bob keeps his own
        org_row = op.post(
            "/v1/credentials", json={**DRIVE, "value": REFRESH, "allow_user_override": True}
        )
        assert org_row.status_code == 201, org_row.text
        assert _missing(carol, "researcher") == ([], [])
        assert _missing(bob, "researcher") == ([], [])
        for row in (org_row, pending, github):
            assert op.delete(f"/v1/credentials/{row.json()['id']}").status_code == 204
        assert op.delete("/v1/secrets/tenant-id").status_code == 204
        assert REFRESH not in op.get("/v1/credentials").text
