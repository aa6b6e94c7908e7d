"""The `Broker` facade the proxy uses (ARCHITECTURE.md): store half and mint half meet here.

Static kinds are rendered from durable values fetched at activation. OAuth kinds go
through the token cache (single flight per credential) and `minting.mint_token`, which
holds the credential's cross-process lock, re-reads the durable value, and records the
outcome. Under that lock a token another process of the home minted is used if it is
still good (sharedtokens.py), so N workers or replicas make one token-endpoint call per
expiry. Mint failures come back as `MintOutcome(wire=None, reason="auth_unavailable:<code>")`.

When the store's generation moves (a change in any process), tokens of credentials that
were deleted or changed are dropped from the cache before the next request is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx

from . import metrics
from .credential_rows import ACTIVE, NEEDS_REAUTH, CredentialRow
from .decisions import DecisionWriter
from .errors import FieldError, InvalidInput, NotFound, VaultError
from .home import Home
from .minting import (
    Durable,
    Lock,
    MintEnv,
    StaticMinter,
    bearer_wire,
    flush_outcomes,
    mint_token,
    minter_for,
    run_blocking,
)
from .oauth import DEFAULT_TIMEOUT, Endpoints, MintError
from .providers import Kind
from .resolution import resolve_names
from .secretvalue import SecretValue
from .sharedtokens import SharedTokens
from .stores import Stores
from .tokencache import DEFAULT_MAX_TTL, DEFAULT_SKEW, Minted, TokenCache
from .types import (
    Activation,
    LeakPattern,
    MintOutcome,
    PolicyDecision,
    ResolvedCredential,
    WireCredential,
    Workspace,
    leak_patterns,
)

log = logging.getLogger("capgate.broker.service")

UNAVAILABLE = "auth_unavailable"
TTL_ENV = "CAPGATE_TOKEN_TTL"  # seconds a minted token is cached at most (0: never)
SKEW_ENV = "CAPGATE_TOKEN_SKEW"  # seconds before expiry a cached token is re-minted
VAULT_ERROR = "vault_error"
# The most one request waits for a minted token: the credential lock, the token call and
# the outcome's row, in all (each has a smaller deadline of its own).
MINT_DEADLINE_S = 25.0
MAX_COOLDOWN = 60.0  # seconds; a Retry-After beyond this is capped
STATIC_KINDS = frozenset({Kind.API_KEY, Kind.BASIC_AUTH, Kind.QUERY_API_KEY})
# Durable values that are bearer secrets in themselves; a service-account JSON is not a
# useful tripwire pattern as a whole.
_TRIPWIRE_KINDS = STATIC_KINDS | {Kind.OAUTH2_CLIENT_CREDENTIALS, Kind.OAUTH2_AUTHORIZATION_CODE}


def unavailable(name: str, code: str) -> MintOutcome:
    return MintOutcome(name, None, f"{UNAVAILABLE}:{code}")


class _StoreValues:
    """`minting.DurableValues` over the store half: lock, re-read, conditional replace."""

    def __init__(self, stores: Stores) -> None:
        self._stores = stores

    def lock(self, cred: ResolvedCredential) -> Lock:
        return self._stores.control.credential_file_lock(cred.id)

    def read(self, cred: ResolvedCredential) -> Durable:
        try:
            row = self._stores.credentials.get_by_id(cred.id)
            if row.durable_ref is None:
                raise MintError(row.status, terminal=False)  # pending_consent
            value = self._stores.credentials.durable_value(row)
        except NotFound:
            raise MintError("not_configured", terminal=False) from None
        except VaultError:
            raise _vault_fault(cred, "durable value") from None
        assert value is not None
        return Durable(row.durable_ref, value)

    def client_secret(self, cred: ResolvedCredential) -> SecretValue | None:
        try:
            return self._stores.credentials.client_secret(
                self._stores.credentials.get_by_id(cred.id)
            )
        except NotFound:
            raise MintError("not_configured", terminal=False) from None
        except VaultError:
            raise _vault_fault(cred, "client secret") from None

    def replace(self, cred: ResolvedCredential, old_ref: str, value: SecretValue) -> bool:
        return self._stores.credentials.replace_durable_value(cred.id, old_ref, value)

    def report(self, cred: ResolvedCredential, error: MintError | None) -> None:
        credentials = self._stores.credentials
        try:
            if error is None:
                credentials.record_mint(cred.id, "ok")
            elif error.terminal:
                credentials.record_mint(cred.id, error.code)
                if credentials.set_status(cred.id, NEEDS_REAUTH, error.code):
                    log.warning("credential %s needs re-authorisation (%s)", cred.name, error.code)
            else:
                credentials.record_mint(cred.id, f"transient:{error.code}")
                log.info("credential %s: transient mint failure (%s)", cred.name, error.code)
        except Exception as exc:  # recording must not turn a mint into a crash
            log.error("could not record the mint outcome of %s: %s", cred.name, type(exc).__name__)


def _vault_fault(cred: ResolvedCredential, what: str) -> MintError:
    """A vault entry that cannot be read (tampered, wrong key, key files mid-rotation) is
    capgate's fault, never the credential's: a transient `vault_error`, said in the log
    with the entry's row, never its value, and never a flip to needs_reauth."""
    log.error(
        "credential %s (%s): its %s cannot be read from the vault; mint refused "
        "(run `capgate vault check`)",
        cred.name,
        cred.id,
        what,
    )
    return MintError(VAULT_ERROR, terminal=False)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses NaN
        raise InvalidInput([FieldError(name, "must be a number of seconds >= 0")])
    return value


class Broker:
    """Credentials, secrets and mints for the proxy; one instance per process."""

    def __init__(
        self,
        stores: Stores,
        *,
        endpoints: Endpoints | None = None,
        token_max_ttl: float = DEFAULT_MAX_TTL,
        token_skew: float = DEFAULT_SKEW,
        http_timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.stores = stores
        self.endpoints = endpoints if endpoints is not None else Endpoints.from_env()
        self.tokens: TokenCache[SecretValue] = TokenCache(max_ttl=token_max_ttl, skew=token_skew)
        # Tokens shared with the other processes of this home (none with a TTL of 0).
        self.shared = (
            SharedTokens(stores, max_ttl=token_max_ttl, skew=token_skew)
            if token_max_ttl > 0
            else None
        )
        self._values = _StoreValues(stores)
        self._http_timeout = http_timeout
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._static: dict[str, SecretValue] = {}  # cred id -> durable value (static kinds)
        # cred id -> (value, row, its rendered wire): reused while both are the same objects
        self._wires: dict[str, tuple[SecretValue, ResolvedCredential, WireCredential]] = {}
        self._fingerprints: dict[str, str] = {}  # cred id -> row fingerprint at activation
        self._cooldown: dict[str, float] = {}  # cred id -> monotonic time of the next try
        self._decisions = DecisionWriter(stores.control.connect_again)
        stores.workspaces.touch_in_background()  # last-use writes never on the event loop
        self._generation = stores.changes.generation()

    @classmethod
    def open(cls, home: Path | Home, **options: object) -> Broker:
        """Open the broker of an initialised home.

        Token-cache settings come from CAPGATE_TOKEN_TTL / CAPGATE_TOKEN_SKEW unless given.
        """
        options.setdefault("token_max_ttl", _env_float(TTL_ENV, DEFAULT_MAX_TTL))
        options.setdefault("token_skew", _env_float(SKEW_ENV, DEFAULT_SKEW))
        return cls(Stores.open(home), **options)  # type: ignore[arg-type]

    # -- BrokerPort ----------------------------------------------------------------------

    def authenticate(self, token: str) -> Workspace | None:
        return self.stores.workspaces.authenticate(token)

    def activate(
        self, workspace: Workspace, credential_names: Iterable[str], secret_names: Iterable[str]
    ) -> Activation:
        # Read the generation first: a change committed while we read rows moves it
        # again, and the proxy re-activates on its next request.
        generation = self.generation()
        rows = resolve_names(
            self.stores.credentials,
            org_id=workspace.org_id,
            user_id=workspace.user_id,
            names=sorted(set(credential_names)),
        )
        patterns: list[LeakPattern] = []
        for name, row in rows.items():
            self._fingerprints[row.id] = _fingerprint(row)
            kind = Kind(row.kind)
            if kind not in _TRIPWIRE_KINDS or row.durable_ref is None:
                continue
            try:
                value = self.stores.credentials.durable_value(row)
            except VaultError as exc:
                # Its mints fail with vault_error (transient); the value is not a pattern.
                log.error("credential %s (%s): %s (run `capgate vault check`)", name, row.id, exc)
                continue
            if value is None:
                continue
            patterns.extend(leak_patterns(f"credential:{name}", value, embedded=True))
            if kind in STATIC_KINDS:
                self._static[row.id] = value
        secrets = self.stores.secrets.values(workspace.org_id, secret_names, skip_unreadable=True)
        for name, value in sorted(secrets.items()):
            patterns.extend(leak_patterns(f"secret:{name}", value, embedded=True))
        return Activation(
            workspace=workspace,
            credentials={name: row.resolved() for name, row in rows.items()},
            secrets=secrets,
            leak_patterns=tuple(patterns),
            generation=generation,
        )

    async def mint(self, activation: Activation, credential_name: str) -> MintOutcome:
        """The wire credential for one request, or a reason; never raises for a failure."""
        outcome = await self._mint(activation, credential_name)
        cred = activation.credentials.get(credential_name)
        metrics.count_mint(cred.provider if cred is not None else None, outcome.reason)
        return outcome

    async def _mint(self, activation: Activation, credential_name: str) -> MintOutcome:
        cred = activation.credentials.get(credential_name)
        if cred is None:
            return unavailable(credential_name, "not_configured")
        if cred.status != ACTIVE:
            return unavailable(credential_name, cred.status)
        try:
            provider, minter = minter_for(cred)
            if isinstance(minter, StaticMinter):
                value = self._static.get(cred.id)
                if value is None:
                    value = await self._read_static(cred)
                wire = self._wire(cred, value, lambda: minter.wire(provider, cred, value))
                return MintOutcome(credential_name, wire)
            key = _cache_key(cred)
            cached = self.tokens.peek(key) if self.tokens.max_ttl else None
            if cached is not None:  # the common case: no endpoint, no deadline to arm
                wire = self._wire(cred, cached, lambda: bearer_wire(provider, cred, cached))
                return MintOutcome(credential_name, wire)
            if self._cooldown.get(cred.id, 0.0) > time.monotonic():
                return unavailable(credential_name, "retry_later")  # honouring Retry-After
            env = MintEnv(self._http(), self.endpoints, self._values)
            slot = self.shared.slot(cred, key) if self.shared is not None else None

            async def mint_once() -> Minted[SecretValue]:  # a token endpoint call
                started = time.perf_counter()
                try:
                    grant = await mint_token(provider, minter, cred, env, slot)
                finally:
                    if slot is None or not slot.found:  # another process's token: no call
                        metrics.TOKEN_ENDPOINT_SECONDS.labels(
                            metrics.provider_label(cred.provider)
                        ).observe(time.perf_counter() - started)
                return Minted(grant.access_token, grant.expires_in)

            try:
                async with asyncio.timeout(MINT_DEADLINE_S):
                    token = await self.tokens.get(key, mint_once)
            except TimeoutError:
                log.warning("credential %s: no token within %.0f s", cred.name, MINT_DEADLINE_S)
                raise MintError("timeout", terminal=False) from None
        except MintError as exc:
            if exc.retry_after:
                pause = min(exc.retry_after, MAX_COOLDOWN)
                self._cooldown[cred.id] = time.monotonic() + pause
            return unavailable(credential_name, exc.code)
        self._cooldown.pop(cred.id, None)
        wire = self._wire(cred, token, lambda: bearer_wire(provider, cred, token))
        return MintOutcome(credential_name, wire)

    def drop_token(self, activation: Activation, credential_name: str) -> None:
        """Forget the cached token (the upstream answered 401): the next request re-mints."""
        cred = activation.credentials.get(credential_name)
        if cred is not None:
            self.tokens.invalidate(cred.id)
            if self.shared is not None:  # nor may another process use the rejected token
                self.shared.forget(cred.id)

    def generation(self) -> int:
        generation = self.stores.changes.generation()
        if generation != self._generation:
            self._generation = generation
            self._forget_changed()
        return generation

    def record_decision(self, decision: PolicyDecision) -> None:
        self._decisions.record(decision)

    def decisions_writable(self) -> bool:
        return self._decisions.writable()

    def dropped_decisions(self) -> int:
        """policy_decision rows dropped so far because the writer's queue was full."""
        return self._decisions.dropped

    def close(self) -> None:
        """Flush policy decisions and mint outcomes, close HTTP clients and the stores."""
        self._decisions.close()
        flush_outcomes()
        for loop, client in list(self._clients.items()):
            with contextlib.suppress(RuntimeError):
                if loop.is_running():
                    loop.call_soon_threadsafe(_close_soon, client)
                elif not loop.is_closed():
                    loop.run_until_complete(client.aclose())
        self._clients.clear()
        if self.shared is not None:
            self.shared.close()
        self.stores.close()

    # -- internals -------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        # One client per event loop: its connection pool is bound to the loop.
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            for old in [lp for lp in self._clients if lp.is_closed()]:
                del self._clients[old]
            client = httpx.AsyncClient(timeout=self._http_timeout, follow_redirects=False)
            self._clients[loop] = client
        return client

    async def _read_static(self, cred: ResolvedCredential) -> SecretValue:
        try:
            return (await run_blocking(self._values.read, cred)).value
        except MintError as exc:
            if exc.terminal:
                await run_blocking(self._values.report, cred, exc)
            raise

    def _wire(
        self, cred: ResolvedCredential, value: SecretValue, render: Callable[[], WireCredential]
    ) -> WireCredential:
        """The rendered wire credential for this exact value and row (a new token or a
        re-activation renders again); rendering base64 scrub forms per request is waste."""
        cached = self._wires.get(cred.id)
        if cached is not None and cached[0] is value and cached[1] is cred:
            return cached[2]
        wire = render()
        self._wires[cred.id] = (value, cred, wire)
        return wire

    def _forget_changed(self) -> None:
        """Drop cached tokens and values of credentials deleted or changed since activation."""
        ids = self.tokens.credential_ids() | set(self._static) | set(self._fingerprints)
        for cred_id in ids:
            try:
                now = _fingerprint(self.stores.credentials.get_by_id(cred_id))
            except NotFound:
                now = None
            if now is None or now != self._fingerprints.get(cred_id):
                self.tokens.invalidate(cred_id)
                self._static.pop(cred_id, None)
                self._wires.pop(cred_id, None)
            if now is None:
                self._fingerprints.pop(cred_id, None)
            else:
                self._fingerprints[cred_id] = now


_closing: set[asyncio.Future[None]] = set()  # referenced until done (asyncio keeps weak refs)


def _close_soon(client: httpx.AsyncClient) -> None:
    """Close a client on its own (running) loop; called there via call_soon_threadsafe."""
    task = asyncio.ensure_future(client.aclose())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def _cache_key(cred: ResolvedCredential) -> tuple[str, ...]:
    return (cred.id, " ".join(cred.scopes), cred.provider_config.get("subject", ""))


def _fingerprint(row: CredentialRow) -> str:
    """What invalidates a cached token: the row's settings, status and (unless the
    kind rotates it on every refresh) its durable value."""
    rotating = row.kind == Kind.OAUTH2_AUTHORIZATION_CODE
    return json.dumps(
        [
            row.status,
            list(row.scopes),
            dict(row.provider_config),
            None if rotating else row.durable_ref,
        ],
        sort_keys=True,
    )
