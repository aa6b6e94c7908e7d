"""The vault: the only code that turns a durable_ref into plaintext.

Envelope encryption with AES-256-GCM. Each value gets a fresh 256-bit data key; the
data key is encrypted (wrapped) with the key-encryption key (KEK) from the home's key
file. Both encryptions carry associated data naming the org, the entry kind and the ref,
and the reader supplies org and kind from the control row, so a ciphertext copied to
another row, kind or org fails authentication. vault.db holds entries only: ref, org,
kind, key id, nonces, wrapped key, ciphertext.

Key rotation (`rotate_key`) re-wraps every data key under a new KEK; ciphertexts are not
touched. The new key is written to `key.new`, every entry re-wrapped in one transaction,
then `key.new` renamed over `key` (the old key is kept as `key.old` only on request). A
crash in between leaves both files, and both are loaded, so nothing becomes unreadable.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import pgstore
from .engine import PgConnection, is_postgres_url
from .errors import CapgateError, KeyFileError, VaultError
from .home import Home, encode_key, generate_key, now_iso, read_key, replace_file, write_new_key
from .secretvalue import SecretValue
from .store import Connection, connect, immediate

NONCE_BYTES = 12
VAULT_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries ("
    " ref TEXT PRIMARY KEY, org_id TEXT NOT NULL, kind TEXT NOT NULL, kek_id TEXT NOT NULL,"
    " wrap_nonce BLOB NOT NULL, wrapped_key BLOB NOT NULL,"
    " nonce BLOB NOT NULL, ciphertext BLOB NOT NULL, created_at TEXT NOT NULL)"
)
# Entry kinds: what the row in the control store is, bound into the associated data.
CREDENTIAL = "credential"
CLIENT_SECRET = "client_secret"
SECRET = "secret"
OAUTH_VERIFIER = "oauth_verifier"  # a hosted consent's PKCE verifier, until the callback
# An access token minted from a credential, shared by every process of the home until it
# expires (broker/sharedtokens.py). Its ref is fixed per credential and cache key, not random.
MINTED_TOKEN = "minted_token"
ENTRY_KINDS = frozenset({CREDENTIAL, CLIENT_SECRET, SECRET, OAUTH_VERIFIER})


_MINTED_PREFIX = "minted."


def minted_prefix(credential_id: str) -> str:
    """The ref prefix of one credential's minted tokens ('.' is not in a credential id)."""
    if not credential_id or not all(c.isalnum() or c == "_" for c in credential_id):
        raise ValueError("not a credential id")
    return f"{_MINTED_PREFIX}{credential_id}."


def minted_ref(credential_id: str, key: str) -> str:
    """The fixed ref of the minted token of one credential and cache key."""
    digest = hashlib.sha256(b"capgate-minted-ref\0" + key.encode()).hexdigest()[:32]
    return minted_prefix(credential_id) + digest


def key_id(kek: bytes) -> str:
    """A public fingerprint of a KEK, stored with each entry to pick the unwrapping key."""
    return hashlib.sha256(b"capgate-kek-id\0" + kek).hexdigest()[:16]


def _aad(purpose: bytes, org_id: str, kind: str, ref: str) -> bytes:
    return b"\0".join((b"capgate-vault-v1", purpose, org_id.encode(), kind.encode(), ref.encode()))


@dataclass(frozen=True)
class _Keyring:
    active_id: str
    keys: dict[str, bytes]
    stamp: tuple[tuple[int, int, int] | None, ...]


def _key_stamp(home: Home) -> tuple[tuple[int, int, int] | None, ...]:
    stamps: list[tuple[int, int, int] | None] = []
    for path in (home.key_file, home.key_file.with_name("key.new")):
        try:
            info = path.stat()
            stamps.append((info.st_ino, info.st_mtime_ns, info.st_size))
        except FileNotFoundError:
            stamps.append(None)
    return tuple(stamps)


def _load_keyring(home: Home) -> _Keyring:
    stamp = _key_stamp(home)
    active = read_key(home.key_file)
    keys = {key_id(active): active}
    for extra in ("key.new", "key.old"):
        path = home.key_file.with_name(extra)
        if path.exists():
            key = read_key(path)
            keys[key_id(key)] = key
    return _Keyring(key_id(active), keys, stamp)


class Vault:
    """Encrypted durable values of one home. Thread-safe; one instance per process."""

    def __init__(self, home: Home, conn: Connection) -> None:
        self.home = home
        self._conn = conn
        self._lock = threading.RLock()
        self._keyring = _load_keyring(home)

    @classmethod
    def open(cls, home: Home) -> Vault:
        """Open the vault of an initialised home; KeyFileError when the key is unusable."""
        home.require_initialized()
        read_key(home.key_file)  # fail on a bad key before touching the store
        url = home.vault_url
        if is_postgres_url(url):
            assert url is not None
            pg = pgstore.connect(url, "vault")
            pgstore.create_vault_schema(pg)
            return cls(home, pg)
        if url:
            raise CapgateError("the vault store URL must be a postgresql:// URL")
        conn = connect(home.vault_db)
        # A deleted entry's bytes are zeroed, not left in free pages of vault.db.
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute(VAULT_SCHEMA)
        return cls(home, conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def ping(self) -> None:
        """Raise unless the vault store answers (for health checks)."""
        with self._lock:
            self._conn.execute("SELECT 1").fetchone()

    # -- writing ---------------------------------------------------------------------

    def put(self, org_id: str, kind: str, value: SecretValue | str | bytes) -> str:
        """Encrypt `value` under a fresh data key; return its new, never reused ref."""
        if kind not in ENTRY_KINDS:
            raise ValueError(f"unknown vault entry kind {kind!r}")
        plaintext = value.reveal_bytes() if isinstance(value, SecretValue) else value
        if isinstance(plaintext, str):
            plaintext = plaintext.encode("utf-8")
        ref = f"vault_{secrets.token_hex(16)}"
        with self._rotation_lock(fcntl.LOCK_SH), self._lock:
            self._reload_if_key_changed()
            self._check_key_matches()
            kek = self._keyring.keys[self._keyring.active_id]
            row = _seal(kek, self._keyring.active_id, org_id, kind, ref, plaintext)
            with immediate(self._conn) as conn:
                conn.execute(
                    "INSERT INTO entries (ref, org_id, kind, kek_id, wrap_nonce, wrapped_key,"
                    " nonce, ciphertext, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ref, org_id, kind, *row, now_iso()),
                )
        return ref

    def delete(self, ref: str) -> None:
        """Remove an entry (no error when it is already gone) and scrub its bytes.

        secure_delete zeroes the freed cells; the checkpoint copies the zeroed pages into
        vault.db and truncates the WAL, which still held the old page images.
        """
        with self._lock:
            with immediate(self._conn) as conn:
                conn.execute("DELETE FROM entries WHERE ref = ?", (ref,))
            self._checkpoint()

    def put_minted(self, ref: str, org_id: str, value: SecretValue) -> None:
        """Store (or replace) the minted-token entry `ref`, encrypted like every entry.

        Refs are `minted_ref(...)`: one entry per credential and cache key, overwritten by
        the next mint, removed by `delete_minted` when the credential goes away.
        """
        if not ref.startswith(_MINTED_PREFIX):
            raise ValueError("not a minted-token ref")
        with self._rotation_lock(fcntl.LOCK_SH), self._lock:
            self._reload_if_key_changed()
            self._check_key_matches()
            kek = self._keyring.keys[self._keyring.active_id]
            row = _seal(
                kek, self._keyring.active_id, org_id, MINTED_TOKEN, ref, value.reveal_bytes()
            )
            with immediate(self._conn) as conn:
                conn.execute("DELETE FROM entries WHERE ref = ?", (ref,))
                conn.execute(
                    "INSERT INTO entries (ref, org_id, kind, kek_id, wrap_nonce, wrapped_key,"
                    " nonce, ciphertext, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ref, org_id, MINTED_TOKEN, *row, now_iso()),
                )

    def delete_minted(self, credential_id: str, *, written_by: str | None = None) -> None:
        """Remove (and scrub) the minted-token entries of one credential: all of them, or
        those written no later than `written_by` (a `now_iso()` time)."""
        prefix = minted_prefix(credential_id)
        sql = "DELETE FROM entries WHERE kind = ? AND substr(ref, 1, ?) = ?"
        params: tuple[str | int, ...] = (MINTED_TOKEN, len(prefix), prefix)
        if written_by is not None:
            sql += " AND created_at <= ?"
            params += (written_by,)
        with self._lock:
            with immediate(self._conn) as conn:
                done = conn.execute(sql, params)
            if done.rowcount:
                self._checkpoint()

    def _checkpoint(self) -> None:
        if isinstance(self._conn, PgConnection):
            return  # PostgreSQL reclaims dead rows by VACUUM (autovacuum), not on demand
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- reading ---------------------------------------------------------------------

    def get(self, ref: str, org_id: str, kind: str) -> SecretValue:
        """Decrypt the entry `ref` as belonging to `org_id` and `kind` (from the control row).

        Raises VaultError when the entry is missing, was encrypted for another org, kind
        or ref, or was tampered with; KeyFileError-backed VaultError when no loaded key
        matches. Messages never contain key or value bytes.

        A rotation in another process may have re-wrapped the entry under a key this
        process has not loaded, or be renaming its key files right now: the key files
        are then re-read under the rotation lock (shared), so they are never seen half
        renamed, and the entry read again.
        """
        row = self._row(ref)
        kek = self._keyring.keys.get(row["kek_id"])
        if kek is None:
            self._reload_keyring_locked()
            row = self._row(ref)  # re-wrapped meanwhile, maybe
            kek = self._key_for(row["kek_id"])
        try:
            data_key = AESGCM(kek).decrypt(
                row["wrap_nonce"], row["wrapped_key"], _aad(b"dek", org_id, kind, ref)
            )
            plaintext = AESGCM(data_key).decrypt(
                row["nonce"], row["ciphertext"], _aad(b"value", org_id, kind, ref)
            )
        except InvalidTag:
            raise VaultError(
                f"vault entry {ref} failed authentication: it was tampered with, moved from "
                "another row, or the key file is wrong"
            ) from None
        try:
            return SecretValue(plaintext)
        except UnicodeDecodeError:
            raise VaultError(f"vault entry {ref} is not UTF-8 text") from None

    def get_minted(self, ref: str, org_id: str) -> SecretValue | None:
        """A minted-token entry, or None when there is none (VaultError when tampered)."""
        with self._lock:
            found = self._conn.execute("SELECT 1 FROM entries WHERE ref = ?", (ref,)).fetchone()
        return None if found is None else self.get(ref, org_id, MINTED_TOKEN)

    def _row(self, ref: str) -> Any:
        with self._lock:
            row = self._conn.execute(
                "SELECT kek_id, wrap_nonce, wrapped_key, nonce, ciphertext FROM entries"
                " WHERE ref = ?",
                (ref,),
            ).fetchone()
        if row is None:
            raise VaultError(f"vault entry {ref} is missing")
        return row

    def _reload_keyring_locked(self) -> None:
        """Re-read the key files while no rotation is renaming them (never holding
        self._lock while waiting: rotate_key takes the rotation lock first)."""
        with self._rotation_lock(fcntl.LOCK_SH):
            keyring = _load_keyring(self.home)
        with self._lock:
            self._keyring = keyring

    def entries(self) -> list[Any]:
        """Every entry's ref, org, kind, key id and created_at (no key or value bytes)."""
        with self._lock:
            return self._conn.execute(
                "SELECT ref, org_id, kind, kek_id, created_at FROM entries ORDER BY ref"
            ).fetchall()

    def refs(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT ref FROM entries ORDER BY ref")]

    # -- keys ------------------------------------------------------------------------

    def rotate_key(self, *, keep_old: bool = False) -> int:
        """Re-wrap every data key under a new KEK; returns the number of entries.

        Holds the rotation lock exclusively, so no process writes an entry under the old
        key meanwhile. With `keep_old`, the previous key is written to `key.old` (needed
        only to read backups of vault.db taken before the rotation).
        """
        key_path = self.home.key_file
        new_path = key_path.with_name("key.new")
        with self._rotation_lock(fcntl.LOCK_EX), self._lock:
            self._keyring = _load_keyring(self.home)
            old = self._keyring.keys[self._keyring.active_id]
            if new_path.exists() and not self._entries_under(key_id(read_key(new_path))):
                new_path.unlink()  # a rotation that crashed before its commit
            if not new_path.exists():
                write_new_key(new_path, generate_key())
            new = read_key(new_path)
            count = self._rewrap_all(new)
            if keep_old:
                replace_file(key_path.with_name("key.old"), encode_key(old))
            os.replace(new_path, key_path)
            self._keyring = _load_keyring(self.home)
            self._checkpoint()  # no data key wrapped under the old KEK stays in the WAL
            return count

    def _check_key_matches(self) -> None:
        """Refuse to write under a key file that cannot unwrap the stored entries (a wrong
        or replaced key): the vault would be split between two keys. Call it holding the
        rotation lock, so a rotation under way is not mistaken for a wrong key."""
        stored = {r[0] for r in self._conn.execute("SELECT DISTINCT kek_id FROM entries")}
        unknown = sorted(stored - set(self._keyring.keys))
        if unknown:
            raise KeyFileError(
                f"key file {self.home.key_file} does not match the vault: its entries were "
                f"encrypted under key id {', '.join(unknown)}; restore the matching key file"
            )

    def _entries_under(self, kek_id: str) -> bool:
        sql = "SELECT 1 FROM entries WHERE kek_id = ? LIMIT 1"
        return self._conn.execute(sql, (kek_id,)).fetchone() is not None

    def _rewrap_all(self, new: bytes) -> int:
        new_id = key_id(new)
        with immediate(self._conn) as conn:
            rows = conn.execute(
                "SELECT ref, org_id, kind, kek_id, wrap_nonce, wrapped_key FROM entries"
            ).fetchall()
            for row in rows:
                if row["kek_id"] == new_id:
                    continue
                ref, org_id, kind = row["ref"], row["org_id"], row["kind"]
                aad = _aad(b"dek", org_id, kind, ref)
                try:
                    data_key = AESGCM(self._key_for(row["kek_id"])).decrypt(
                        row["wrap_nonce"], row["wrapped_key"], aad
                    )
                except InvalidTag:
                    raise VaultError(
                        f"vault entry {ref} failed authentication; key rotation aborted, "
                        "nothing changed"
                    ) from None
                nonce = os.urandom(NONCE_BYTES)
                conn.execute(
                    "UPDATE entries SET kek_id = ?, wrap_nonce = ?, wrapped_key = ? WHERE ref = ?",
                    (new_id, nonce, AESGCM(new).encrypt(nonce, data_key, aad), ref),
                )
        return len(rows)

    def _key_for(self, kek_id: str) -> bytes:
        if kek_id not in self._keyring.keys:
            self._keyring = _load_keyring(self.home)  # rotated by another process?
        try:
            return self._keyring.keys[kek_id]
        except KeyError:
            raise VaultError(
                f"the vault was encrypted under a key (id {kek_id}) that is not in "
                f"{self.home.key_file}; restore the matching key file"
            ) from None

    def _reload_if_key_changed(self) -> None:
        if _key_stamp(self.home) != self._keyring.stamp:
            self._keyring = _load_keyring(self.home)

    @contextmanager
    def _rotation_lock(self, mode: int) -> Iterator[None]:
        self.home.locks.mkdir(exist_ok=True, mode=0o700)
        with open(self.home.locks / "vault-key.lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), mode)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _seal(
    kek: bytes, kek_id: str, org_id: str, kind: str, ref: str, plaintext: bytes
) -> tuple[str, bytes, bytes, bytes, bytes]:
    data_key = AESGCM.generate_key(bit_length=256)
    wrap_nonce, nonce = os.urandom(NONCE_BYTES), os.urandom(NONCE_BYTES)
    wrapped = AESGCM(kek).encrypt(wrap_nonce, data_key, _aad(b"dek", org_id, kind, ref))
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, _aad(b"value", org_id, kind, ref))
    return kek_id, wrap_nonce, wrapped, nonce, ciphertext


__all__ = [
    "CLIENT_SECRET",
    "CREDENTIAL",
    "MINTED_TOKEN",
    "SECRET",
    "KeyFileError",
    "Vault",
    "VaultError",
]
