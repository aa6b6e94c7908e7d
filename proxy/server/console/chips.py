"""Missing-ref chips: one per credential or secret a role references that does not resolve.

Which names are missing comes from broker.capsrefs (the same call `GET /v1/roles` and the
workspace pre-flight make). This module decides only how a chip is shown to the caller:

- an operator's chip is a link to the create form with the name pre-filled (a credential
  chip also pre-fills the provider when the role's `auth` transforms name exactly one);
- a member's credential chip is a link only when the member could create the credential
  themselves: it is used by an `auth` transform whose provider has the
  oauth2_authorization_code kind (the link pre-fills that provider, kind and `user`);
  anything else is plain text, as is every secret chip for a member.
"""

from __future__ import annotations

from dataclasses import dataclass

from capgate.broker.identity import Principal
from capgate.broker.providers import PROVIDERS, Kind
from capgate.caps import AuthTransform, CapsConfig

from .render import query


@dataclass(frozen=True)
class Chip:
    kind: str  # "credential" | "secret"
    name: str
    href: str | None  # None: plain text (the caller cannot create it)

    @property
    def ref(self) -> str:
        return f"{self.kind}:{self.name}"


def auth_providers(configs: list[CapsConfig], role: str | None = None) -> dict[str, set[str]]:
    """credential name -> the providers the `auth` transforms (of `role`, or of every
    capability) use it with."""
    found: dict[str, set[str]] = {}
    for config in configs:
        capabilities = config.capabilities_of(role) if role is not None else config.capabilities
        for capability in capabilities:
            for transform in capability.transforms:
                if isinstance(transform, AuthTransform):
                    found.setdefault(transform.credential, set()).add(transform.provider)
    return found


def chips(
    caller: Principal,
    missing_credentials: list[str],
    missing_secrets: list[str],
    providers: dict[str, set[str]],
) -> list[Chip]:
    out: list[Chip] = []
    for name in missing_credentials:
        out.append(Chip("credential", name, _credential_href(caller, name, providers.get(name))))
    for name in missing_secrets:
        href = query("/secrets/new", {"name": name}) if caller.operator else None
        out.append(Chip("secret", name, href))
    return out


def _credential_href(caller: Principal, name: str, used_with: set[str] | None) -> str | None:
    used_with = used_with or set()
    if caller.operator:
        provider = next(iter(used_with)) if len(used_with) == 1 else None
        return query("/credentials/new", {"name": name, "provider": provider})
    consent = sorted(
        p
        for p in used_with
        if p in PROVIDERS and Kind.OAUTH2_AUTHORIZATION_CODE in PROVIDERS[p].kinds
    )
    if not consent:
        return None
    return query(
        "/credentials/new",
        {
            "name": name,
            "provider": consent[0],
            "kind": Kind.OAUTH2_AUTHORIZATION_CODE.value,
            "user": caller.user,
        },
    )
