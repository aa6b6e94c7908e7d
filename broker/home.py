"""The capgate home folder: its layout, `capgate init`, and the key-encryption key file.

Layout (all under one directory, mode 0700):

    config.json    format version and creation time (no secrets)
    key            the key-encryption key (KEK): 32 random bytes, base64, mode 0600
    control.db     the control store (SQLite, WAL): rows, references, audit, decisions
    vault.db       the vault store (SQLite, WAL): encrypted durable values only
    locks/         per-credential lock files for cross-process mint serialisation
    ca/            the proxy CA (created by the proxy, not here)

The stores may instead be PostgreSQL databases: `capgate init --store URL --vault URL`
records the URLs in config.json (mode 0600), and CAPGATE_STORE_URL / CAPGATE_VAULT_URL
override them; CAPGATE_KEY_FILE points at a key file outside the home (each machine of a
cluster needs the same key).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .errors import KeyFileError, NotInitialized

KEY_BYTES = 32
HOME_FORMAT = 1
STORE_URL_ENV = "CAPGATE_STORE_URL"
VAULT_URL_ENV = "CAPGATE_VAULT_URL"
KEY_FILE_ENV = "CAPGATE_KEY_FILE"


@dataclass(frozen=True)
class Home:
    """Paths inside one capgate home."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def key_file(self) -> Path:
        override = os.environ.get(KEY_FILE_ENV)
        return Path(override).expanduser() if override else self.root / "key"

    def _configured(self, env: str, key: str) -> str | None:
        if os.environ.get(env):
            return os.environ[env]
        try:
            value = json.loads(self.config.read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) and value else None

    @property
    def store_url(self) -> str | None:
        """The control store's PostgreSQL URL, or None for control.db (SQLite)."""
        return self._configured(STORE_URL_ENV, "store_url")

    @property
    def vault_url(self) -> str | None:
        """The vault store's PostgreSQL URL, or None for vault.db (SQLite)."""
        return self._configured(VAULT_URL_ENV, "vault_url")

    @property
    def control_db(self) -> Path:
        return self.root / "control.db"

    @property
    def vault_db(self) -> Path:
        return self.root / "vault.db"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def ca(self) -> Path:
        return self.root / "ca"

    def require_initialized(self) -> None:
        """Raise NotInitialized unless `capgate init` has run for this home."""
        missing = [p for p in (self.config, self.key_file) if not p.exists()]
        if missing:
            raise NotInitialized(f"{self.root} is not a capgate home; run capgate init")


@dataclass(frozen=True)
class InitResult:
    home: Home
    created_key: bool
    created_config: bool


def now_iso() -> str:
    """The current UTC time as ISO 8601 with microseconds (sortable as text)."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def init_home(
    root: Path, *, store_url: str | None = None, vault_url: str | None = None
) -> InitResult:
    """Create the home folder, config and key file; never overwrite an existing key.

    The stores are created (and migrated) by the caller opening them, so running this
    again on an existing home only fills in what is missing. `store_url` / `vault_url`
    (PostgreSQL) are recorded in config.json, replacing earlier ones.
    """
    home = Home(root)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    home.locks.mkdir(exist_ok=True, mode=0o700)
    created_key = False
    if not home.key_file.exists():
        created_key = write_new_key(home.key_file)
    check_key_file(home.key_file)
    created_config = False
    if not home.config.exists():
        body = json.dumps({"format": HOME_FORMAT, "created_at": now_iso()}, indent=2) + "\n"
        created_config = _write_exclusive(home.config, body.encode(), 0o600)
    urls = {k: v for k, v in (("store_url", store_url), ("vault_url", vault_url)) if v}
    if urls:
        config = json.loads(home.config.read_text())
        if any(config.get(k) != v for k, v in urls.items()):
            replace_file(home.config, (json.dumps(config | urls, indent=2) + "\n").encode())
    return InitResult(home, created_key, created_config)


def generate_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def encode_key(key: bytes) -> bytes:
    return base64.b64encode(key) + b"\n"


def write_new_key(path: Path, key: bytes | None = None) -> bool:
    """Write a fresh key to `path` (mode 0600) unless a file is already there.

    Returns True when this call created the file. Written to a temporary file and then
    hard-linked into place, so a concurrent init can never see a half-written key nor
    overwrite one.
    """
    return _write_exclusive(path, encode_key(key or generate_key()), 0o600)


def _write_exclusive(path: Path, data: bytes, mode: int) -> bool:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def replace_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomically replace `path` with `data` (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_key_file(path: Path) -> None:
    """Refuse a key file that group or others may read or write."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} is missing; run capgate init") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"key file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise KeyFileError(
            f"key file {path} has mode {stat.S_IMODE(info.st_mode):04o}; it must not be "
            f"readable or writable by group or others (chmod 600 {path})"
        )


def read_key(path: Path) -> bytes:
    """Load a key-encryption key, checking its permissions and shape first."""
    check_key_file(path)
    raw = path.read_bytes().strip()
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"key file {path} is not a base64 key") from None
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"key file {path} does not hold a {KEY_BYTES}-byte key")
    return key
