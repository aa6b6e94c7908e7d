"""Credential rows: create, read, update, delete, and the mint-side status updates.

The control row holds provider, kind, scopes, non-secret provider_config and a
`durable_ref`; the durable value itself lives in the vault. For
oauth2_authorization_code the durable value is the refresh token and the client secret is
a second vault entry named by provider_config["client_secret_ref"].

Every write of a durable value goes vault first, then the control row; a failure after
the vault write deletes the new entry again. Every check that can reject input runs
before the vault is touched, so rejected input leaves vault.db unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import audit, changes, vault
from .credential_rows import (
    ACTIVE,
    CLIENT_SECRET_REF,
    PENDING_CONSENT,
    SELECT,
    STATUSES,
    CredentialRow,
    CredentialSpec,
    row_from_sql,
)
from .credential_rules import check_new_row, check_value, spec_errors
from .errors import FieldError, InvalidInput, NotFound
from .home import now_iso
from .providers import Kind
from .secretvalue import SecretValue
from .store import Connection, ControlStore, check_name, new_id
from .vault import Vault


class Credentials:
    """Credential rows of every org in one home, with their vault entries."""

    def __init__(self, store: ControlStore, vault_: Vault) -> None:
        self._store = store
        self._vault = vault_

    # -- reading ---------------------------------------------------------------------

    def get(self, org_id: str, name: str, user: str | None = None) -> CredentialRow:
        """The org row (user None) or that user's row; NotFound otherwise."""
        sql = SELECT + " WHERE c.org_id = ? AND c.name = ? AND "
        if user is None:
            rows = self._store.query(sql + "c.user_id IS NULL", (org_id, name))
        else:
            rows = self._store.query(sql + "u.name = ?", (org_id, name, user))
        if not rows:
            owner = f" for user {user!r}" if user else ""
            raise NotFound(f"credential {name!r}{owner} does not exist")
        return row_from_sql(rows[0])

    def get_by_id(self, credential_id: str) -> CredentialRow:
        rows = self._store.query(SELECT + " WHERE c.id = ?", (credential_id,))
        if not rows:
            raise NotFound(f"credential id {credential_id!r} does not exist")
        return row_from_sql(rows[0])

    def list_credentials(self, org_id: str, user: str | None = None) -> list[CredentialRow]:
        """Every row of the org (org and user rows), or only `user`'s rows."""
        if user is None:
            rows = self._store.query(SELECT + " WHERE c.org_id = ?", (org_id,))
        else:
            rows = self._store.query(SELECT + " WHERE c.org_id = ? AND u.name = ?", (org_id, user))
        return sorted(map(row_from_sql, rows), key=lambda r: (r.name, r.user or ""))

    def rows_named(self, org_id: str, names: list[str] | tuple[str, ...]) -> list[CredentialRow]:
        """All rows (org and every user's) of the org with one of `names`."""
        if not names:
            return []
        marks = ", ".join("?" for _ in names)
        sql = SELECT + f" WHERE c.org_id = ? AND c.name IN ({marks})"
        return [row_from_sql(r) for r in self._store.query(sql, (org_id, *names))]

    def durable_value(self, row: CredentialRow) -> SecretValue | None:
        """The row's durable value (None while an authorization_code awaits consent)."""
        if row.durable_ref is None:
            return None
        return self._vault.get(row.durable_ref, row.org_id, vault.CREDENTIAL)

    def client_secret(self, row: CredentialRow) -> SecretValue | None:
        """The authorization_code client secret, when one was stored."""
        ref = row.provider_config.get(CLIENT_SECRET_REF)
        return None if ref is None else self._vault.get(ref, row.org_id, vault.CLIENT_SECRET)

    # -- operator writes -------------------------------------------------------------

    def add(
        self,
        org_id: str,
        spec: CredentialSpec,
        value: SecretValue | None,
        *,
        client_secret: SecretValue | None = None,
        actor: str | None = None,
    ) -> CredentialRow:
        """Check and store a new credential; InvalidInput / NotFound / Conflict otherwise."""
        check_name("name", spec.name)
        errors = spec_errors(spec, client_secret_given=client_secret is not None)
        errors += check_value(spec.kind, value)
        if errors:
            raise InvalidInput(errors)
        user_id = None
        if spec.user is not None:
            user_id = self._user_id(org_id, spec.user)
        with self._store.read() as conn:
            check_new_row(conn, org_id, spec, user_id)
        refs = self._put(org_id, value, client_secret)
        config = dict(spec.provider_config)
        if refs.client_secret:
            config[CLIENT_SECRET_REF] = refs.client_secret
        status = ACTIVE if value is not None else PENDING_CONSENT
        at = now_iso()
        cred_id = new_id("cred")
        try:
            with self._store.write() as conn:
                check_new_row(conn, org_id, spec, user_id)
                conn.execute(
                    "INSERT INTO credentials (id, org_id, name, user_id, provider, kind, scopes,"
                    " durable_ref, provider_config, status, allow_user_override, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        cred_id,
                        org_id,
                        spec.name,
                        user_id,
                        spec.provider,
                        spec.kind,
                        json.dumps(list(spec.scopes)),
                        refs.value,
                        json.dumps(config, sort_keys=True),
                        status,
                        int(spec.allow_user_override),
                        at,
                        at,
                    ),
                )
                self._audit(
                    conn, org_id, actor, "credential.create", spec.name, spec.user, to_status=status
                )
                changes.bump(self._store, conn)
        except BaseException:
            refs.discard(self._vault)
            raise
        return self.get_by_id(cred_id)

    def update(
        self,
        org_id: str,
        name: str,
        user: str | None,
        value: SecretValue | None,
        *,
        client_secret: SecretValue | None = None,
        actor: str | None = None,
    ) -> CredentialRow:
        """Replace the durable value (and/or the client secret); a new value makes it active.

        This is how an operator recovers a `needs_reauth` credential: upload a fresh key,
        secret or refresh token. It holds the credential's lock, like a mint does, so a mint
        already under way with the old value cannot flip the new one to `needs_reauth`.
        """
        row = self.get(org_id, name, user)
        with self._store.credential_lock(row.id):
            return self._update(org_id, name, user, value, client_secret=client_secret, actor=actor)

    def _update(
        self,
        org_id: str,
        name: str,
        user: str | None,
        value: SecretValue | None,
        *,
        client_secret: SecretValue | None,
        actor: str | None,
    ) -> CredentialRow:
        row = self.get(org_id, name, user)  # re-read under the lock
        errors = check_value(row.kind, value)
        if value is None and client_secret is None:
            errors.append(_missing_value())
        if client_secret is not None and row.kind != Kind.OAUTH2_AUTHORIZATION_CODE:
            errors.append(_no_client_secret(row.kind))
        if errors:
            raise InvalidInput(errors)
        refs = self._put(org_id, value, client_secret)
        config = dict(row.provider_config)
        if refs.client_secret:
            config[CLIENT_SECRET_REF] = refs.client_secret
        to_status = ACTIVE if value is not None else row.status
        try:
            with self._store.write() as conn:
                done = conn.execute(
                    "UPDATE credentials SET durable_ref = ?, provider_config = ?, status = ?,"
                    " updated_at = ? WHERE id = ? AND durable_ref IS ? AND provider_config = ?",
                    (
                        refs.value or row.durable_ref,
                        json.dumps(config, sort_keys=True),
                        to_status,
                        now_iso(),
                        row.id,
                        row.durable_ref,
                        _config_json(row),
                    ),
                )
                if done.rowcount != 1:
                    raise NotFound(f"credential {name!r} changed meanwhile; try again")
                self._audit(
                    conn,
                    org_id,
                    actor,
                    "credential.update",
                    name,
                    row.user,
                    from_status=row.status,
                    to_status=to_status,
                )
                changes.bump(self._store, conn)
        except BaseException:
            refs.discard(self._vault)
            raise
        if refs.value and row.durable_ref:
            self._vault.delete(row.durable_ref)
        if refs.client_secret and CLIENT_SECRET_REF in row.provider_config:
            self._vault.delete(row.provider_config[CLIENT_SECRET_REF])
        return self.get_by_id(row.id)

    def delete(
        self, org_id: str, name: str, user: str | None = None, *, actor: str | None = None
    ) -> None:
        """Remove the row, then its vault entries; other processes see it on their next check."""
        row = self.get(org_id, name, user)
        with self._store.write() as conn:
            conn.execute("DELETE FROM credentials WHERE id = ?", (row.id,))
            self._audit(
                conn, org_id, actor, "credential.delete", name, row.user, from_status=row.status
            )
            changes.bump(self._store, conn)
        for ref in (row.durable_ref, row.provider_config.get(CLIENT_SECRET_REF)):
            if ref:
                self._vault.delete(ref)
        self._vault.delete_minted(row.id)  # access tokens shared between processes

    # -- mint-side writes ------------------------------------------------------------

    def replace_durable_value(
        self,
        credential_id: str,
        expected_ref: str | None,
        value: SecretValue,
        *,
        actor: str = "broker",
    ) -> bool:
        """Store `value` as the durable value if the row still points at `expected_ref`.

        For refresh-token rotation and `cred connect`: the row becomes `active`. Returns
        False (and writes nothing) when another writer replaced the value first or the row
        is gone. Hold `store.credential_lock(credential_id)` around read-refresh-replace.
        """
        row = self.get_by_id(credential_id)
        new_ref = self._vault.put(row.org_id, vault.CREDENTIAL, value)
        try:
            with self._store.write() as conn:
                done = conn.execute(
                    "UPDATE credentials SET durable_ref = ?, status = ?, updated_at = ?"
                    " WHERE id = ? AND durable_ref IS ?",
                    (new_ref, ACTIVE, now_iso(), credential_id, expected_ref),
                )
                if done.rowcount == 1 and row.status != ACTIVE:
                    self._audit(
                        conn,
                        row.org_id,
                        actor,
                        "credential.status",
                        row.name,
                        row.user,
                        from_status=row.status,
                        to_status=ACTIVE,
                        reason="value_replaced",
                    )
                if done.rowcount == 1:
                    changes.bump(self._store, conn)
        except BaseException:
            self._vault.delete(new_ref)
            raise
        if done.rowcount != 1:
            self._vault.delete(new_ref)
            return False
        if expected_ref:
            self._vault.delete(expected_ref)
        return True

    def set_status(
        self, credential_id: str, to_status: str, reason: str, *, actor: str = "broker"
    ) -> bool:
        """Move a row to `to_status`; one audit row when (and only when) it changed."""
        if to_status not in STATUSES:
            raise ValueError(f"unknown credential status {to_status!r}")
        with self._store.write() as conn:
            row = conn.execute(SELECT + " WHERE c.id = ?", (credential_id,)).fetchone()
            if row is None or row["status"] == to_status:
                return False
            conn.execute(
                "UPDATE credentials SET status = ?, updated_at = ? WHERE id = ?",
                (to_status, now_iso(), credential_id),
            )
            self._audit(
                conn,
                row["org_id"],
                actor,
                "credential.status",
                row["name"],
                row["user"],
                from_status=row["status"],
                to_status=to_status,
                reason=reason,
            )
            changes.bump(self._store, conn)
        return True

    def record_mint(self, credential_id: str, minted_status: str, at: str | None = None) -> None:
        """Set last_minted_at / last_minted_status (e.g. "ok", "transient", "invalid_grant")."""
        with self._store.write() as conn:
            conn.execute(
                "UPDATE credentials SET last_minted_at = ?, last_minted_status = ? WHERE id = ?",
                (at or now_iso(), minted_status, credential_id),
            )

    # -- helpers ---------------------------------------------------------------------

    def _user_id(self, org_id: str, user: str) -> str:
        rows = self._store.query(
            "SELECT id FROM users WHERE org_id = ? AND name = ?", (org_id, user)
        )
        if not rows:
            raise NotFound(f"user {user!r} does not exist; add it with capgate user add")
        return rows[0]["id"]

    def _put(
        self, org_id: str, value: SecretValue | None, client_secret: SecretValue | None
    ) -> _NewRefs:
        refs = _NewRefs()
        try:
            if value is not None:
                refs.value = self._vault.put(org_id, vault.CREDENTIAL, value)
            if client_secret is not None:
                refs.client_secret = self._vault.put(org_id, vault.CLIENT_SECRET, client_secret)
        except BaseException:
            refs.discard(self._vault)
            raise
        return refs

    @staticmethod
    def _audit(
        conn: Connection,
        org_id: str,
        actor: str | None,
        action: str,
        name: str,
        user: str | None,
        **status: str | None,
    ) -> None:
        target = name if user is None else f"{name} (user {user})"
        audit.record(
            conn,
            org_id=org_id,
            actor=actor,
            action=action,
            target_type="credential",
            target_name=target,
            **status,
        )


@dataclass
class _NewRefs:
    value: str | None = None
    client_secret: str | None = None

    def discard(self, vault_: Vault) -> None:
        for ref in (self.value, self.client_secret):
            if ref:
                vault_.delete(ref)


def _config_json(row: CredentialRow) -> str:
    return json.dumps(dict(row.provider_config), sort_keys=True)


def _missing_value() -> FieldError:
    return FieldError("value", "nothing to store; pipe the value on stdin or use --from-file")


def _no_client_secret(kind: str) -> FieldError:
    return FieldError("client_secret", f"only oauth2_authorization_code takes one, not {kind}")
