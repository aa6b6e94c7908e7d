"""Minted access tokens shared by every process of a home: workers and replicas.

Each process keeps its own in-memory `TokenCache`; without sharing, N processes would
call the token endpoint N times per token lifetime. A mint miss therefore goes
in-memory cache -> the credential's cross-process lock -> this shared entry -> only
then the token endpoint, whose token is written here before the lock is released. The
next process to take the lock finds it and uses it.

Entries live in the vault (kind `minted_token`, encrypted and bound by associated data
to org, kind and ref like every vault value), one per credential and cache key, never in
the control store. An entry carries its wall-clock expiry and a binding to the
credential row it was minted from (durable ref, settings, status, updated_at): a row
that changed since, or is gone, never gets a stale token. `Credentials.delete` removes a
credential's entries; an upstream 401 (`forget`) removes them too. A write that races a
delete removes itself again. Sharing is an optimisation: a failure to read or write an
entry is logged and the process mints as it would without it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable

from .credential_rows import CredentialRow
from .errors import NotFound
from .home import now_iso
from .oauth import TokenGrant
from .secretvalue import SecretValue
from .stores import Stores
from .types import ResolvedCredential
from .vault import minted_ref

log = logging.getLogger("capgate.broker.sharedtokens")


def binding(row: CredentialRow) -> str:
    """What a shared token is valid for: this exact row (any change makes a new one)."""
    state = [
        row.id,
        row.org_id,
        row.kind,
        row.status,
        row.durable_ref,
        list(row.scopes),
        dict(row.provider_config),
        row.updated_at,
    ]
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


class SharedTokens:
    """The vault-backed shared entries of one home (blocking; call from worker threads)."""

    def __init__(
        self,
        stores: Stores,
        *,
        max_ttl: float,
        skew: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stores = stores
        self.max_ttl = max_ttl
        self.skew = skew
        self._clock = clock
        self._guard = threading.Lock()
        self._dropped: dict[str, float] = {}  # credential id -> when an upstream said 401
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="capgate-shared-tokens"
        )

    def slot(self, cred: ResolvedCredential, key: tuple[str, ...]) -> SharedSlot:
        return SharedSlot(self, cred, minted_ref(cred.id, json.dumps(list(key))))

    def forget(self, credential_id: str) -> None:
        """Drop every shared token of one credential (the upstream rejected it).

        Called on the event loop (the response hook), so the vault delete runs in a
        thread of its own; until it is done, this process ignores every entry of the
        credential shared before now.
        """
        with self._guard:
            self._dropped[credential_id] = self._clock()
        # Only entries written by now: a token minted after the 401 must stay shared.
        with contextlib.suppress(RuntimeError):  # closed: the process is stopping
            self._pool.submit(self._delete, credential_id, now_iso())

    def close(self) -> None:
        """Finish the deletes under way (before the stores close)."""
        self._pool.shutdown(wait=True)

    def wait_forgotten(self) -> None:
        """Wait until every `forget` so far reached the vault (tests, shutdown)."""
        self._pool.submit(lambda: None).result()

    def _delete(self, credential_id: str, written_by: str) -> None:
        try:
            self._stores.vault.delete_minted(credential_id, written_by=written_by)
        except Exception as exc:  # sharing is an optimisation: mint as without it
            log.error("could not drop shared tokens of %s: %s", credential_id, type(exc).__name__)

    def _dropped_at(self, credential_id: str) -> float | None:
        with self._guard:
            return self._dropped.get(credential_id)

    def _row(self, credential_id: str) -> CredentialRow | None:
        try:
            return self._stores.credentials.get_by_id(credential_id)
        except NotFound:
            return None


class SharedSlot:
    """One credential's shared entry for one cache key (`minting.SharedToken`).

    Both methods run under the credential's cross-process lock (minting.mint_token).
    """

    def __init__(self, shared: SharedTokens, cred: ResolvedCredential, ref: str) -> None:
        self._shared = shared
        self._cred = cred
        self._ref = ref
        self.found = False  # find() returned another process's token

    def _current(self) -> CredentialRow | None:
        """The credential's row now, if the caller's view of it (its activation) is that
        row: a process with a stale view neither shares nor takes a token."""
        row = self._shared._row(self._cred.id)
        return row if row is not None and row.resolved() == self._cred else None

    def find(self) -> TokenGrant | None:
        """The token another process minted, if it is for the current row and lives
        longer than the skew; None otherwise (then the caller mints)."""
        row = self._current()
        if row is None:
            return None
        try:
            stored = self._shared._stores.vault.get_minted(self._ref, row.org_id)
            if stored is None:
                return None
            entry = json.loads(stored.reveal())
            token, expires_at, bound = entry["token"], float(entry["expires_at"]), entry["binding"]
            minted_at = float(entry["minted_at"])
        except Exception as exc:  # unreadable: mint instead
            log.error("shared token of %s unreadable: %s", self._cred.name, type(exc).__name__)
            return None
        remaining = expires_at - self._shared._clock()
        if bound != binding(row) or not remaining > self._shared.skew:
            return None
        dropped = self._shared._dropped_at(self._cred.id)
        if dropped is not None and minted_at <= dropped:
            return None  # rejected by an upstream; its delete is still under way
        self.found = True
        return TokenGrant(access_token=SecretValue(token), expires_in=math.floor(remaining))

    def keep(self, grant: TokenGrant) -> None:
        """Share a token just minted, for as long as the in-memory cache would keep it."""
        shared = self._shared
        lifetime = shared.max_ttl if grant.expires_in is None else grant.expires_in
        lifetime = min(lifetime, shared.max_ttl)
        if lifetime - shared.skew <= 0:
            return
        row = self._current()
        if row is None:
            return
        now = shared._clock()
        entry = {
            "token": grant.access_token.reveal(),
            "minted_at": now,
            "expires_at": now + lifetime,
            "binding": binding(row),
        }
        vault = shared._stores.vault
        try:
            vault.put_minted(self._ref, row.org_id, SecretValue(json.dumps(entry)))
            # A delete that ran meanwhile removed the row before its entries; if it is
            # gone now, this entry may have been written after that purge.
            if shared._row(self._cred.id) is None:
                vault.delete_minted(self._cred.id)
        except Exception as exc:  # sharing is an optimisation: mint as without it
            log.error("could not share the token of %s: %s", self._cred.name, type(exc).__name__)
