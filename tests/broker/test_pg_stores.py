"""The broker's stores on a real PostgreSQL: the engine seam, migrations, the vault, the
change signal (LISTEN/NOTIFY with its fallback), and advisory credential locks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from capgate.broker import changes, pgstore, vaultcheck
from capgate.broker.credential_rows import CredentialSpec
from capgate.broker.errors import CapgateError
from capgate.broker.home import Home, init_home
from capgate.broker.secretvalue import SecretValue
from capgate.broker.store import MIGRATIONS, ControlStore
from capgate.broker.stores import Stores

pytestmark = pytest.mark.slow  # a private PostgreSQL cluster and fresh databases

CANARY = "ghp_PGcanaryCredential_a1b2c3d4e5f60718"


def pg_home(root: Path, urls: tuple[str, str], key_from: Path | None = None) -> Home:
    """A home whose stores are the PostgreSQL databases `urls` (sharing `key_from`'s key)."""
    root.mkdir(parents=True)
    if key_from is not None:
        shutil.copy2(key_from / "key", root / "key")
    init_home(root, store_url=urls[0], vault_url=urls[1])
    Stores.open(Home(root)).close()  # what `capgate init` does: create and migrate
    return Home(root)


@pytest.fixture
def two_homes(tmp_path: Path, pg_urls: tuple[str, str]) -> tuple[Home, Home]:
    first = pg_home(tmp_path / "a", pg_urls)
    second = pg_home(tmp_path / "b", pg_urls, key_from=first.root)
    return first, second


def test_init_records_the_urls_and_migrates_both_databases(two_homes: tuple[Home, Home]) -> None:
    first, _ = two_homes
    config = json.loads(first.config.read_text())
    assert config["store_url"].startswith("postgresql://")
    assert not first.control_db.exists() and not first.vault_db.exists()
    with psycopg.connect(first.store_url or "") as conn:
        (version,) = conn.execute("SELECT max(version) FROM schema_version").fetchone() or (0,)
    assert version == len(MIGRATIONS)


def test_a_credential_added_in_one_home_is_read_in_the_other(two_homes: tuple[Home, Home]) -> None:
    first, second = two_homes
    a, b = Stores.open(first), Stores.open(second)
    try:
        org = a.control.org_id("acme", create=True)
        spec = CredentialSpec(name="github", provider="github_pat", kind="api_key")
        a.credentials.add(org, spec, SecretValue(CANARY))
        row = b.credentials.get(b.control.org_id("acme"), "github")
        value = b.credentials.durable_value(row)
        assert value is not None and value.reveal() == CANARY
        # the vault holds ciphertext only
        with psycopg.connect(first.vault_url or "") as conn:
            blobs = conn.execute("SELECT ciphertext, wrapped_key FROM entries").fetchall()
        assert blobs and all(CANARY.encode() not in bytes(c) + bytes(w) for c, w in blobs)
        with psycopg.connect(first.store_url or "") as conn:
            dump = json.dumps(conn.execute("SELECT * FROM credentials").fetchall(), default=str)
        assert CANARY not in dump
    finally:
        a.close()
        b.close()


def test_a_change_in_one_home_moves_the_other_generation_without_a_round_trip(
    two_homes: tuple[Home, Home],
) -> None:
    first, second = two_homes
    a, b = Stores.open(first), Stores.open(second)
    try:
        watcher = b.changes
        assert isinstance(watcher, changes.PgChangeWatcher)
        wait(lambda: watcher._listening)
        before = watcher.generation()
        reads = watcher.fallback_reads
        org = a.control.org_id("acme", create=True)
        a.secrets.set(org, "tenant", SecretValue("t1"))
        started = time.monotonic()
        wait(lambda: watcher.generation() != before)
        window = time.monotonic() - started
        # notified: the new generation arrived by NOTIFY, no fallback read was needed
        assert watcher.fallback_reads == reads
        assert window < changes.STALE_AFTER_S
    finally:
        a.close()
        b.close()


def test_when_the_channel_drops_the_generation_is_read_per_call(
    two_homes: tuple[Home, Home], postgres: object
) -> None:
    first, second = two_homes
    a, b = Stores.open(first), Stores.open(second)
    try:
        watcher = b.changes
        assert isinstance(watcher, changes.PgChangeWatcher)
        wait(lambda: watcher._listening)
        # when the listener's session is killed on the server
        with psycopg.connect(first.store_url or "", autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'capgate-changes'"
            )
        wait(lambda: not watcher._listening)
        # then a change made meanwhile is seen on the very next call (a fallback read)
        before = watcher.generation()
        org = a.control.org_id("acme", create=True)
        a.secrets.set(org, "tenant", SecretValue("t2"))
        if not watcher._listening:
            assert watcher.generation() > before
            assert watcher.fallback_reads >= 1
        # and the listener comes back by itself
        wait(lambda: watcher._listening)
        assert watcher.generation() > before
    finally:
        a.close()
        b.close()


def test_credential_locks_exclude_each_other_across_homes(two_homes: tuple[Home, Home]) -> None:
    first, second = two_homes
    a, b = ControlStore.open(first), ControlStore.open(second)
    try:
        order: list[str] = []
        with a.credential_lock("cred_0123"):
            waiter = threading.Thread(
                target=lambda: (b.credential_lock("cred_0123").__enter__(), order.append("b"))
            )
            waiter.start()
            time.sleep(0.3)
            order.append("a-done")
        waiter.join(timeout=5)
        assert order == ["a-done", "b"]
    finally:
        a.close()
        b.close()


def test_a_newer_schema_is_refused(two_homes: tuple[Home, Home]) -> None:
    first, _ = two_homes
    with psycopg.connect(first.store_url or "", autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    with pytest.raises(CapgateError, match="newer than this capgate"):
        ControlStore.open(first)


def test_migrating_from_an_older_schema_keeps_the_rows(
    tmp_path: Path, pg_urls: tuple[str, str]
) -> None:
    # given a store at schema version 1 with a row in it
    url = pg_urls[0]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute(pgstore.PG_MIGRATIONS[0].encode())
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        conn.execute("INSERT INTO orgs (id, name) VALUES ('org_1', 'acme')")
    # when capgate opens it, from two processes at once
    root = tmp_path / "h"
    root.mkdir()
    init_home(root, store_url=pg_urls[0], vault_url=pg_urls[1])
    home = Home(root)
    code = (
        "import sys; from capgate.broker.store import ControlStore; "
        "from capgate.broker.home import Home; from pathlib import Path; "
        "ControlStore.open(Home(Path(sys.argv[1]))).close()"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(home.root)]) for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    store = ControlStore.open(home)
    try:
        assert store.org_id("acme") == "org_1"
        assert store.query("SELECT generation FROM changes")[0]["generation"] == 0
    finally:
        store.close()


def test_a_wrong_url_is_refused_without_its_password(tmp_path: Path, postgres: object) -> None:
    from tests.broker.conftest import Cli

    url = "postgresql://capgate:Sup3rSecretPw@127.0.0.1:1/nowhere"
    result = Cli(tmp_path / "home")("init", "--store", url, "--vault", url)
    assert result.exit_code != 0
    assert "Sup3rSecretPw" not in result.output
    assert "cannot connect to the control store" in result.output
    assert not (tmp_path / "home" / "config.json").exists()


def wait(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


@pytest.fixture
def acme(two_homes: tuple[Home, Home]) -> Iterator[tuple[Home, Stores, str]]:
    """The first home, its open stores and the id of its org `acme`."""
    first, _ = two_homes
    stores = Stores.open(first)
    try:
        yield first, stores, stores.control.org_id("acme", create=True)
    finally:
        stores.close()


def test_a_store_reconnects_after_the_server_ends_its_session(
    acme: tuple[Home, Stores, str],
) -> None:
    first, stores, org = acme
    stores.secrets.set(org, "tenant", SecretValue("t1"))
    with psycopg.connect(first.store_url or "", autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'capgate-control' AND pid <> pg_backend_pid()"
        )
    time.sleep(0.2)
    # the next read opens a new session and succeeds
    assert [r.name for r in stores.secrets.list_secrets(org)] == ["tenant"]
    stores.secrets.set(org, "tenant-2", SecretValue("t2"))  # and writes work again
    assert stores.control.conn.reconnects == 1  # type: ignore[union-attr]


def test_a_replica_killed_while_holding_a_credential_lock_releases_it(
    two_homes: tuple[Home, Home],
) -> None:
    first, second = two_homes
    holder_code = (
        "import sys, time; from pathlib import Path; from capgate.broker.home import Home; "
        "from capgate.broker.store import ControlStore; "
        "s = ControlStore.open(Home(Path(sys.argv[1]))); "
        "lock = s.credential_lock('cred_dead'); lock.__enter__(); "
        "print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code, str(first.root)], stdout=subprocess.PIPE, text=True
    )
    store = ControlStore.open(second)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        got = threading.Event()

        def take() -> None:
            with store.credential_lock("cred_dead"):
                got.set()

        waiter = threading.Thread(target=take, daemon=True)
        waiter.start()
        assert not got.wait(0.5)  # blocked while the other replica holds it
        holder.kill()  # a replica dies mid-refresh
        holder.wait(timeout=10)
        assert got.wait(10)  # its session ended, and the lock with it
    finally:
        holder.kill()
        store.close()


def test_init_json_names_the_stores_without_the_password(
    tmp_path: Path, pg_urls: tuple[str, str]
) -> None:
    from tests.broker.conftest import Cli

    store, vault = pg_urls
    result = Cli(tmp_path / "home")("init", "--store", store, "--vault", vault, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    password = store.split(":")[2].split("@")[0]
    assert password not in result.output
    assert document["control_db"].startswith("postgresql://capgate:***@127.0.0.1")
    assert document["vault_db"].endswith(vault.rsplit("/", 1)[1])


def test_the_hash_chain_migration_opens_each_existing_orgs_chain(
    tmp_path: Path, pg_urls: tuple[str, str]
) -> None:
    # given a PostgreSQL store at schema version 4 with an org
    url = pg_urls[0]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for step in pgstore.PG_MIGRATIONS[:4]:
            assert isinstance(step, str)
            conn.execute(step.encode())
        conn.execute("INSERT INTO schema_version (version) VALUES (4)")
        conn.execute("INSERT INTO orgs (id, name) VALUES ('org_1', 'acme')")
    root = tmp_path / "h"
    root.mkdir()
    init_home(root, store_url=pg_urls[0], vault_url=pg_urls[1])
    # when capgate opens it
    store = ControlStore.open(Home(root))
    try:
        heads = store.query("SELECT org_key, kind, seq FROM chain_heads ORDER BY org_key, kind")
        assert [tuple(r) for r in heads] == [
            ("", "decisions", 0),
            ("org_1", "audit", 1),
            ("org_1", "decisions", 0),
        ]
        events = store.query("SELECT action, seq FROM audit_events WHERE org_id = 'org_1'")
        assert [tuple(e) for e in events] == [("log.chain_start", 1)]
    finally:
        store.close()


def test_vault_check_finds_orphans_and_missing_entries_on_postgresql(
    acme: tuple[Home, Stores, str],
) -> None:
    _, stores, org = acme
    spec = CredentialSpec(name="github", provider="github_pat", kind="api_key")
    stores.credentials.add(org, spec, SecretValue(CANARY))
    assert vaultcheck.check(stores) == []
    orphan = stores.vault.put(org, "secret", SecretValue("an-orphan-value-0123456789"))
    row = stores.credentials.get(org, "github")
    assert row.durable_ref is not None
    stores.vault.delete(row.durable_ref)
    found = {(f.problem, f.ref) for f in vaultcheck.check(stores)}
    assert found == {(vaultcheck.ORPHAN, orphan), (vaultcheck.MISSING, row.durable_ref)}
