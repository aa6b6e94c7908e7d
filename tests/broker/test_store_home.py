"""`capgate init` and the key-encryption key file."""

from __future__ import annotations

import os
import stat

import pytest

from capgate.broker.errors import KeyFileError, NotInitialized, VaultError
from capgate.broker.home import Home, init_home
from capgate.broker.stores import Stores


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_private_home_with_key_config_and_both_stores(home: Home):
    assert mode(home.root) == 0o700
    assert mode(home.key_file) == 0o600
    assert home.config.exists()
    assert home.control_db.exists() and home.vault_db.exists()
    assert mode(home.control_db) == 0o600 and mode(home.vault_db) == 0o600


def test_init_twice_never_overwrites_the_key(home: Home):
    before = home.key_file.read_bytes()
    result = init_home(home.root)
    assert result.created_key is False
    assert home.key_file.read_bytes() == before


def test_key_file_readable_by_others_is_refused(home: Home):
    os.chmod(home.key_file, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        Stores.open(home)


def test_missing_key_file_says_run_init(home: Home):
    home.key_file.unlink()
    with pytest.raises(NotInitialized, match="run capgate init"):
        Stores.open(home)


def test_uninitialised_home_says_run_init(tmp_path):
    with pytest.raises(NotInitialized, match="run capgate init"):
        Stores.open(Home(tmp_path / "nothing"))


def test_malformed_key_file_is_a_clean_error(home: Home):
    home.key_file.write_bytes(b"not base64 at all!!\n")
    with pytest.raises(KeyFileError, match="not a base64 key"):
        Stores.open(home)


def test_wrong_key_fails_cleanly_without_bytes_in_the_message(home: Home, stores, org):
    ref = stores.vault.put(org, "secret", "CANARY-wrong-key")
    stores.close()
    init_home(home.root / "other")
    os.replace(home.root / "other" / "key", home.key_file)
    reopened = Stores.open(home)
    with pytest.raises(VaultError) as info:
        reopened.vault.get(ref, org, "secret")
    message = str(info.value)
    assert "restore the matching key file" in message
    assert "CANARY" not in message and "\\x" not in message and "b'" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    reopened.close()
