"""Class 3: a fault in the store or the vault fails closed and is said.

Deny with a reason code, a row where a row can be written, a log line naming the entry
(never the value); the CLI says `error: ...` instead of a traceback.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.e2e.cli_harness import CliHome
from tests.e2e.upstream import Upstream

from .clients import get
from .conftest import Proxies, assert_no_canary, ca_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

OTHER_SECRET = "other-FAULTcanarySecret-3e2d1c0b"


def swap_entries(vault_db: Path, first: str, second: str) -> None:
    """Swap every encrypted column of two vault entries (AES-GCM fails for both)."""
    cols = ("kek_id", "wrap_nonce", "wrapped_key", "nonce", "ciphertext")
    conn = sqlite3.connect(vault_db)
    try:
        rows = {
            ref: conn.execute(
                f"SELECT {', '.join(cols)} FROM entries WHERE ref = ?", (ref,)
            ).fetchone()
            for ref in (first, second)
        }
        for ref, other in ((first, second), (second, first)):
            sets = ", ".join(f"{c} = ?" for c in cols)
            conn.execute(f"UPDATE entries SET {sets} WHERE ref = ?", (*rows[other], ref))
        conn.commit()
    finally:
        conn.close()


def secret_ref(home: CliHome, name: str) -> str:
    conn = sqlite3.connect(home.root / "control.db")
    try:
        return conn.execute("SELECT durable_ref FROM secrets WHERE name = ?", (name,)).fetchone()[0]
    finally:
        conn.close()


def cred_ref(home: CliHome, name: str) -> str:
    conn = sqlite3.connect(home.root / "control.db")
    try:
        sql = "SELECT durable_ref FROM credentials WHERE name = ?"
        return conn.execute(sql, (name,)).fetchone()[0]
    finally:
        conn.close()


def test_swapped_secret_ciphertexts_deny_and_never_open_the_policy(
    proxies: Proxies, tls_upstream: Upstream
) -> None:
    # given two secrets whose vault entries were swapped (both fail authentication)
    home = proxies.home
    home.cli("secret", "set", "other", stdin=OTHER_SECRET)
    swap_entries(home.root / "vault.db", secret_ref(home, "tenant-id"), secret_ref(home, "other"))
    proxy = proxies.start()
    _, token = home.workspace("researcher")
    ca = ca_of(home)
    seen = len(tls_upstream.log.items)
    # when the workspace asks for a destination no capability allows
    reply = get(proxy.url(token), ca, tls_upstream.url("/nowhere", host="localhost"), 15)
    # then it is refused, and nothing reached the upstream
    assert reply.status_code in (403, 500, 503), reply.text
    assert not [i for i in tls_upstream.log.items[seen:] if i.path == "/nowhere"]
    # and a capability that needs the damaged secret does not go out with a wrong value
    reply = get(proxy.url(token), ca, tls_upstream.url("/tenant/x", host="localhost"), 15)
    sent = [i for i in tls_upstream.log.items[seen:] if i.path == "/tenant/x"]
    assert all(i.header("X-Tenant") == [] for i in sent)
    # and other capabilities keep working
    reply = get(proxy.url(token), ca, tls_upstream.url("/repos/a", host="localhost"), 15)
    assert reply.status_code == 200
    assert proxy.terminate(timeout=30) == 0
    # and the log names the entry, never a value
    out = proxy.output()
    assert "tenant-id" in out and "vault" in out
    assert_no_canary(out)
    assert OTHER_SECRET not in out
    assert "Traceback" not in out
    rows = home.decisions(at_least=3)
    assert rows[0]["decision"] != "allow" or rows[0]["path"] != "/nowhere"


def damage(db: Path) -> None:
    """Overwrite everything after the first page of a SQLite file with junk."""
    size = db.stat().st_size
    with db.open("r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xa5" * max(size - 4096, 4096 * 4))
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


def test_damaged_control_db_is_an_error_line_for_the_cli(home: CliHome) -> None:
    # given a control.db whose pages were overwritten
    damage(home.root / "control.db")
    # then every command says `error:` (exit 1), with no traceback and no value
    for args in (("cred", "list"), ("secret", "list"), ("workspace", "list"), ("decisions",)):
        done = home.run(*args, check=False, timeout=30)
        assert done.returncode == 1, (args, done.stderr)
        assert done.stderr.startswith("error: "), done.stderr
        assert "damaged" in done.stderr
        assert "Traceback" not in done.stderr + done.stdout
        assert_no_canary(done.stderr, done.stdout)


def test_damaged_control_db_refuses_to_start_the_proxy_with_an_error_line(
    home: CliHome, caps_file: Path
) -> None:
    damage(home.root / "control.db")
    done = home.run("proxy", "--caps", str(caps_file), "--listen", "127.0.0.1:0", check=False)
    assert done.returncode == 1, done.stderr
    assert "error: " in done.stderr and "Traceback" not in done.stderr


def test_control_db_damaged_under_a_running_proxy_fails_closed(
    proxies: Proxies, tls_upstream: Upstream
) -> None:
    # given a running proxy, when control.db is damaged under it
    proxy = proxies.start()
    _, token = proxies.home.workspace("researcher")
    ca = ca_of(proxies.home)
    damage(proxies.home.root / "control.db")
    seen = len(tls_upstream.log.items)
    # then a request that needs the store is refused with capgate's JSON, not forwarded
    # (the CONNECT itself is refused: httpx reports it as a ProxyError)
    with pytest.raises(httpx.ProxyError, match="500"):
        get(proxy.url(token), ca, tls_upstream.url("/nowhere", host="localhost"), 15)
    plain = httpx.get(
        f"http://localhost:{tls_upstream.port}/nowhere", proxy=proxy.url(token), timeout=15
    )
    assert plain.status_code == 500
    assert plain.json()["reason"] == "internal_error"
    assert not [i for i in tls_upstream.log.items[seen:] if i.path == "/nowhere"]
    assert proxy.terminate(timeout=30) == 0
    out = proxy.output()
    assert "internal error in the" in out and "hook (DatabaseError)" in out
    assert "Traceback" not in out
    assert_no_canary(out)
