"""One small minter per credential kind: from a stored value to a WireCredential.

Two base classes: a `StaticMinter` (api_key, basic_auth, query_api_key) renders the durable
value into the provider's wire shape (`wire()`); an `OAuthMinter` obtains an access token
from the provider's token endpoint (`token()`), which `bearer_wire` then renders. Providers are data
(providers.py); nothing here branches on a provider slug.

Minters reach the stores only through `DurableValues`, a blocking port the broker
implements; OAuth minters call it from a small pool of capgate's own (`run_blocking`),
never from asyncio's default executor, and never wait for a lock in a thread: the
credential's cross-process lock is polled from the event loop, behind one asyncio lock
per credential, so any number of requests for a slow or locked credential wait without
holding a thread, and every other credential keeps minting.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import logging
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import httpx

from .oauth import (
    JWT_BEARER_GRANT,
    UNPARSEABLE,
    Endpoints,
    MintError,
    ServiceAccount,
    TokenGrant,
    request_token,
    sign_assertion,
)
from .providers import PROVIDERS, Kind, Provider, oauth_urls, wire_username
from .secretvalue import SecretValue
from .types import LeakPattern, ResolvedCredential, WireCredential, leak_patterns

log = logging.getLogger("capgate.broker.minting")


@dataclass(frozen=True)
class Durable:
    """A credential's current durable value and the vault ref it was read from."""

    ref: str
    value: SecretValue


# Seconds a mint waits for the credential's cross-process lock (another process minting
# or `cred connect`/`cred update` holding it) before failing transiently (`lock_timeout`).
LOCK_WAIT_S = 10.0
LOCK_POLL_S = 0.02
# Threads for the blocking store and vault calls of mints: capgate's own, bounded, so a
# stalled store can neither take asyncio's default executor nor grow without limit.
STORE_WORKERS = 4


class Lock(Protocol):
    """A cross-process lock taken without blocking (store.CredentialLock)."""

    def try_acquire(self) -> bool: ...

    def release(self) -> None: ...


class NoLock:
    """A `Lock` for values that are not stored (verify before create): always free."""

    def try_acquire(self) -> bool:
        return True

    def release(self) -> None:
        pass


class DurableValues(Protocol):
    """Blocking access to the durable values behind credentials (implemented by the broker)."""

    def lock(self, cred: ResolvedCredential) -> Lock:
        """An exclusive cross-process lock on one credential, not yet taken."""
        ...

    def read(self, cred: ResolvedCredential) -> Durable:
        """The current durable value, read from the stores now (never from a cache)."""
        ...

    def client_secret(self, cred: ResolvedCredential) -> SecretValue | None:
        """The separately stored client secret of an authorization-code credential."""
        ...

    def replace(self, cred: ResolvedCredential, old_ref: str, value: SecretValue) -> bool:
        """Store `value` as the durable value iff it is still `old_ref`; False if it moved."""
        ...

    def report(self, cred: ResolvedCredential, error: MintError | None) -> None:
        """Record a mint's outcome (last_minted_*; a terminal error flips the status)."""
        ...


@dataclass(frozen=True)
class MintEnv:
    """What OAuth minters need from the broker: HTTP client, endpoints, durable values."""

    http: httpx.AsyncClient
    endpoints: Endpoints
    values: DurableValues


class StaticMinter(ABC):
    """A kind whose wire value is the stored durable value itself, rendered.

    The two minter kinds are ABCs, not runtime-checkable Protocols: the broker tells them
    apart with isinstance on every request, and a Protocol check of a non-member walks
    its attributes with `inspect.getattr_static` each time."""

    @abstractmethod
    def wire(
        self, provider: Provider, cred: ResolvedCredential, value: SecretValue
    ) -> WireCredential: ...


class OAuthMinter(ABC):
    """A kind whose wire value is an access token minted from the durable value."""

    @abstractmethod
    async def token(
        self, provider: Provider, cred: ResolvedCredential, env: MintEnv
    ) -> TokenGrant: ...


def label(cred: ResolvedCredential) -> str:
    return f"credential:{cred.name}"


def _companions(
    provider: Provider, config: Mapping[str, str]
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """Companion headers and params: fixed ones, overridden or extended by provider_config."""
    headers = {name.lower(): (name, value) for name, value in provider.companion_headers}
    for key, name in provider.config_headers:
        if config.get(key):
            headers[name.lower()] = (name, config[key])
    query = [(param, config[key]) for key, param in provider.config_query if config.get(key)]
    return tuple(headers.values()), tuple(query)


def _pinned(provider: Provider, config: Mapping[str, str]) -> frozenset[str]:
    """The companions the operator set in provider_config: they replace the agent's."""
    names = {name.lower() for key, name in provider.config_headers if config.get(key)}
    names |= {param for key, param in provider.config_query if config.get(key)}
    return frozenset(names)


def _render(provider: Provider, value: SecretValue, basic: str = "") -> SecretValue:
    return SecretValue(provider.value_format.format(v=value.reveal(), basic=basic))


class ApiKeyMinter(StaticMinter):
    """`api_key`: the key in the provider's header and format, plus companion headers."""

    def wire(
        self, provider: Provider, cred: ResolvedCredential, value: SecretValue
    ) -> WireCredential:
        headers, query = _companions(provider, cred.provider_config)
        assert provider.header is not None
        return WireCredential(
            headers=((provider.header, _render(provider, value)),),
            companion_headers=headers,
            companion_query=query,
            pinned=_pinned(provider, cred.provider_config),
            scrub=leak_patterns(label(cred), value),
        )


class BasicAuthMinter(StaticMinter):
    """`basic_auth`: `Basic base64(username:token)`, username from config or the default."""

    def wire(
        self, provider: Provider, cred: ResolvedCredential, value: SecretValue
    ) -> WireCredential:
        user = wire_username(provider, cred.provider_config)
        pair = f"{user}:{value.reveal()}".encode()
        encoded = base64.b64encode(pair).decode("ascii")
        headers, query = _companions(provider, cred.provider_config)
        assert provider.header is not None
        scrub = (*leak_patterns(label(cred), value), LeakPattern(label(cred), encoded.encode()))
        return WireCredential(
            headers=((provider.header, _render(provider, value, basic=encoded)),),
            companion_headers=headers,
            companion_query=query,
            pinned=_pinned(provider, cred.provider_config),
            scrub=scrub,
        )


class QueryApiKeyMinter(StaticMinter):
    """`query_api_key`: the key in the provider's query parameter, plus companion params."""

    def wire(
        self, provider: Provider, cred: ResolvedCredential, value: SecretValue
    ) -> WireCredential:
        headers, query = _companions(provider, cred.provider_config)
        assert provider.query_param is not None
        return WireCredential(
            query=((provider.query_param, _render(provider, value)),),
            companion_headers=headers,
            companion_query=query,
            pinned=_pinned(provider, cred.provider_config),
            scrub=leak_patterns(label(cred), value),
        )


def bearer_wire(provider: Provider, cred: ResolvedCredential, token: SecretValue) -> WireCredential:
    """A minted access token in the provider's header (Authorization: Bearer ...)."""
    assert provider.header is not None
    return WireCredential(
        headers=((provider.header, _render(provider, token)),),
        scrub=leak_patterns(label(cred), token),
        oauth=True,
    )


_store_pool: concurrent.futures.ThreadPoolExecutor | None = None


async def run_blocking[R](fn: Callable[..., R], *args: object) -> R:
    """Run a blocking store/vault call in capgate's bounded pool (not the default one)."""
    global _store_pool
    if _store_pool is None:
        _store_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=STORE_WORKERS, thread_name_prefix="capgate-store"
        )
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_store_pool, functools.partial(fn, *args))


async def _read(env: MintEnv, cred: ResolvedCredential) -> Durable:
    return await run_blocking(env.values.read, cred)


class ClientCredentialsMinter(OAuthMinter):
    """`oauth2_client_credentials`: client id (config) + client secret (durable value)."""

    async def token(self, provider: Provider, cred: ResolvedCredential, env: MintEnv) -> TokenGrant:
        durable = await _read(env, cred)
        config = cred.provider_config
        scope = " ".join(cred.scopes) or oauth_urls(provider, config).default_scope
        form: dict[str, str | SecretValue] = {
            "grant_type": "client_credentials",
            "client_id": config.get("client_id", ""),
            "client_secret": durable.value,
        }
        if scope:
            form["scope"] = scope
        return await request_token(env.http, env.endpoints.token_url(provider, config), form)


class AuthorizationCodeMinter(OAuthMinter):
    """`oauth2_authorization_code`: the refresh_token grant, safe under rotation.

    Runs under the credential's cross-process lock (`mint_token`): re-read the refresh
    token (another process may have just rotated it), refresh, and store a rotated refresh
    token conditionally before the access token is handed out. A server that returns no
    refresh token leaves the stored one in place.
    """

    async def token(self, provider: Provider, cred: ResolvedCredential, env: MintEnv) -> TokenGrant:
        config = cred.provider_config
        durable = await _read(env, cred)  # under the lock: the newest refresh token
        secret = await run_blocking(env.values.client_secret, cred)
        form: dict[str, str | SecretValue] = {
            "grant_type": "refresh_token",
            "refresh_token": durable.value,
            "client_id": config.get("client_id", ""),
        }
        if secret is not None:
            form["client_secret"] = secret
        if cred.scopes:
            form["scope"] = " ".join(cred.scopes)
        grant = await request_token(env.http, env.endpoints.token_url(provider, config), form)
        rotated = grant.refresh_token
        if rotated is not None and rotated != durable.value:
            try:
                stored = await run_blocking(env.values.replace, cred, durable.ref, rotated)
            except Exception as exc:  # the new refresh token is lost: do not pretend
                log.error(
                    "could not store the rotated refresh token of credential %s (%s)",
                    cred.name,
                    type(exc).__name__,
                )
                raise MintError("store_error", terminal=False) from None
            if not stored:
                log.warning(
                    "credential %s changed while refreshing; kept the newer refresh token",
                    cred.name,
                )
        return grant


class JwtBearerMinter(OAuthMinter):
    """`oauth2_jwt_bearer[_with_subject]`: an RS256 assertion from the service-account key."""

    def __init__(self, *, with_subject: bool) -> None:
        self.with_subject = with_subject

    async def token(self, provider: Provider, cred: ResolvedCredential, env: MintEnv) -> TokenGrant:
        durable = await _read(env, cred)
        account = ServiceAccount.parse(durable.value)
        subject = cred.provider_config.get("subject") if self.with_subject else None
        if self.with_subject and not subject:
            raise MintError(UNPARSEABLE, terminal=True)
        url = env.endpoints.token_url(provider, cred.provider_config)
        assertion = sign_assertion(account, url, cred.scopes, subject=subject)
        form: dict[str, str | SecretValue] = {
            "grant_type": JWT_BEARER_GRANT,
            "assertion": assertion,
        }
        return await request_token(env.http, url, form)


MINTERS: Mapping[Kind, StaticMinter | OAuthMinter] = {
    Kind.API_KEY: ApiKeyMinter(),
    Kind.BASIC_AUTH: BasicAuthMinter(),
    Kind.QUERY_API_KEY: QueryApiKeyMinter(),
    Kind.OAUTH2_CLIENT_CREDENTIALS: ClientCredentialsMinter(),
    Kind.OAUTH2_AUTHORIZATION_CODE: AuthorizationCodeMinter(),
    Kind.OAUTH2_JWT_BEARER: JwtBearerMinter(with_subject=False),
    Kind.OAUTH2_JWT_BEARER_WITH_SUBJECT: JwtBearerMinter(with_subject=True),
}


def minter_for(cred: ResolvedCredential) -> tuple[Provider, StaticMinter | OAuthMinter]:
    """The provider row and minter of a credential; MintError if the row is not legal."""
    provider = PROVIDERS.get(cred.provider)
    try:
        kind = Kind(cred.kind)
    except ValueError:
        raise MintError("illegal_credential", terminal=True) from None
    if provider is None or kind not in provider.kinds:
        raise MintError("illegal_credential", terminal=True)
    return provider, MINTERS[kind]


class SharedToken(Protocol):
    """A token slot shared by the processes of a home (blocking; called under the lock)."""

    def find(self) -> TokenGrant | None:
        """A still-valid token another process minted, or None."""
        ...

    def keep(self, grant: TokenGrant) -> None:
        """Share a token just minted (never raises)."""
        ...


async def mint_token(
    provider: Provider,
    minter: OAuthMinter,
    cred: ResolvedCredential,
    env: MintEnv,
    shared: SharedToken | None = None,
) -> TokenGrant:
    """Mint under the credential's cross-process lock and report the outcome.

    With `shared`, a token another process minted (and shared) while this one waited for
    the lock is used instead of calling the token endpoint, and a new token is shared
    before the lock is released. The outcome is recorded before the lock is released, so
    a concurrent `cred connect` (which takes the same lock) can never be undone by a
    stale failure. Never raises anything but MintError.
    """
    async with hold(cred.id, env.values.lock(cred)):
        if shared is not None:
            found = await run_blocking(shared.find)
            if found is not None:
                return found
        try:
            grant = await minter.token(provider, cred, env)
        except MintError as exc:
            await _report(env, cred, exc)
            raise
        except Exception as exc:
            log.error("minting credential %s failed: %s", cred.name, type(exc).__name__)
            error = MintError("internal_error", terminal=False)
            await _report(env, cred, error)
            raise error from None
        await _report(env, cred, None)
        if shared is not None:
            await run_blocking(shared.keep, grant)
        return grant


async def _report(env: MintEnv, cred: ResolvedCredential, error: MintError | None) -> None:
    """Record a mint's outcome. A terminal failure is written before the lock is released
    (it flips the status; shielded, so a request whose deadline passes meanwhile cannot
    cut it short). Success and transient outcomes change no status: they are written
    behind the request, by one thread, newest outcome per credential, so a store whose
    write lock another process holds never delays a request."""
    if error is not None and error.terminal:
        await asyncio.shield(run_blocking(env.values.report, cred, error))
        return
    _outcomes.submit(env.values, cred, error)


class _OutcomeWriter:
    """One background thread writing the newest non-terminal outcome of each credential."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[DurableValues, ResolvedCredential, MintError | None]] = {}
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._writing = False

    def submit(
        self, values: DurableValues, cred: ResolvedCredential, error: MintError | None
    ) -> None:
        with self._lock:
            self._pending[cred.id] = (values, cred, error)
            self._writing = True  # until the thread finds nothing left
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="capgate-mint-outcomes", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while True:
                with self._lock:
                    if not self._pending:
                        self._writing = False
                        break
                    _, (values, cred, error) = self._pending.popitem()
                    self._writing = True
                values.report(cred, error)  # never raises (the broker logs failures)

    def flush(self, timeout: float = 15.0) -> None:
        """Wait (bounded) until every submitted outcome was written (tests, shutdown)."""
        ends = time.monotonic() + timeout
        while time.monotonic() < ends:
            with self._lock:
                if not self._pending and not self._writing:
                    return
            time.sleep(0.01)


_outcomes = _OutcomeWriter()


def flush_outcomes(timeout: float = 15.0) -> None:
    """Wait (bounded) until every mint outcome submitted so far is written."""
    _outcomes.flush(timeout)


# One asyncio lock per (event loop, credential id): requests of this process queue here
# without a thread; only the head of the queue polls the cross-process lock.
_local_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _local_lock(credential_id: str) -> asyncio.Lock:
    locks = _local_locks.setdefault(asyncio.get_running_loop(), {})
    lock = locks.get(credential_id)
    if lock is None:
        lock = locks[credential_id] = asyncio.Lock()
    return lock


@asynccontextmanager
async def hold(credential_id: str, lock: Lock, wait: float | None = None) -> AsyncIterator[None]:
    """Hold one credential's locks from async code without blocking a thread.

    Waits at most `wait` seconds (LOCK_WAIT_S) in all for the cross-process lock, then
    raises a transient `MintError("lock_timeout")`. A cancelled waiter holds nothing.
    """
    budget = LOCK_WAIT_S if wait is None else wait
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    local = _local_lock(credential_id)
    try:
        async with asyncio.timeout(budget):
            await local.acquire()
    except TimeoutError:
        raise MintError("lock_timeout", terminal=False) from None
    try:
        while not lock.try_acquire():
            if loop.time() >= deadline:
                log.warning("credential lock %s held elsewhere; mint gave up", credential_id)
                raise MintError("lock_timeout", terminal=False)
            await asyncio.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            lock.release()
    finally:
        local.release()
