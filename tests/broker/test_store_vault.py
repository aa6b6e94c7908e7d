"""The vault: envelope encryption bound to org, kind and ref; key rotation."""

from __future__ import annotations

import sqlite3

import pytest

from capgate.broker.errors import VaultError
from capgate.broker.home import read_key
from capgate.broker.vault import Vault, key_id


def rows(home) -> dict[str, sqlite3.Row]:
    conn = sqlite3.connect(home.vault_db)
    conn.row_factory = sqlite3.Row
    found = {r["ref"]: r for r in conn.execute("SELECT * FROM entries")}
    conn.close()
    return found


def test_value_round_trips_as_a_redacted_secret_value(stores, org):
    ref = stores.vault.put(org, "secret", "hunter2-value")
    value = stores.vault.get(ref, org, "secret")
    assert value.reveal() == "hunter2-value"
    assert "hunter2" not in repr(value) and "hunter2" not in str(value)


def test_each_value_gets_a_fresh_data_key_and_nonce(stores, org):
    a = stores.vault.put(org, "secret", "same")
    b = stores.vault.put(org, "secret", "same")
    found = rows(stores.home)
    assert found[a]["ciphertext"] != found[b]["ciphertext"]
    assert found[a]["wrapped_key"] != found[b]["wrapped_key"]


def test_swapping_ciphertexts_between_rows_fails_decryption(stores, org):
    a = stores.vault.put(org, "secret", "value-a")
    b = stores.vault.put(org, "secret", "value-b")
    conn = sqlite3.connect(stores.home.vault_db)
    cols = "kek_id, wrap_nonce, wrapped_key, nonce, ciphertext"
    ra = conn.execute(f"SELECT {cols} FROM entries WHERE ref = ?", (a,)).fetchone()
    rb = conn.execute(f"SELECT {cols} FROM entries WHERE ref = ?", (b,)).fetchone()
    sets = "kek_id=?, wrap_nonce=?, wrapped_key=?, nonce=?, ciphertext=?"
    conn.execute(f"UPDATE entries SET {sets} WHERE ref = ?", (*rb, a))
    conn.execute(f"UPDATE entries SET {sets} WHERE ref = ?", (*ra, b))
    conn.commit()
    conn.close()
    for ref in (a, b):
        with pytest.raises(VaultError, match="failed authentication"):
            stores.vault.get(ref, org, "secret")


def test_entry_read_as_another_org_or_kind_fails(stores, org):
    ref = stores.vault.put(org, "credential", "value")
    other = stores.control.org_id("other", create=True)
    with pytest.raises(VaultError):
        stores.vault.get(ref, other, "credential")
    with pytest.raises(VaultError):
        stores.vault.get(ref, org, "secret")


def test_tampered_ciphertext_fails(stores, org):
    ref = stores.vault.put(org, "secret", "value")
    conn = sqlite3.connect(stores.home.vault_db)
    blob = bytearray(conn.execute("SELECT ciphertext FROM entries").fetchone()[0])
    blob[0] ^= 1
    conn.execute("UPDATE entries SET ciphertext = ?", (bytes(blob),))
    conn.commit()
    conn.close()
    with pytest.raises(VaultError):
        stores.vault.get(ref, org, "secret")


def test_missing_entry_is_a_vault_error(stores, org):
    with pytest.raises(VaultError, match="missing"):
        stores.vault.get("vault_nope", org, "secret")


def test_rotate_key_rewraps_data_keys_without_touching_ciphertexts(stores, org):
    refs = [stores.vault.put(org, "secret", f"value-{i}") for i in range(3)]
    old_key = read_key(stores.home.key_file)
    before = rows(stores.home)
    assert stores.vault.rotate_key() == 3
    after = rows(stores.home)
    new_key = read_key(stores.home.key_file)
    assert new_key != old_key
    assert not (stores.home.root / "key.old").exists()
    for ref in refs:
        assert after[ref]["ciphertext"] == before[ref]["ciphertext"]
        assert after[ref]["wrapped_key"] != before[ref]["wrapped_key"]
        assert after[ref]["kek_id"] == key_id(new_key)
    assert [stores.vault.get(r, org, "secret").reveal() for r in refs] == [
        "value-0",
        "value-1",
        "value-2",
    ]


def test_rotate_key_keep_old_writes_private_key_old(stores, org):
    old_key = read_key(stores.home.key_file)
    stores.vault.rotate_key(keep_old=True)
    assert read_key(stores.home.root / "key.old") == old_key


def test_another_vault_instance_reads_after_rotation_and_writes_under_new_key(stores, org):
    other = Vault.open(stores.home)  # e.g. a running proxy holding the old key
    ref = stores.vault.put(org, "secret", "before")
    stores.vault.rotate_key()
    assert other.get(ref, org, "secret").reveal() == "before"
    written = other.put(org, "secret", "after")
    assert rows(stores.home)[written]["kek_id"] == key_id(read_key(stores.home.key_file))
    assert stores.vault.get(written, org, "secret").reveal() == "after"
    other.close()


def test_rotation_interrupted_after_commit_is_finished_by_the_next_one(stores, org):
    ref = stores.vault.put(org, "secret", "value")
    vault = stores.vault
    vault._rewrap_all_original = vault._rewrap_all

    def crash_after_rewrap(new):
        vault._rewrap_all_original(new)
        raise KeyboardInterrupt

    vault._rewrap_all = crash_after_rewrap
    with pytest.raises(KeyboardInterrupt):
        vault.rotate_key()
    assert (stores.home.root / "key.new").exists()
    fresh = Vault.open(stores.home)
    assert fresh.get(ref, org, "secret").reveal() == "value"  # key.new is loaded too
    fresh.rotate_key()
    assert not (stores.home.root / "key.new").exists()
    assert fresh.get(ref, org, "secret").reveal() == "value"
    fresh.close()
