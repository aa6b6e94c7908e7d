"""Red team: deletion really removes ciphertext, key files in bad states fail cleanly,
key rotation, agent tokens, concurrent CLI writers, and no value in any plain file."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from capgate.broker import workspaces as workspaces_module
from capgate.broker.errors import VaultError
from capgate.broker.home import Home, encode_key, generate_key
from capgate.broker.service import Broker
from capgate.broker.stores import Stores

from .conftest import CANARY, Cli, read_outside

CAPGATE = [sys.executable, "-m", "capgate.proxy"]

_ENTRIES = r"""
import json, sqlite3, sys
conn = sqlite3.connect(f"file:{sys.argv[1]}/vault.db?mode=ro", uri=True)
rows = conn.execute("SELECT ref, kek_id, wrapped_key, ciphertext FROM entries").fetchall()
print(json.dumps({r[0]: [r[1], r[2].hex(), r[3].hex()] for r in rows}))
"""


def entries(root: Path) -> dict[str, list[str]]:
    """ref -> [kek_id, wrapped_key hex, ciphertext hex], read by another process."""
    done = subprocess.run(
        [sys.executable, "-c", _ENTRIES, str(root)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def vault_file_bytes(root: Path) -> bytes:
    return b"".join(read_outside(root / n) for n in ("vault.db", "vault.db-wal"))


def run_cli(root: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CAPGATE_HOME": str(root)}
    env.pop("CAPGATE_ORG", None)
    return subprocess.run(
        [*CAPGATE, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60
    )


def forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw), raw.hex().encode()]


# --- deletion ---------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["secret", "cred", "cred-update"])
def test_deleted_value_ciphertext_and_wrapped_key_are_gone_from_vault_files(
    cli: Cli, tmp_path: Path, what: str
):
    """Found: a deleted entry's ciphertext and wrapped data key stayed in vault.db-wal
    while another process (a proxy) kept the vault open, and in free pages of vault.db
    where SQLite is built without SECURE_DELETE (Debian's is built with it). Fixed:
    secure_delete on, and a WAL checkpoint(TRUNCATE) after every vault delete."""
    held = Stores.open(Home(cli.root))  # a proxy's connection: the WAL is not removed
    assert held.vault._conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
    big = CANARY * 400  # spans overflow pages
    client_secret = tmp_path / "cs"
    client_secret.write_text(big + "-cs")
    if what == "secret":
        assert cli("secret", "set", "s", input=big).exit_code == 0
    else:
        added = cli(
            "cred", "add", "mail", "--provider", "google", "--kind",
            "oauth2_authorization_code", "--config", "client_id=c",
            "--client-secret-file", str(client_secret), input=big,
        )  # fmt: skip
        assert added.exit_code == 0, added.output
    stored = entries(cli.root)
    assert len(stored) == (1 if what == "secret" else 2)
    if what == "secret":
        assert cli("secret", "delete", "s").exit_code == 0
        gone = stored
    elif what == "cred":
        assert cli("cred", "delete", "mail").exit_code == 0
        gone = stored
    else:
        assert cli("cred", "update", "mail", input=big + "-new").exit_code == 0
        gone = {ref: v for ref, v in stored.items() if ref not in entries(cli.root)}
        assert len(gone) == 1
    data = vault_file_bytes(cli.root)
    held.close()
    for ref, (_, wrapped, ciphertext) in gone.items():
        assert ref.encode() not in data
        assert bytes.fromhex(wrapped) not in data
        assert bytes.fromhex(ciphertext)[:64] not in data
        assert bytes.fromhex(ciphertext)[-64:] not in data


@pytest.mark.slow  # CLI subprocesses
def test_delete_in_another_process_moves_the_generation_and_the_value_is_gone(cli: Cli):
    cli("user", "add", "alice")
    cli("cred", "add", "gh", "--provider", "github_pat", "--kind", "api_key", input=CANARY)
    cli("secret", "set", "tenant", input=CANARY + "-s")
    token = json.loads(
        cli("workspace", "create", "--role", "r", "--user", "alice", "--json").stdout
    )["token"]
    broker = Broker.open(cli.root)
    try:
        ws = broker.authenticate(token)
        first = broker.activate(ws, ["gh"], ["tenant"])
        assert set(first.credentials) == {"gh"} and set(first.secrets) == {"tenant"}
        generation = broker.generation()
        assert run_cli(cli.root, "cred", "delete", "gh").returncode == 0
        assert run_cli(cli.root, "secret", "delete", "tenant").returncode == 0
        assert broker.generation() != generation
        again = broker.activate(ws, ["gh"], ["tenant"])
        assert dict(again.credentials) == {} and dict(again.secrets) == {}
        assert entries(cli.root) == {}
        assert run_cli(cli.root, "workspace", "revoke", ws.id).returncode == 0
        assert broker.authenticate(token) is None
    finally:
        broker.close()


# --- key file states ----------------------------------------------------------------------


def _break_key(root: Path, how: str, tmp_path: Path) -> None:
    key = root / "key"
    good = key.read_bytes()
    if how == "truncated":
        key.write_bytes(good[:10])
    elif how == "garbage":
        key.write_bytes(b"not base64 at all!!\n")
    elif how == "empty":
        key.write_bytes(b"")
    elif how == "short":
        key.write_bytes(base64.b64encode(os.urandom(16)) + b"\n")
    elif how == "mode-0644":
        key.chmod(0o644)
    elif how == "directory":
        key.unlink()
        key.mkdir()
    elif how == "missing":
        key.unlink()
    elif how == "symlink-to-0644":
        target = tmp_path / "shared-key"
        target.write_bytes(good)
        target.chmod(0o644)
        key.unlink()
        key.symlink_to(target)
    elif how == "dangling-symlink":
        key.unlink()
        key.symlink_to(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "how",
    [
        "truncated",
        "garbage",
        "empty",
        "short",
        "mode-0644",
        "directory",
        "missing",
        "symlink-to-0644",
        "dangling-symlink",
    ],
)
@pytest.mark.parametrize(
    "argv", [("secret", "list"), ("secret", "set", "t"), ("vault", "rotate-key")]
)
def test_bad_key_file_fails_cleanly(cli: Cli, tmp_path: Path, how: str, argv):
    cli("secret", "set", "s", input=CANARY)
    good = (cli.root / "key").read_bytes()
    vault_before = entries(cli.root)
    _break_key(cli.root, how, tmp_path)
    result = cli(*argv, input="v")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and "Traceback" not in result.output
    assert good.strip().decode() not in result.output and CANARY not in result.output
    assert entries(cli.root) == vault_before


def test_wrong_key_cannot_split_the_vault(cli: Cli):
    """Found: with a valid but wrong key (another home's, a restored old one) `secret set`
    and `cred add` succeeded, writing entries under a key that cannot read the others.
    Fixed: the vault refuses to write under a key set that misses a stored entry's key."""
    cli("secret", "set", "s", input=CANARY)
    good = (cli.root / "key").read_bytes()
    before = entries(cli.root)
    (cli.root / "key").write_bytes(encode_key(generate_key()))
    for argv in (
        ("secret", "set", "t"),
        ("cred", "add", "g", "--provider", "openai", "--kind", "api_key"),
    ):
        result = cli(*argv, input="v")
        assert result.exit_code == 1 and "does not match the vault" in result.stderr
    assert entries(cli.root) == before
    assert json.loads(cli("secret", "list", "--json").stdout)[0]["name"] == "s"
    (cli.root / "key").write_bytes(good)
    assert cli("secret", "set", "t", input="v").exit_code == 0


def test_rotate_twice_removes_old_keys_and_old_key_no_longer_unwraps(cli: Cli):
    cli("secret", "set", "s", input=CANARY)
    cli("cred", "add", "gh", "--provider", "github_pat", "--kind", "api_key", input=CANARY + "g")
    first_key = (cli.root / "key").read_bytes()
    assert cli("vault", "rotate-key").exit_code == 0
    assert cli("vault", "rotate-key", "--json").stdout.strip().endswith("}")
    assert sorted(p.name for p in cli.root.iterdir() if p.name.startswith("key")) == ["key"]
    assert (cli.root / "key").stat().st_mode & 0o777 == 0o600
    stores = Stores.open(Home(cli.root))
    org = stores.control.org_id("default")
    assert stores.secrets.values(org, ["s"])["s"].reveal() == CANARY
    assert stores.credentials.durable_value(stores.credentials.get(org, "gh")).reveal() == (
        CANARY + "g"
    )
    stores.close()
    data = vault_file_bytes(cli.root)
    for _, wrapped, _ in entries(cli.root).values():
        assert bytes.fromhex(wrapped) in data
    (cli.root / "key").write_bytes(first_key)  # an attacker's copy of the retired key
    stores = Stores.open(Home(cli.root))
    with pytest.raises(VaultError) as info:
        stores.secrets.values(org, ["s"])
    assert "restore the matching key file" in str(info.value)
    stores.close()


def test_rotation_crash_before_commit_and_after_commit_keeps_everything_readable(
    home: Home, stores: Stores, org: str, monkeypatch
):
    stores.secrets.set(org, "s", _sv(CANARY))
    from capgate.broker import vault as vault_module

    def boom(*_a, **_k):
        raise OSError("simulated crash")

    with monkeypatch.context() as m:  # crash before the re-wrap committed
        m.setattr(vault_module.Vault, "_rewrap_all", boom)
        with pytest.raises(OSError):
            stores.vault.rotate_key()
    assert (home.root / "key.new").exists()
    assert stores.secrets.values(org, ["s"])["s"].reveal() == CANARY
    with monkeypatch.context() as m:  # crash after the commit, before the rename
        m.setattr(vault_module.os, "replace", boom)
        with pytest.raises(OSError):
            stores.vault.rotate_key()
    other = Stores.open(home)  # another process's view: key and key.new both loaded
    assert other.secrets.values(org, ["s"])["s"].reveal() == CANARY
    other.secrets.set(org, "t", _sv("v"))
    other.close()
    stores.vault.rotate_key()
    assert not (home.root / "key.new").exists()
    assert {k: v.reveal() for k, v in stores.secrets.values(org, ["s", "t"]).items()} == {
        "s": CANARY,
        "t": "v",
    }


def _sv(text: str):
    from capgate.broker.secretvalue import SecretValue

    return SecretValue(text)


# --- agent tokens ------------------------------------------------------------------------


def test_agent_token_is_nowhere_in_the_home_and_variants_fail(cli: Cli):
    cli("user", "add", "alice")
    created = json.loads(
        cli("workspace", "create", "--role", "r", "--user", "alice", "--json").stdout
    )
    token, ws_id = created["token"], created["id"]
    secret_part = token[len("cg_") + 8 :]
    for path in cli.root.rglob("*"):
        if path.is_file():
            data = read_outside(path)
            assert token.encode() not in data and secret_part.encode() not in data, path
    listed = cli("workspace", "list", "--json").output
    assert secret_part not in listed
    stores = Stores.open(Home(cli.root))
    auth = stores.workspaces.authenticate
    assert auth(token).id == ws_id
    for variant in (
        token[:-1],
        token + "A",
        token.upper(),
        token[:11],
        token[:11] + "\udcff" * 5,
        "cg_" + token[3:].replace(token[-1], "\x00"),
        " " + token,
        token + "\n",
    ):
        assert auth(variant) is None, repr(variant)
    stores.close()
    assert cli("workspace", "revoke", ws_id).exit_code == 0
    assert cli("workspace", "revoke", ws_id).exit_code == 0  # idempotent
    assert cli("workspace", "revoke", "ws_nope").exit_code == 1
    stores = Stores.open(Home(cli.root))
    assert stores.workspaces.authenticate(token) is None
    events = stores.control.query(
        "SELECT count(*) AS n FROM audit_events WHERE action = 'workspace.revoke'"
    )
    assert events[0]["n"] == 1
    stores.close()


def test_prefix_collision_is_decided_by_the_constant_time_digest_compare(
    stores: Stores, org: str, monkeypatch
):
    stores.workspaces.add_user(org, "alice")
    ws1, token1 = stores.workspaces.create(org, "r", "alice")
    ws2, token2 = stores.workspaces.create(org, "r", "alice")
    forged = token1[:11] + token2[11:]  # token1's lookup prefix, token2's tail
    with stores.control.write() as conn:  # make token2's row share token1's prefix
        conn.execute(
            "UPDATE agent_tokens SET prefix = ? WHERE workspace_id = ?", (token1[3:11], ws2.id)
        )
    calls = []
    real = workspaces_module.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(workspaces_module.hmac, "compare_digest", spy)
    assert stores.workspaces.authenticate(token1).id == ws1.id
    assert len(calls) == 2  # every candidate compared, in constant time
    assert stores.workspaces.authenticate(forged) is None


# --- concurrency -------------------------------------------------------------------------


@pytest.mark.slow  # concurrent CLI subprocesses
@pytest.mark.parametrize(
    "argv",
    [
        ("secret", "set", "race"),
        ("cred", "add", "race", "--provider", "openai", "--kind", "api_key"),
    ],
)
def test_two_concurrent_setters_of_one_name_exactly_one_wins(cli: Cli, argv):
    env = {**os.environ, "CAPGATE_HOME": str(cli.root)}
    env.pop("CAPGATE_ORG", None)
    for round_ in range(3):
        name_argv = tuple(a if a != "race" else f"race{round_}" for a in argv)
        procs = [
            subprocess.Popen(
                [*CAPGATE, *name_argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
            for _ in range(2)
        ]
        for i, proc in enumerate(procs):
            proc.stdin.write(f"{CANARY}-{round_}-{i}".encode())
            proc.stdin.close()
        codes = sorted(p.wait(timeout=60) for p in procs)
        errors = b"".join(p.stderr.read() for p in procs)
        for p in procs:
            p.stdout.close()
            p.stderr.close()
        assert codes == [0, 1], errors
        assert b"already exists" in errors and b"Traceback" not in errors
    stores = Stores.open(Home(cli.root))
    org = stores.control.org_id("default")
    table = "secrets" if argv[0] == "secret" else "credentials"
    rows = stores.control.query(f"SELECT name, durable_ref FROM {table} WHERE org_id = ?", (org,))
    assert sorted(r["name"] for r in rows) == ["race0", "race1", "race2"]
    assert sorted(stores.vault.refs()) == sorted(r["durable_ref"] for r in rows)  # no orphan
    stores.close()


# --- plaintext anywhere ------------------------------------------------------------------


def test_no_value_in_any_plain_file_after_many_operations(cli: Cli, tmp_path: Path):
    """Every file of the home (control.db and its -wal/-shm, config.json, locks/, the
    vault's files) is scanned for every form of every value, with the WAL files kept."""
    values = [f"{CANARY}-{i}-{'x' * i}" for i in range(6)]
    cs = tmp_path / "cs"
    cs.write_text(values[5])
    cli("user", "add", "alice")
    cli("cred", "add", "gh", "--provider", "github_pat", "--kind", "api_key", input=values[0])
    cli("cred", "update", "gh", input=values[1])
    cli(
        "cred", "add", "mail", "--provider", "google", "--kind", "oauth2_authorization_code",
        "--config", "client_id=c", "--allow-user-override", "--client-secret-file", str(cs),
    )  # fmt: skip
    cli("cred", "add", "mail", "--provider", "google", "--kind", "oauth2_authorization_code",
        "--config", "client_id=c", "--user", "alice", input=values[2])  # fmt: skip
    cli("secret", "set", "s", input=values[3])
    cli("secret", "delete", "s")
    cli("secret", "set", "s", input=values[4])
    cli("vault", "rotate-key")
    outputs = [
        cli(*argv).output
        for argv in (
            ("cred", "list", "--json"),
            ("cred", "show", "mail", "--user", "alice", "--json"),
            ("cred", "show", "gh"),
            ("secret", "list", "--json"),
            ("workspace", "list", "--json"),
            ("user", "list", "--json"),
            ("decisions", "--json", "--all-orgs"),
        )
    ]
    held = Stores.open(Home(cli.root))  # keeps -wal/-shm files in place while scanning
    try:
        for path in sorted(cli.root.rglob("*")):
            if path.is_file():
                data = read_outside(path)
                for value in values:
                    for form in forms(value):
                        assert form not in data, (path, value)
    finally:
        held.close()
    for out in outputs:
        assert CANARY not in out
