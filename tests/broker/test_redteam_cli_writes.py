"""Red team: a bad CLI call says what was wrong, exits 2 (bad input) or 1 (state), and
writes nothing; reads write nothing either. Tenant isolation through the CLI.

"Nothing" is checked on the whole content of control.db and vault.db (every row of every
table, read by a child process) and on the set of files in the home.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from capgate.broker.home import Home
from capgate.broker.stores import Stores
from capgate.broker.types import PolicyDecision

from .conftest import CANARY, Cli

_DUMP = r"""
import hashlib, json, sqlite3, sys
out = {}
for name in ("control.db", "vault.db"):
    conn = sqlite3.connect(f"file:{sys.argv[1]}/{name}?mode=ro", uri=True)
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    for table in tables:
        rows = conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
        out[f"{name}:{table}"] = [len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()]
    conn.close()
print(json.dumps(out, sort_keys=True))
"""


def snapshot(root: Path) -> dict:
    """Every table's row count and content hash, read by another process; and the files."""
    done = subprocess.run(
        [sys.executable, "-c", _DUMP, str(root)], capture_output=True, text=True, check=True
    )
    files = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if not p.name.endswith(("-wal", "-shm", ".lock"))  # lock files hold nothing
    )
    return {"tables": json.loads(done.stdout), "files": files}


@pytest.fixture
def seeded(cli: Cli, tmp_path: Path) -> Cli:
    """A home with a user, an api_key credential, an authorization_code credential with a
    user row, a secret and a workspace, all in org `default`."""
    assert cli("user", "add", "alice").exit_code == 0
    add = cli("cred", "add", "gh", "--provider", "github_pat", "--kind", "api_key", input=CANARY)
    assert add.exit_code == 0, add.output
    code = cli(
        "cred", "add", "mail", "--provider", "google", "--kind", "oauth2_authorization_code",
        "--config", "client_id=c", "--allow-user-override",
    )  # fmt: skip
    assert code.exit_code == 0, code.output
    assert cli("secret", "set", "tenant", input=CANARY + "-s").exit_code == 0
    assert cli("workspace", "create", "--role", "r", "--user", "alice").exit_code == 0
    (tmp_path / "sa-bad.json").write_text('{"client_email": "x", "private_key": ""}' + CANARY)
    return cli


ADD_GH = ("cred", "add", "x", "--provider", "github_pat", "--kind", "api_key")
ADD_CODE = ("cred", "add", "mail", "--provider", "google", "--kind", "oauth2_authorization_code")

# (argv, stdin, org, expected exit code)
REJECTED = [
    # illegal input: exit 2
    (("cred", "add", "x", "--provider", "bogus", "--kind", "api_key"), "v", "neworg", 2),
    (("cred", "add", "x", "--provider", "openai", "--kind", "oauth2_jwt_bearer"), "v", None, 2),
    (("cred", "add", "x", "--provider", "openai", "--kind", "nope"), "v", "neworg", 2),
    (("cred", "add", "a/b", "--provider", "openai", "--kind", "api_key"), "v", None, 2),
    (("cred", "add", "..", "--provider", "openai", "--kind", "api_key"), "v", None, 2),
    (("cred", "add", "a b", "--provider", "openai", "--kind", "api_key"), "v", None, 2),
    (("cred", "add", "ünï", "--provider", "openai", "--kind", "api_key"), "v", None, 2),
    (("cred", "add", "", "--provider", "openai", "--kind", "api_key"), "v", None, 2),
    (("cred", "add", "x" * 129, "--provider", "openai", "--kind", "api_key"), "v", None, 2),
    ((*ADD_GH, "--config", "noequals"), "v", "neworg", 2),
    ((*ADD_GH, "--config", "=v"), "v", None, 2),
    ((*ADD_GH, "--config", "client_secret=" + CANARY), "v", "neworg", 2),
    ((*ADD_GH, "--config", "project=a\nb"), "v", None, 2),
    ((*ADD_GH, "--user", "alice"), "v", None, 2),
    ((*ADD_GH, "--allow-user-override"), "v", None, 2),
    ((*ADD_GH, "--scope", "a b"), "v", None, 2),
    (ADD_GH, "", "neworg", 2),
    (ADD_GH, b"\xff\xfe" + CANARY.encode(), "neworg", 2),
    ((*ADD_GH, "--from-file", "/proc/self/mem"), None, "neworg", 2),
    (("cred", "add", "sa", "--provider", "google", "--kind", "oauth2_jwt_bearer"), CANARY, None, 2),
    (
        (
            *ADD_CODE[:2],
            "m2",
            *ADD_CODE[3:],
            "--config",
            "client_id=c",
            "--user",
            "alice",
            "--allow-user-override",
        ),
        None,
        None,
        2,
    ),
    (("cred", "update", "gh", "--client-secret-file", "/etc/hostname"), "v", None, 2),
    (("cred", "update", "gh"), "", None, 2),
    (("secret", "set", "s"), "", "neworg", 2),
    (("secret", "set", "a/b"), "v", "neworg", 2),
    (("secret", "set", "s", "--from-file", "/proc/self/mem"), None, "neworg", 2),
    (("user", "add", "bad name"), None, "neworg", 2),
    (("workspace", "create", "--role", "bad role", "--user", "alice"), None, None, 2),
    (("secret", "list"), None, "bad org", 2),
    # conflicts with stored state: exit 1
    ((*ADD_GH[:2], "gh", *ADD_GH[3:]), "v2", None, 1),
    ((*ADD_CODE, "--config", "client_id=c", "--user", "ghost"), None, None, 1),
    ((*ADD_CODE, "--config", "client_id=c", "--user", "alice"), None, "neworg", 1),
    (("cred", "show", "gh"), None, "neworg", 1),
    (("cred", "delete", "gh"), None, "neworg", 1),
    (("cred", "update", "gh"), "v", "neworg", 1),
    (("cred", "delete", "mail", "--user", "alice"), None, None, 1),
    (("secret", "set", "tenant"), "v", None, 1),
    (("secret", "delete", "tenant"), None, "neworg", 1),
    (("user", "add", "alice"), None, None, 1),
    (("workspace", "create", "--role", "r", "--user", "ghost"), None, "neworg", 1),
    (("workspace", "revoke", "ws_0000000000000000"), None, None, 1),
    # reads in an org that does not exist: exit 0, and the org is not created
    (("cred", "list", "--json"), None, "neworg", 0),
    (("secret", "list", "--json"), None, "neworg", 0),
    (("user", "list", "--json"), None, "neworg", 0),
    (("workspace", "list", "--json"), None, "neworg", 0),
    (("decisions", "--json"), None, "neworg", 0),
]


@pytest.mark.parametrize(("argv", "stdin", "org", "code"), REJECTED, ids=lambda v: repr(v)[:40])
def test_rejected_call_says_why_and_writes_nothing(seeded: Cli, argv, stdin, org, code):
    """Found: every command created its `--org` on first use, before validation, so a
    rejected call (and any read) in a new org wrote an org row; and an unreadable
    --from-file was a traceback. Fixed: only creating commands create the org, and undo
    it when rejected; a read error of the value file is a usage error (exit 2)."""
    before = snapshot(seeded.root)
    result = seeded(*argv, input=stdin, org=org)
    assert result.exit_code == code, result.output
    assert snapshot(seeded.root) == before
    assert "Traceback" not in result.output
    assert CANARY not in result.output
    if code:
        assert result.stderr.lower().startswith(("error", "usage")), result.stderr


def test_config_pair_without_equals_is_not_echoed(cli: Cli):
    """A value pasted into --config by mistake is already in argv; the error must not
    copy it into stderr (CI logs) as well. Found: it was echoed; fixed."""
    result = cli(*ADD_GH, "--config", CANARY, input="v")
    assert result.exit_code == 2
    assert "KEY=VALUE" in result.stderr and CANARY not in result.output


def test_unknown_config_field_names_the_key_not_the_value(cli: Cli):
    result = cli(*ADD_GH, "--config", f"client_secret={CANARY}", input="v")
    assert result.exit_code == 2 and "config.client_secret" in result.stderr
    assert CANARY not in result.output


def test_creating_command_in_a_new_org_creates_it_once(cli: Cli):
    assert cli("secret", "set", "s", input="v", org="fresh").exit_code == 0
    assert cli("secret", "set", "t", input="", org="fresh").exit_code == 2
    listed = json.loads(cli("secret", "list", "--json", org="fresh").stdout)
    assert [r["name"] for r in listed] == ["s"]  # the rejected call did not drop the org


# --- tenant isolation ------------------------------------------------------------------


@pytest.fixture
def two_orgs(cli: Cli) -> tuple[Cli, str]:
    """Org a holds gh, mail (alice's row), secret tenant, alice's workspace; org b has its
    own user alice and nothing else. Returns the CLI and a's workspace id."""
    for org in ("a", "b"):
        assert cli("user", "add", "alice", org=org).exit_code == 0
    cli(*ADD_GH[:2], "gh", *ADD_GH[3:], input=CANARY, org="a")
    cli(*ADD_CODE, "--config", "client_id=c", "--allow-user-override", org="a")
    cli(*ADD_CODE, "--config", "client_id=c", "--user", "alice", input=CANARY, org="a")
    cli("secret", "set", "tenant", input=CANARY, org="a")
    created = cli("workspace", "create", "--role", "r", "--user", "alice", "--json", org="a")
    return cli, json.loads(created.stdout)["id"]


@pytest.mark.parametrize(
    "argv",
    [
        ("cred", "show", "gh"),
        ("cred", "show", "mail", "--user", "alice"),
        ("cred", "delete", "gh"),
        ("cred", "delete", "mail", "--user", "alice"),
        ("cred", "update", "gh"),
        ("cred", "update", "mail", "--user", "alice"),
        ("cred", "connect", "mail", "--user", "alice", "--no-browser", "--timeout", "1"),
        ("secret", "delete", "tenant"),
    ],
    ids=lambda v: " ".join(v)[:30],
)
def test_org_b_cannot_touch_org_a_rows(two_orgs, argv):
    cli, _ = two_orgs
    before = snapshot(cli.root)
    result = cli(*argv, input="v", org="b")
    assert result.exit_code == 1 and "does not exist" in result.stderr, result.output
    assert snapshot(cli.root) == before


def test_org_b_cannot_revoke_or_see_org_a_workspace_or_decisions(two_orgs):
    cli, ws_a = two_orgs
    before = snapshot(cli.root)
    assert cli("workspace", "revoke", ws_a, org="b").exit_code == 1
    assert snapshot(cli.root) == before
    assert json.loads(cli("workspace", "list", "--json", org="b").stdout) == []
    stores = Stores.open(Home(cli.root))
    org_a = stores.control.org_id("a")
    from capgate.broker.decisions import DecisionWriter

    writer = DecisionWriter(stores.home.control_db)
    writer.record(
        PolicyDecision(
            at=1.0, org_id=org_a, workspace_id=ws_a, capability="c", decision="allow",
            reason=None, method="GET", scheme="https", host="h", port=443, path="/",
        )
    )  # fmt: skip
    writer.close()
    stores.close()
    assert cli("decisions", "--json", "--workspace", ws_a, org="b").stdout == ""
    assert cli("decisions", "--json", "--workspace", ws_a, org="a").stdout.count(ws_a) == 1
    for cmd in (("cred", "list", "--json"), ("secret", "list", "--json")):
        assert json.loads(cli(*cmd, org="b").stdout) == []


def test_user_of_the_same_name_in_another_org_gets_only_its_org_rows(two_orgs):
    cli, _ = two_orgs
    created = cli("workspace", "create", "--role", "r", "--user", "alice", "--json", org="b")
    token = json.loads(created.stdout)["token"]
    from capgate.broker.service import Broker

    broker = Broker.open(cli.root)
    try:
        ws = broker.authenticate(token)
        assert ws is not None and ws.org == "b"
        activation = broker.activate(ws, ["gh", "mail"], ["tenant"])
        assert dict(activation.credentials) == {} and dict(activation.secrets) == {}
    finally:
        broker.close()


# --- user-scoped rows ------------------------------------------------------------------


def test_override_toggling_through_the_cli(cli: Cli):
    """Rules: a user row needs an org row that allows overrides (or none); an org row
    without --allow-user-override cannot join existing user rows; deleting the org row
    leaves the user rows (they then resolve for their users alone)."""
    cli("user", "add", "alice")
    base = (*ADD_CODE, "--config", "client_id=c")
    assert cli(*base).exit_code == 0  # org row, no override
    before = snapshot(cli.root)
    assert cli(*base, "--user", "alice", input="rt").exit_code == 1
    assert snapshot(cli.root) == before
    assert cli("cred", "delete", "mail").exit_code == 0
    assert cli(*base, "--user", "alice", input="rt").exit_code == 0  # no org row: allowed
    before = snapshot(cli.root)
    assert cli(*base).exit_code == 1  # org row without override next to a user row
    assert snapshot(cli.root) == before
    assert cli(*base, "--allow-user-override").exit_code == 0
    other = ("cred", "add", "mail", "--provider", "microsoft", "--kind")
    before = snapshot(cli.root)
    result = cli(*other, "oauth2_authorization_code", "--config", "client_id=c",
                 "--config", "tenant_id=t", "--user", "alice", input="rt")  # fmt: skip
    assert result.exit_code == 1 and snapshot(cli.root) == before


# --- exec and migrations ------------------------------------------------------------------

CAPS = """\
version: 1
capabilities:
  - name: api
    match: {hosts: ["api.example.com"]}
roles:
  r:
    capabilities: [api]
"""


@pytest.mark.parametrize(
    ("role", "user"), [("bad role", "newbie"), ("r", "bad user"), ("r/..", "newbie")]
)
def test_exec_with_a_bad_role_or_user_writes_nothing(cli: Cli, tmp_path: Path, role, user):
    """Found: `exec` added the user (and created the org) before the role name was
    checked, so `exec --role 'bad role'` exited 2 having written a user. Fixed: names are
    checked before anything is written."""
    caps = tmp_path / "caps.yaml"
    caps.write_text(CAPS)
    before = snapshot(cli.root)
    result = cli("exec", "--caps", str(caps), "--role", role, "--user", user, "--", "true")
    assert result.exit_code == 2 and result.stderr.startswith("error: "), result.output
    assert snapshot(cli.root) == before


def test_reopening_a_current_home_migrates_nothing_and_a_newer_one_is_refused(cli: Cli):
    cli("secret", "set", "s", input="v")
    before = snapshot(cli.root)
    assert cli("secret", "list").exit_code == 0
    assert cli("init").exit_code == 0
    assert snapshot(cli.root) == before
    subprocess.run(
        [sys.executable, "-c",
         "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('PRAGMA user_version=99');"
         " c.commit(); c.close()", str(cli.root / "control.db")],
        check=True,
    )  # fmt: skip
    result = cli("secret", "list")
    assert result.exit_code == 1 and "upgrade capgate" in result.stderr
    assert "Traceback" not in result.output
