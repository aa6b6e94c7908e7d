"""Hosted OAuth consent: the control plane's `oauth/start` and `/oauth/callback`.

`start` makes a random state (stored as SHA-256, single use, valid 10 minutes) and a PKCE
verifier (kept in the vault until the callback), bound to the credential and to the user
who started the flow, and returns the provider's authorization URL with the redirect URI
`{public-url}/oauth/callback`.

`complete` checks, in this order and before any call to the token endpoint: the state is
known and unused (then it is used up, whatever happens next), not expired, the browser is
signed in to the console as the user who started the flow, and the provider sent no
`error=`. Only then is the code exchanged; the refresh token is stored under the
credential's lock and the credential becomes `active`. Any refusal stores nothing.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import vault
from .apikeys import is_past, iso_after
from .credential_rows import CredentialRow
from .credentials import Credentials
from .errors import CapgateError, FieldError, InvalidInput, NotFound
from .home import now_iso
from .providers import PROVIDERS, Kind
from .secretvalue import SecretValue
from .store import ControlStore, StoreRow
from .vault import Vault

if TYPE_CHECKING:  # the OAuth stack (authlib, httpx) loads only when a flow runs
    from .oauth import Endpoints

log = logging.getLogger("capgate.broker.hosted_consent")

STATE_TTL_S = 600


class ConsentRefused(CapgateError):
    """The callback was refused; nothing was stored. `http_status` is 400 or 403."""

    def __init__(self, message: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.http_status = http_status


@dataclass(frozen=True)
class Started:
    authorization_url: str
    expires_at: str


@dataclass(frozen=True)
class Completed:
    credential_id: str
    return_to: str | None


def _sha(state: str) -> str:
    return hashlib.sha256(state.encode("utf-8")).hexdigest()


def safe_return_to(value: str | None) -> str | None:
    """A local path to go back to after consent; anything else (another host, `//x`) is
    refused so that the callback cannot be turned into an open redirect."""
    if value is None:
        return None
    if (
        not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(ch) < 0x21 for ch in value)
    ):
        raise InvalidInput([FieldError("return_to", "must be a path on this server, like /x")])
    return value


class HostedConsents:
    def __init__(self, store: ControlStore, vault_: Vault, credentials: Credentials) -> None:
        self._store = store
        self._vault = vault_
        self._credentials = credentials

    def start(
        self,
        row: CredentialRow,
        *,
        user_id: str,
        redirect_uri: str,
        endpoints: Endpoints,
        return_to: str | None = None,
    ) -> Started:
        if row.kind != Kind.OAUTH2_AUTHORIZATION_CODE:
            raise InvalidInput(
                [FieldError("kind", f"{row.kind} has no consent; only oauth2_authorization_code")]
            )
        target = safe_return_to(return_to)
        provider = PROVIDERS[row.provider]
        state = secrets.token_urlsafe(32)
        verifier = SecretValue(secrets.token_urlsafe(48))
        from .consent import authorization_url

        url = authorization_url(
            provider,
            row.resolved(),
            endpoints,
            redirect_uri=redirect_uri,
            state=state,
            verifier=verifier,
        )
        expires_at = iso_after(STATE_TTL_S)
        self._prune()
        verifier_ref = self._vault.put(row.org_id, vault.OAUTH_VERIFIER, verifier)
        try:
            with self._store.write() as conn:
                conn.execute(
                    "INSERT INTO oauth_states (sha256, org_id, credential_id, user_id,"
                    " redirect_uri, verifier_ref, return_to, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        _sha(state),
                        row.org_id,
                        row.id,
                        user_id,
                        redirect_uri,
                        verifier_ref,
                        target,
                        now_iso(),
                        expires_at,
                    ),
                )
        except BaseException:
            self._vault.delete(verifier_ref)
            raise
        return Started(url, expires_at)

    def _prune(self) -> None:
        """Drop states that expired unused, with their verifiers (and old used ones)."""
        now = now_iso()
        with self._store.write() as conn:
            stale = conn.execute(
                "SELECT sha256, verifier_ref FROM oauth_states WHERE expires_at < ?", (now,)
            ).fetchall()
            conn.execute("DELETE FROM oauth_states WHERE expires_at < ?", (now,))
        for row in stale:
            if row["verifier_ref"]:
                self._vault.delete(row["verifier_ref"])

    def complete(
        self,
        *,
        state: str | None,
        code: str | None,
        error: str | None,
        signed_in_user_id: str | None,
        endpoints: Endpoints,
    ) -> Completed:
        if not state:
            raise ConsentRefused("the callback carries no state")
        digest = _sha(state)
        with self._store.write() as conn:
            found = conn.execute(
                "SELECT * FROM oauth_states WHERE sha256 = ? AND used_at IS NULL", (digest,)
            ).fetchone()
            if found is not None:
                conn.execute(
                    "UPDATE oauth_states SET used_at = ? WHERE sha256 = ?", (now_iso(), digest)
                )
        if found is None:
            raise ConsentRefused("unknown or already used state; start the consent again")
        verifier_ref = found["verifier_ref"]
        try:
            return self._complete(found, code, error, signed_in_user_id, endpoints)
        finally:
            if verifier_ref:
                self._vault.delete(verifier_ref)

    def _complete(
        self,
        found: StoreRow,
        code: str | None,
        error: str | None,
        signed_in_user_id: str | None,
        endpoints: Endpoints,
    ) -> Completed:
        if is_past(found["expires_at"]):
            raise ConsentRefused("this consent expired (10 minutes); start it again")
        if signed_in_user_id is None or signed_in_user_id != found["user_id"]:
            raise ConsentRefused(
                "finish the consent in a browser signed in to the console as the user who "
                "started it",
                403,
            )
        if error is not None:
            code_name = error if error.replace("_", "").isalnum() and len(error) <= 48 else "?"
            raise ConsentRefused(f"the provider refused authorization: {code_name}")
        if not code:
            raise ConsentRefused("the callback carries no code")
        try:
            row = self._credentials.get_by_id(found["credential_id"])
        except NotFound:
            raise ConsentRefused("the credential was deleted meanwhile; nothing stored") from None
        if row.org_id != found["org_id"]:
            raise ConsentRefused("not this org's credential")
        verifier = self._vault.get(found["verifier_ref"], row.org_id, vault.OAUTH_VERIFIER)
        provider = PROVIDERS[row.provider]
        from .consent import ConsentError, exchange_code

        try:
            grant = exchange_code(
                provider,
                row.resolved(),
                endpoints,
                code=SecretValue(code),
                redirect_uri=found["redirect_uri"],
                verifier=verifier,
                client_secret=self._credentials.client_secret(row),
            )
        except ConsentError as exc:
            raise ConsentRefused(str(exc)) from None
        assert grant.refresh_token is not None
        with self._store.credential_lock(row.id):
            current = self._credentials.get_by_id(row.id)
            stored = self._credentials.replace_durable_value(
                row.id, current.durable_ref, grant.refresh_token, actor="console:consent"
            )
        if not stored:
            raise ConsentRefused("the credential changed meanwhile; nothing stored", 409)
        return Completed(row.id, found["return_to"])
