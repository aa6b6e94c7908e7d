"""What a caps.yaml file references, compared with what the store holds.

Shared by `capgate caps check` and the control plane (`POST /v1/caps/check`, `GET
/v1/roles`, the workspace pre-flight). A credential reference is missing for a user when
no row resolves for that user under the override rules (resolution.py), or when the row
that resolves is not `active` (pending_consent, needs_reauth): a workspace created now
would not get it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capgate.caps import AuthTransform, CapsConfig, CapsError

from .credential_rows import ACTIVE
from .resolution import resolve
from .stores import Stores


def summary(config: CapsConfig, warnings: list[str]) -> dict[str, Any]:
    """The JSON document of `capgate caps check --json` for a valid file."""
    credentials = sorted({n for c in config.capabilities for n in c.credentials})
    secrets = sorted({n for c in config.capabilities for n in c.secrets})
    return {
        "valid": True,
        "errors": [],
        "capabilities": [c.name for c in config.capabilities],
        "roles": {name: list(role.capabilities) for name, role in config.roles.items()},
        "credentials": credentials,
        "secrets": secrets,
        "warnings": warnings,
    }


def invalid_summary(exc: CapsError) -> dict[str, Any]:
    """The JSON document of `capgate caps check --json` for an invalid file."""
    errors = [
        {"file": p.file, "line": p.line, "column": p.column, "message": p.message}
        for p in exc.problems
    ]
    return {
        "valid": False,
        "errors": errors,
        "capabilities": [],
        "roles": {},
        "credentials": [],
        "secrets": [],
        "warnings": [],
    }


def store_warnings(
    config: CapsConfig, stored_providers: dict[str, set[str]], stored_secrets: set[str], org: str
) -> list[str]:
    """One warning per credential or secret the file uses that the org does not hold (or
    holds under another provider than the auth transform names)."""
    warnings: list[str] = []
    seen: set[tuple[str, str]] = set()
    for capability in config.capabilities:
        for transform in capability.transforms:
            if isinstance(transform, AuthTransform):
                key = (transform.credential, transform.provider)
                if key in seen:
                    continue
                seen.add(key)
                providers = stored_providers.get(transform.credential)
                if not providers:
                    warnings.append(
                        f"credential {transform.credential!r} (capability {capability.name!r}) "
                        f"does not exist in org {org!r}"
                    )
                elif transform.provider not in providers:
                    warnings.append(
                        f"credential {transform.credential!r} is stored with provider "
                        f"{'/'.join(sorted(providers))}, but capability {capability.name!r} "
                        f"uses it as {transform.provider}"
                    )
    for name in sorted({n for c in config.capabilities for n in c.secrets} - stored_secrets):
        warnings.append(f"secret {name!r} does not exist in org {org!r}")
    return warnings


def org_warnings(config: CapsConfig, stores: Stores, org_id: str, org: str) -> list[str]:
    providers: dict[str, set[str]] = {}
    for row in stores.credentials.list_credentials(org_id):
        providers.setdefault(row.name, set()).add(row.provider)
    secrets = {row.name for row in stores.secrets.list_secrets(org_id)}
    return store_warnings(config, providers, secrets, org)


@dataclass(frozen=True)
class Missing:
    credentials: list[str]
    secrets: list[str]

    def to_json(self) -> dict[str, list[str]]:
        return {"missing_credentials": self.credentials, "missing_secrets": self.secrets}


def missing_for(
    stores: Stores,
    org_id: str,
    user_id: str,
    credential_names: set[str] | frozenset[str],
    secret_names: set[str] | frozenset[str],
) -> Missing:
    """The names that do not resolve (or are not active) for `user_id` of `org_id`."""
    rows = stores.credentials.rows_named(org_id, tuple(sorted(credential_names)))
    missing_credentials = []
    for name in sorted(credential_names):
        row = resolve(rows, org_id=org_id, name=name, user_id=user_id)
        if row is None or row.status != ACTIVE:
            missing_credentials.append(name)
    stored = {row.name for row in stores.secrets.list_secrets(org_id)}
    return Missing(missing_credentials, sorted(set(secret_names) - stored))


def role_names(configs: list[CapsConfig]) -> list[str]:
    return sorted({name for config in configs for name in config.roles})


def role_references(configs: list[CapsConfig], role: str) -> tuple[list[dict], set[str], set[str]]:
    """A role's capabilities (name, hosts, credentials, secrets) across the files, and the
    credential and secret names they reference."""
    capabilities: list[dict] = []
    credentials: set[str] = set()
    secrets: set[str] = set()
    for config in configs:
        for capability in config.capabilities_of(role):
            capabilities.append(
                {
                    "name": capability.name,
                    "hosts": [str(h) for h in capability.hosts],
                    "credentials": sorted(capability.credentials),
                    "secrets": sorted(capability.secrets),
                }
            )
            credentials |= set(capability.credentials)
            secrets |= set(capability.secrets)
    return capabilities, credentials, secrets


def preflight(
    stores: Stores, configs: list[CapsConfig], org_id: str, user_id: str, role: str
) -> Missing:
    """What a workspace of `role` for `user_id` would lack, across the caps files."""
    _, credentials, secrets = role_references(configs, role)
    return missing_for(stores, org_id, user_id, credentials, secrets)
