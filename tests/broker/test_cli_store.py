"""The store commands through the CLI runner: exit codes, messages, JSON output."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from capgate.broker.home import Home
from capgate.broker.resolution import resolve_names
from capgate.broker.stores import Stores
from capgate.proxy.cli.main import main


def vault_bytes(cli, file_bytes) -> bytes:
    return b"".join(file_bytes(cli.root / name) for name in ("vault.db", "vault.db-wal"))


def test_init_is_idempotent_and_keeps_the_key(cli):
    key = (cli.root / "key").read_bytes()
    result = cli("init", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "home": str(cli.root),
        "key_file": str(cli.root / "key"),
        "control_db": str(cli.root / "control.db"),
        "vault_db": str(cli.root / "vault.db"),
        "created_key": False,
    }
    assert (cli.root / "key").read_bytes() == key


def test_commands_before_init_say_run_init(uninitialised_cli):
    result = uninitialised_cli("cred", "list")
    assert result.exit_code == 1
    assert "run capgate init" in result.stderr


def test_key_file_with_mode_0644_is_refused(cli):
    os.chmod(cli.root / "key", 0o644)
    result = cli("secret", "list")
    assert result.exit_code == 1
    assert "chmod 600" in result.stderr and "Traceback" not in result.output


def test_cred_add_reads_stdin_and_list_show_never_print_the_value(cli):
    result = cli(
        "cred",
        "add",
        "gh",
        "--provider",
        "github_pat",
        "--kind",
        "api_key",
        input="ghp_SECRETVALUE\n",
    )
    assert result.exit_code == 0, result.output
    listed = cli("cred", "list", "--json")
    shown = cli("cred", "show", "gh", "--json")
    human = cli("cred", "show", "gh")
    for out in (result, listed, shown, human):
        assert "ghp_SECRETVALUE" not in out.output
    assert json.loads(shown.stdout)["status"] == "active"
    assert [r["name"] for r in json.loads(listed.stdout)] == ["gh"]


def test_trailing_newline_is_stripped_from_the_value(cli):
    cli("cred", "add", "gh", "--provider", "github_pat", "--kind", "api_key", input="abc\n")
    stores = Stores.open(Home(cli.root))
    org = stores.control.org_id("default")
    row = stores.credentials.get(org, "gh")
    assert stores.credentials.durable_value(row).reveal() == "abc"
    stores.close()


def test_cred_add_from_file(cli, tmp_path):
    value = tmp_path / "sa.json"
    value.write_text(json.dumps({"client_email": "a@b", "private_key": "k"}))
    result = cli(
        "cred",
        "add",
        "sa",
        "--provider",
        "google",
        "--kind",
        "oauth2_jwt_bearer",
        "--scope",
        "https://www.googleapis.com/auth/drive",
        "--from-file",
        str(value),
    )
    assert result.exit_code == 0, result.output
    assert json.loads(cli("cred", "show", "sa", "--json").stdout)["scopes"] == [
        "https://www.googleapis.com/auth/drive"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--provider", "github_pat", "--kind", "basic_auth"], "does not take kind"),
        (["--provider", "nosuch", "--kind", "api_key"], "unknown provider"),
        (["--provider", "github_pat", "--kind", "nosuch"], "unknown kind"),
        (["--provider", "jira", "--kind", "basic_auth"], "config.username"),
        (["--provider", "github_pat", "--kind", "api_key", "--config", "bogus"], "KEY=VALUE"),
        (
            ["--provider", "github_pat", "--kind", "api_key", "--allow-user-override"],
            "allow_user_override",
        ),
    ],
)
def test_bad_credential_input_exits_2_and_leaves_the_vault_unchanged(
    cli, args, message, file_bytes
):
    before = vault_bytes(cli, file_bytes)
    result = cli("cred", "add", "x", *args, input="CANARY-cred-7f3a9c")
    assert result.exit_code == 2
    assert message in result.stderr
    assert "CANARY" not in result.output
    assert vault_bytes(cli, file_bytes) == before


def test_empty_value_exits_2(cli):
    result = cli("cred", "add", "gh", "--provider", "github_pat", "--kind", "api_key", input="")
    assert result.exit_code == 2 and "value" in result.stderr


def test_user_scoped_api_key_exits_2(cli):
    cli("user", "add", "alice")
    result = cli(
        "cred",
        "add",
        "gh",
        "--provider",
        "github_pat",
        "--kind",
        "api_key",
        "--user",
        "alice",
        input="v",
    )
    assert result.exit_code == 2 and "always org-scoped" in result.stderr


def add_code(cli, *extra, input=""):
    return cli(
        "cred",
        "add",
        "mail",
        "--provider",
        "google",
        "--kind",
        "oauth2_authorization_code",
        "--config",
        "client_id=cid",
        *extra,
        input=input,
    )


def test_authorization_code_takes_client_secret_file_and_starts_pending_consent(cli, tmp_path):
    secret_file = tmp_path / "cs"
    secret_file.write_text("client-secret\n")
    result = add_code(cli, "--client-secret-file", str(secret_file), "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["status"] == "pending_consent"
    assert row["provider_config"]["client_secret_ref"].startswith("vault_")
    assert "client-secret" not in result.output


def test_override_rules_through_the_cli(cli):
    cli("user", "add", "alice")
    assert add_code(cli).exit_code == 0  # org row, no override
    refused = add_code(cli, "--user", "alice", input="rt")
    assert refused.exit_code == 1 and "does not allow user overrides" in refused.stderr
    assert cli("cred", "delete", "mail").exit_code == 0
    assert add_code(cli, "--user", "alice", input="rt").exit_code == 0  # user row only
    refused = add_code(cli)
    assert refused.exit_code == 1 and "--allow-user-override" in refused.stderr
    assert add_code(cli, "--allow-user-override").exit_code == 0
    rows = json.loads(cli("cred", "list", "--json").stdout)
    assert sorted((r["user"] or "") for r in rows) == ["", "alice"]
    assert [
        r["user"] for r in json.loads(cli("cred", "list", "--user", "alice", "--json").stdout)
    ] == ["alice"]


def test_duplicate_credential_exits_1(cli):
    args = ("cred", "add", "gh", "--provider", "github_pat", "--kind", "api_key")
    cli(*args, input="a")
    result = cli(*args, input="b")
    assert result.exit_code == 1 and "already exists" in result.stderr


def test_cred_update_reactivates_a_needs_reauth_credential(cli):
    cli("cred", "add", "gh", "--provider", "github_pat", "--kind", "api_key", input="old")
    stores = Stores.open(Home(cli.root))
    row = stores.credentials.get(stores.control.org_id("default"), "gh")
    stores.credentials.set_status(row.id, "needs_reauth", "invalid_grant")
    stores.close()
    result = cli("cred", "update", "gh", "--json", input="new")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "active"


def test_delete_unknown_credential_exits_1(cli):
    result = cli("cred", "delete", "nope")
    assert result.exit_code == 1 and "does not exist" in result.stderr


def test_secret_commands(cli):
    assert cli("secret", "set", "tenant", input="t-1").exit_code == 0
    again = cli("secret", "set", "tenant", input="t-2")
    assert again.exit_code == 1 and "delete it first" in again.stderr
    assert [r["name"] for r in json.loads(cli("secret", "list", "--json").stdout)] == ["tenant"]
    assert cli("secret", "delete", "tenant").exit_code == 0
    assert json.loads(cli("secret", "list", "--json").stdout) == []
    assert cli("secret", "delete", "tenant").exit_code == 1
    assert cli("secret", "set", "empty", input="").exit_code == 2


def test_orgs_do_not_see_each_other(cli):
    cli("secret", "set", "s", input="v", org="a")
    assert json.loads(cli("secret", "list", "--json", org="b").stdout) == []
    assert cli("secret", "delete", "s", org="b").exit_code == 1


def test_workspace_create_prints_id_and_token_once_and_revoke_works(cli):
    assert cli("user", "add", "alice", "--operator").exit_code == 0
    assert json.loads(cli("user", "list", "--json").stdout)[0]["operator"] is True
    created = cli("workspace", "create", "--role", "r", "--user", "alice", "--json")
    assert created.exit_code == 0, created.output
    doc = json.loads(created.stdout)
    assert set(doc) == {"id", "token"} and doc["token"].startswith("cg_")
    listed = cli("workspace", "list", "--json")
    assert doc["token"] not in listed.output
    stores = Stores.open(Home(cli.root))
    assert stores.workspaces.authenticate(doc["token"]).id == doc["id"]
    assert cli("workspace", "revoke", doc["id"]).exit_code == 0
    assert stores.workspaces.authenticate(doc["token"]) is None
    stores.close()
    assert json.loads(cli("workspace", "list", "--json").stdout)[0]["revoked_at"]


def test_workspace_for_unknown_user_exits_1(cli):
    result = cli("workspace", "create", "--role", "r", "--user", "ghost")
    assert result.exit_code == 1 and "capgate user add" in result.stderr


def test_vault_rotate_key_keeps_values_readable(cli):
    cli("secret", "set", "s", input="value")
    result = cli("vault", "rotate-key", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == {"rewrapped": 1}
    stores = Stores.open(Home(cli.root))
    assert stores.secrets.values(stores.control.org_id("default"), ["s"])["s"].reveal() == "value"
    stores.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "alice", "--allow-user-override"], "applies to the org row"),
        (["--config", "client_secret_ref=vault_x"], "set by capgate"),
    ],
)
def test_authorization_code_field_rules_exit_2(cli, args, message, file_bytes):
    cli("user", "add", "alice")
    before = vault_bytes(cli, file_bytes)
    result = add_code(cli, *args, input="rt")
    assert result.exit_code == 2 and message in result.stderr
    assert vault_bytes(cli, file_bytes) == before


def test_client_secret_file_for_an_api_key_exits_2(cli, tmp_path):
    secret_file = tmp_path / "cs"
    secret_file.write_text("cs")
    result = cli(
        "cred",
        "add",
        "gh",
        "--provider",
        "github_pat",
        "--kind",
        "api_key",
        "--client-secret-file",
        str(secret_file),
        input="v",
    )
    assert result.exit_code == 2 and "client_secret" in result.stderr


def test_service_account_that_is_not_json_exits_2_without_echoing_it(cli, canary):
    result = cli(
        "cred", "add", "sa", "--provider", "google", "--kind", "oauth2_jwt_bearer", input=canary
    )
    assert result.exit_code == 2 and "service account" in result.stderr
    assert canary not in result.output


def test_override_table_for_rows_and_workspaces_made_through_the_cli(cli):
    for name in ("alice", "bob"):
        cli("user", "add", name)
    assert add_code(cli, "--allow-user-override").exit_code == 0
    assert add_code(cli, "--user", "alice", input="rt-alice").exit_code == 0
    tokens = {
        name: json.loads(
            cli("workspace", "create", "--role", "r", "--user", name, "--json").stdout
        )["token"]
        for name in ("alice", "bob")
    }
    stores = Stores.open(Home(cli.root))
    for name, expected_owner in (("alice", "alice"), ("bob", None)):
        ws = stores.workspaces.authenticate(tokens[name])
        chosen = resolve_names(
            stores.credentials, org_id=ws.org_id, user_id=ws.user_id, names=["mail"]
        )
        assert chosen["mail"].user == expected_owner
    stores.close()


def test_init_accepts_home_after_the_subcommand(tmp_path):
    root = tmp_path / "late"
    result = CliRunner().invoke(main, ["init", "--home", str(root)])
    assert result.exit_code == 0, result.output
    assert (root / "key").exists() and (root / "vault.db").exists()
