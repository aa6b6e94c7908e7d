"""A canary value stored as a credential and as a secret never shows up outside the vault."""

from __future__ import annotations

import base64
import logging

from capgate.broker.credentials import CredentialSpec
from capgate.broker.home import Home
from capgate.broker.secretvalue import SecretValue
from capgate.broker.stores import Stores


def test_canary_appears_nowhere_but_encrypted_in_the_vault(
    cli, tmp_path, caplog, canary, file_bytes
):
    forms = [
        canary.encode(),
        base64.b64encode(canary.encode()),
        base64.urlsafe_b64encode(canary.encode()),
    ]

    def contains_canary(data: bytes) -> bool:
        return any(form in data for form in forms)

    caplog.set_level(logging.DEBUG)
    value_file = tmp_path / "v"
    value_file.write_text(canary)
    outputs = [
        cli("user", "add", "alice"),
        cli("cred", "add", "gh", "--provider", "github_pat", "--kind", "api_key", input=canary),
        cli(
            "cred",
            "add",
            "mail",
            "--provider",
            "google",
            "--kind",
            "oauth2_authorization_code",
            "--config",
            "client_id=c",
            "--client-secret-file",
            str(value_file),
            input=canary,
        ),
        cli("secret", "set", "tenant", "--from-file", str(value_file)),
        cli("cred", "list", "--json"),
        cli("cred", "show", "gh"),
        cli("cred", "show", "mail", "--json"),
        cli("secret", "list", "--json"),
        cli("cred", "update", "gh", input=canary),
        cli("vault", "rotate-key"),
        cli("cred", "add", "gh", "--provider", "github_pat", "--kind", "api_key", input=canary),
        cli("secret", "set", "tenant", input=canary),
    ]
    for result in outputs:
        assert not contains_canary(result.output.encode()), result.output
    assert not any(contains_canary(r.getMessage().encode()) for r in caplog.records)

    # Writes through the API with the WAL kept open, so the -wal files hold fresh pages.
    stores = Stores.open(Home(cli.root))
    org = stores.control.org_id("default")
    stores.secrets.set(org, "again", SecretValue(canary))
    spec = CredentialSpec(name="api", provider="openai", kind="api_key")
    stores.credentials.add(org, spec, SecretValue(canary))
    assert stores.secrets.values(org, ["again"])["again"].reveal() == canary  # it is stored
    assert file_bytes(cli.root / "control.db-wal")  # the WAL is there to be checked
    for name in ("control.db", "control.db-wal", "vault.db", "vault.db-wal"):
        assert not contains_canary(file_bytes(cli.root / name)), name
    stores.close()  # checkpoints the WAL into the main files: check every file again
    for path in cli.root.rglob("*"):
        if path.is_file():
            assert not contains_canary(file_bytes(path)), path
