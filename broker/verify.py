"""Verify a credential: one safe, read-only call to its provider (or, for OAuth kinds, a mint).

Each static provider's call is the `verify` column of the provider table (providers.py),
fixed in code like the token endpoints. Tests and private deployments may point a
provider's call elsewhere only through `CAPGATE_UNSAFE_VERIFY_ENDPOINTS` (a JSON object,
provider slug to the full URL; `{tenant}` is filled in), which is announced loudly.

A stored credential's verify records `last_minted_at` / `last_minted_status` (the OAuth
kinds through the ordinary mint path, which also flips `needs_reauth` on a terminal
failure). A verify before create (`"verify": true`) runs on the submitted value without
writing anything; a rotated refresh token returned by that mint replaces the value that
is then stored, so the grant is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import urlsplit

import httpx

from .credential_rows import CredentialRow, CredentialSpec
from .credential_rules import check_value, spec_errors
from .errors import CapgateError, FieldError, InvalidInput
from .minting import (
    Durable,
    DurableValues,
    MintEnv,
    NoLock,
    flush_outcomes,
    mint_token,
    minter_for,
)
from .oauth import DEFAULT_TIMEOUT, MAX_TOKEN_RESPONSE, TOKEN_DEADLINE_S, Endpoints, MintError
from .providers import PROVIDERS, Kind, Provider
from .secretvalue import SecretValue
from .stores import Stores
from .types import ResolvedCredential

log = logging.getLogger("capgate.broker.verify")

UNSAFE_VERIFY_ENV = "CAPGATE_UNSAFE_VERIFY_ENDPOINTS"
# The kinds that verify by minting (the token endpoint is their read-only call).
OAUTH_KINDS = frozenset(
    {
        Kind.OAUTH2_CLIENT_CREDENTIALS,
        Kind.OAUTH2_AUTHORIZATION_CODE,
        Kind.OAUTH2_JWT_BEARER,
        Kind.OAUTH2_JWT_BEARER_WITH_SUBJECT,
    }
)


class VerifyFailed(CapgateError):
    """A verify before create failed: nothing was written. `status`: the provider's HTTP
    status, or None (no answer, or a mint that failed before one)."""

    def __init__(self, status: int | None, call: str) -> None:
        answer = f"HTTP {status}" if status is not None else "no HTTP answer"
        super().__init__(f"the verify call failed ({call}: {answer}); nothing was stored")
        self.status = status
        self.call = call


@dataclass(frozen=True)
class VerifyOutcome:
    ok: bool
    status: int | None
    call: str
    code: str | None = None  # a mint's error code, for the OAuth kinds

    def to_json(self) -> dict:
        return {"ok": self.ok, "status": self.status, "call": self.call}


def load_verify_overrides() -> Mapping[str, str]:
    """The UNSAFE verify-endpoint overrides, each announced with a WARNING."""
    raw = os.environ.get(UNSAFE_VERIFY_ENV)
    if not raw:
        return MappingProxyType({})
    try:
        data = json.loads(raw)
    except ValueError:
        raise InvalidInput([FieldError(UNSAFE_VERIFY_ENV, "must be a JSON object")]) from None
    if not isinstance(data, dict):
        raise InvalidInput([FieldError(UNSAFE_VERIFY_ENV, "must be a JSON object")])
    errors = []
    for slug, url in data.items():
        if slug not in PROVIDERS:
            errors.append(FieldError(f"{UNSAFE_VERIFY_ENV}.{slug}", "not a provider"))
        elif not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            errors.append(FieldError(f"{UNSAFE_VERIFY_ENV}.{slug}", "must be an http(s) URL"))
    if errors:
        raise InvalidInput(errors)
    for slug, url in sorted(data.items()):
        log.warning(
            "UNSAFE: %s overrides the %s verify call with %s; %s credentials will be sent there",
            UNSAFE_VERIFY_ENV,
            slug,
            url,
            slug,
        )
    return MappingProxyType(dict(data))


class _Given:
    """`minting.DurableValues` over a submitted value that is not stored (yet)."""

    def __init__(self, value: SecretValue, client_secret: SecretValue | None) -> None:
        self.value = value
        self._client_secret = client_secret

    def lock(self, cred: ResolvedCredential) -> NoLock:
        return NoLock()

    def read(self, cred: ResolvedCredential) -> Durable:
        return Durable("unsaved", self.value)

    def client_secret(self, cred: ResolvedCredential) -> SecretValue | None:
        return self._client_secret

    def replace(self, cred: ResolvedCredential, old_ref: str, value: SecretValue) -> bool:
        self.value = value  # a rotated refresh token: this is what gets stored
        return True

    def report(self, cred: ResolvedCredential, error: MintError | None) -> None:
        pass


class Verifier:
    def __init__(
        self,
        stores: Stores,
        endpoints: Endpoints,
        overrides: Mapping[str, str] | None = None,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self._stores = stores
        self._endpoints = endpoints
        self._overrides = overrides if overrides is not None else load_verify_overrides()
        self._timeout = timeout

    @property
    def overrides(self) -> Mapping[str, str]:
        return self._overrides

    def describe(self, provider: Provider, kind: str, config: Mapping[str, str]) -> str:
        """The call a verify makes, as `METHOD URL` (for OAuth kinds: the token POST)."""
        if kind in OAUTH_KINDS:
            return f"POST {self._endpoints.token_url(provider, config)}"
        call = provider.verify
        if call is None:
            raise InvalidInput(
                [FieldError("provider", f"{provider.slug} has no verify call (no fixed host)")]
            )
        url = self._overrides.get(provider.slug, call.url)
        return f"{call.method} {url.replace('{tenant}', config.get('tenant_id', ''))}"

    # -- a stored credential -------------------------------------------------------------

    def verify_stored(self, row: CredentialRow) -> VerifyOutcome:
        provider = PROVIDERS[row.provider]
        call = self.describe(provider, row.kind, row.provider_config)
        cred = row.resolved()
        if row.kind in OAUTH_KINDS:
            from .service import _StoreValues  # the mint path the proxy uses

            return self._mint(provider, cred, _StoreValues(self._stores), call)
        value = self._stores.credentials.durable_value(row)
        if value is None:
            return VerifyOutcome(False, None, call, "pending_consent")
        outcome = self._call(provider, cred, value, call)
        status = "ok" if outcome.ok else f"verify_failed:{outcome.status or 'no_answer'}"
        self._stores.credentials.record_mint(row.id, status)
        return outcome

    # -- before create -------------------------------------------------------------------

    def check_before_create(
        self,
        org_id: str,
        spec: CredentialSpec,
        value: SecretValue | None,
        client_secret: SecretValue | None,
    ) -> SecretValue | None:
        """Verify a credential that is about to be created; VerifyFailed (nothing written)
        when the call fails. Returns the value to store (a rotated refresh token replaces
        the submitted one). Field errors come first, exactly as `add` would report them."""
        errors = spec_errors(spec, client_secret_given=client_secret is not None)
        errors += check_value(spec.kind, value)
        if value is None and spec.kind == Kind.OAUTH2_AUTHORIZATION_CODE:
            errors.append(FieldError("verify", "nothing to verify before consent: no value"))
        if errors:
            raise InvalidInput(errors)
        assert value is not None
        provider = PROVIDERS[spec.provider]
        call = self.describe(provider, spec.kind, spec.provider_config)
        cred = ResolvedCredential(
            id="cred_unsaved",
            org_id=org_id,
            name=spec.name,
            provider=spec.provider,
            kind=spec.kind,
            user_id=None,
            status="active",
            scopes=tuple(spec.scopes),
            provider_config=MappingProxyType(dict(spec.provider_config)),
        )
        if spec.kind in OAUTH_KINDS:
            given = _Given(value, client_secret)
            outcome = self._mint(provider, cred, given, call)
            if not outcome.ok:
                raise VerifyFailed(outcome.status, call)
            return given.value
        outcome = self._call(provider, cred, value, call)
        if not outcome.ok:
            raise VerifyFailed(outcome.status, call)
        return value

    # -- the calls -----------------------------------------------------------------------

    def _mint(
        self, provider: Provider, cred: ResolvedCredential, values: DurableValues, call: str
    ) -> VerifyOutcome:
        _, minter = minter_for(cred)

        async def run() -> VerifyOutcome:
            async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as http:
                env = MintEnv(http, self._endpoints, values)
                try:
                    await mint_token(provider, minter, cred, env)  # type: ignore[arg-type]
                except MintError as exc:
                    return VerifyOutcome(False, _status_of(exc.code), call, exc.code)
            return VerifyOutcome(True, 200, call)

        try:
            return asyncio.run(run())
        finally:
            flush_outcomes()  # the mint's outcome row is written before verify answers

    def _call(
        self, provider: Provider, cred: ResolvedCredential, value: SecretValue, call: str
    ) -> VerifyOutcome:
        _, minter = minter_for(cred)
        wire = minter.wire(provider, cred, value)  # type: ignore[union-attr]
        method, _, url = call.partition(" ")
        headers = {name: v for name, v in wire.companion_headers}
        headers.update({name: v.reveal() for name, v in wire.headers})
        params = [*wire.companion_query, *((n, v.reveal()) for n, v in wire.query)]
        assert provider.verify is not None
        # A total deadline and a bounded read, like token calls (oauth.TOKEN_DEADLINE_S).
        ends = time.monotonic() + TOKEN_DEADLINE_S
        data = bytearray()
        try:
            with (
                httpx.Client(timeout=self._timeout, follow_redirects=False) as http,
                http.stream(method, url, headers=headers, params=params) as response,
            ):
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > MAX_TOKEN_RESPONSE or time.monotonic() > ends:
                        log.info("verify of %s: answer too large or too slow", cred.name)
                        return VerifyOutcome(False, None, call)
        except httpx.HTTPError as exc:
            log.info("verify of %s: no answer (%s)", cred.name, type(exc).__name__)
            return VerifyOutcome(False, None, call)
        ok = 200 <= response.status_code < 300
        if ok and provider.verify.json_ok:
            body = None
            with contextlib.suppress(ValueError):
                body = json.loads(bytes(data))
            ok = isinstance(body, dict) and body.get("ok") is True
        return VerifyOutcome(ok, response.status_code, call)


def _status_of(code: str) -> int | None:
    if code.startswith("http_") and code[5:].isdigit():
        return int(code[5:])
    return None
