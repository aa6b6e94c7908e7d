"""Class 5: the control store and the vault stay consistent across crashes and rotations.

A vault error is capgate's fault, never the credential's (no needs_reauth); a crash
between the two stores' writes leaves nothing reachable and nothing falsely broken, and
`capgate vault check [--repair]` finds what it left, naming rows, never values.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading

import pytest

from tests.e2e.cli_harness import CliHome
from tests.e2e.upstream import Upstream

from .clients import get
from .conftest import CANARIES, MS_CLIENT_SECRET, Proxies, assert_no_canary, ca_of
from .test_store_faults import cred_ref, secret_ref, swap_entries
from .token_server import ACCESS_TOKEN

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CRASH_IN_DELETE = """
import os, sys
from capgate.broker.stores import Stores
stores = Stores.open(sys.argv[1])
org_id = stores.control.org_id("default")
stores.vault.delete = lambda ref: os._exit(9)   # killed between the row and the entry
stores.credentials.delete(org_id, sys.argv[2])
"""


def _cred_status(home: CliHome, name: str) -> str:
    rows = json.loads(home.cli("cred", "list", "--json"))
    return next(r["status"] for r in rows if r["name"] == name)


def _vault_check(home: CliHome, *args: str) -> tuple[int, dict]:
    done = home.run("vault", "check", "--json", *args, check=False)
    return done.returncode, json.loads(done.stdout)


def test_a_delete_killed_between_the_two_stores_leaves_an_orphan_that_check_repairs(
    home: CliHome,
) -> None:
    ref = cred_ref(home, "github")
    assert _vault_check(home)[0] == 0
    # when `cred delete` dies after removing the row, before the vault entry
    done = subprocess.run(
        [sys.executable, "-c", CRASH_IN_DELETE, str(home.root), "github"],
        env=home.env(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 9
    # then the credential is gone for every reader (nothing falsely broken remains)
    assert "github" not in home.cli("cred", "list")
    # and `vault check` names the orphan (exit 1), but --repair spares a fresh one
    code, report = _vault_check(home)
    assert code == 1
    assert [(f["problem"], f["ref"]) for f in report["findings"]] == [("orphan", ref)]
    code, report = _vault_check(home, "--repair")
    assert code == 1 and report["repaired"] == []
    # and once it is older than the grace period, --repair deletes it
    conn = sqlite3.connect(home.root / "vault.db")
    conn.execute("UPDATE entries SET created_at = '2020-01-01T00:00:00Z' WHERE ref = ?", (ref,))
    conn.commit()
    conn.close()
    code, report = _vault_check(home, "--repair")
    assert code == 0, report
    assert [f["ref"] for f in report["repaired"]] == [ref]
    assert _vault_check(home) == (0, {"findings": [], "repaired": [], "entries": 2})


def test_vault_check_names_the_rows_of_unreadable_and_missing_entries(home: CliHome) -> None:
    home.cli("secret", "set", "other", stdin="other-FAULTvalue-5a6b7c8d")
    swap_entries(home.root / "vault.db", secret_ref(home, "tenant-id"), secret_ref(home, "other"))
    conn = sqlite3.connect(home.root / "vault.db")
    conn.execute("DELETE FROM entries WHERE ref = ?", (cred_ref(home, "graph"),))
    conn.commit()
    conn.close()
    done = home.run("vault", "check", check=False)
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert "unreadable: secret tenant-id (org default, sec_" in out
    assert "unreadable: secret other (org default, sec_" in out
    assert "missing: credential graph (org default, cred_" in out
    assert "3 problem(s)" in out
    assert_no_canary(out)
    assert "other-FAULTvalue-5a6b7c8d" not in out
    # and --repair touches none of them (values are recovered by uploading them again)
    code, report = _vault_check(home, "--repair")
    assert code == 1 and report["repaired"] == [] and len(report["findings"]) == 3


def test_an_unreadable_oauth_value_is_transient_never_needs_reauth(
    proxies: Proxies, tls_upstream: Upstream
) -> None:
    # given the OAuth credential's vault entry swapped with a secret's
    home = proxies.home
    swap_entries(home.root / "vault.db", cred_ref(home, "graph"), secret_ref(home, "tenant-id"))
    proxy = proxies.start()
    _, token = home.workspace("researcher")
    ca = ca_of(home)
    for _ in range(3):
        assert get(proxy.url(token), ca, tls_upstream.url("/graph/me", host="localhost")).is_success
    # then the mint fails as capgate's own fault, and the credential stays active
    rows = [r for r in home.decisions(at_least=3) if r["capability"] == "graph"]
    assert rows and all(r["auth_failures"] == {"graph": "auth_unavailable"} for r in rows)
    assert _cred_status(home, "graph") == "active"
    assert proxy.terminate(timeout=30) == 0
    out = proxy.output()
    assert "credential graph" in out and "vault" in out
    assert_no_canary(out)


def test_rotate_key_beside_a_running_proxy_breaks_no_credential(
    proxies: Proxies, tls_upstream: Upstream
) -> None:
    # given a proxy that re-reads the OAuth credential's value on every request (TTL 0)
    proxy = proxies.start(env={"CAPGATE_TOKEN_TTL": "0"})
    home = proxies.home
    _, token = home.workspace("researcher")
    ca = ca_of(home)
    stop = threading.Event()
    statuses: list[object] = []

    def traffic() -> None:
        while not stop.is_set():
            try:
                reply = get(proxy.url(token), ca, tls_upstream.url("/graph/me", host="localhost"))
                statuses.append(tls_upstream.log.items[-1].header("Authorization"))
                statuses.append(reply.status_code)
            except Exception as exc:  # recorded, then asserted on
                statuses.append(type(exc).__name__)

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        # when the key is rotated again and again in another process meanwhile
        for _ in range(8):
            home.run("vault", "rotate-key")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    # then every request got its token, and the credential is still active
    codes = [s for s in statuses if not isinstance(s, list)]
    assert codes and set(codes) == {200}, codes
    tokens = [s for s in statuses if isinstance(s, list)]
    assert all(t == [f"Bearer {ACCESS_TOKEN}"] for t in tokens), tokens
    assert _cred_status(home, "graph") == "active"
    assert proxy.terminate(timeout=30) == 0
    out = proxy.output()
    assert "vault_error" not in out and "cannot be read" not in out
    assert MS_CLIENT_SECRET not in out
    assert all(c not in out for c in CANARIES)
