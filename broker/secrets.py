"""Secrets: opaque named values, unique per (org, name), never updated in place.

Rotation is delete then set under the same name; `set` on an existing name is a
Conflict that says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from . import audit, changes, vault
from .errors import Exists, FieldError, InvalidInput, NotFound, VaultError
from .home import now_iso
from .secretvalue import SecretValue
from .store import ControlStore, check_name, new_id
from .vault import Vault

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecretRow:
    id: str
    org_id: str
    name: str
    durable_ref: str
    created_at: str
    updated_at: str

    def to_json(self) -> dict:
        return asdict(self)


class Secrets:
    """Secret rows of every org in one home, with their vault entries."""

    def __init__(self, store: ControlStore, vault_: Vault) -> None:
        self._store = store
        self._vault = vault_

    def set(
        self, org_id: str, name: str, value: SecretValue, *, actor: str | None = None
    ) -> SecretRow:
        """Store a new secret; InvalidInput for an empty value, Conflict when it exists."""
        check_name("name", name)
        if not value.reveal():
            raise InvalidInput(
                [FieldError("value", "empty; pipe the value on stdin or pass --from-file FILE")]
            )
        self._refuse_existing(org_id, name)
        at = now_iso()
        row = SecretRow(
            new_id("sec"), org_id, name, self._vault.put(org_id, vault.SECRET, value), at, at
        )
        try:
            with self._store.write() as conn:
                self._refuse_existing(org_id, name)
                conn.execute(
                    "INSERT INTO secrets (id, org_id, name, durable_ref, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (row.id, org_id, name, row.durable_ref, at, at),
                )
                audit.record(
                    conn,
                    org_id=org_id,
                    actor=actor,
                    action="secret.create",
                    target_type="secret",
                    target_name=name,
                )
                changes.bump(self._store, conn)
        except BaseException:
            self._vault.delete(row.durable_ref)
            raise
        return row

    def get(self, org_id: str, name: str) -> SecretRow:
        rows = self._store.query(
            "SELECT * FROM secrets WHERE org_id = ? AND name = ?", (org_id, name)
        )
        if not rows:
            raise NotFound(f"secret {name!r} does not exist")
        return SecretRow(**dict(rows[0]))

    def list_secrets(self, org_id: str) -> list[SecretRow]:
        rows = self._store.query("SELECT * FROM secrets WHERE org_id = ? ORDER BY name", (org_id,))
        return [SecretRow(**dict(r)) for r in rows]

    def delete(self, org_id: str, name: str, *, actor: str | None = None) -> None:
        """Remove the row, then its vault entry."""
        row = self.get(org_id, name)
        with self._store.write() as conn:
            conn.execute("DELETE FROM secrets WHERE id = ?", (row.id,))
            audit.record(
                conn,
                org_id=org_id,
                actor=actor,
                action="secret.delete",
                target_type="secret",
                target_name=name,
            )
            changes.bump(self._store, conn)
        self._vault.delete(row.durable_ref)

    def values(
        self, org_id: str, names: Iterable[str], *, skip_unreadable: bool = False
    ) -> dict[str, SecretValue]:
        """Decrypted values of the named secrets of one org; missing names are absent.

        With `skip_unreadable`, a secret whose vault entry cannot be read (tampered, wrong
        key) is left out too, and logged by name and ref (the proxy: its transforms then
        fail with `missing_secret`); otherwise the VaultError propagates."""
        wanted = sorted(set(names))
        if not wanted:
            return {}
        marks = ", ".join("?" for _ in wanted)
        rows = self._store.query(
            f"SELECT name, durable_ref FROM secrets WHERE org_id = ? AND name IN ({marks})",
            (org_id, *wanted),
        )
        found: dict[str, SecretValue] = {}
        for r in rows:
            try:
                found[r["name"]] = self._vault.get(r["durable_ref"], org_id, vault.SECRET)
            except VaultError as exc:
                if not skip_unreadable:
                    raise
                log.error(
                    "secret %s (org %s): %s; left out (run `capgate vault check`)",
                    r["name"],
                    org_id,
                    exc,
                )
        return found

    def _refuse_existing(self, org_id: str, name: str) -> None:
        with self._store.read() as conn:
            found = conn.execute(
                "SELECT 1 FROM secrets WHERE org_id = ? AND name = ?", (org_id, name)
            ).fetchone()
        if found:
            raise Exists(
                f"secret {name!r} already exists; secrets are not updated in place: "
                f"delete it first (capgate secret delete {name})"
            )
