"""`capgate vault check [--repair]`: the two stores against each other.

Every vault entry should be named by exactly one control row of the same org and kind,
and decrypt; every row's ref should name an entry. A crash between the two stores' writes
can leave an *orphan* (an entry no row names: `cred delete` or `secret delete` killed
after the row went, or an add killed after the value was stored); a tampered vault,
a wrong key file or a restored backup gives *unreadable* entries; a lost vault gives
*missing* ones. Findings name rows (kind, name, org, id) and refs, never values.

`repair` deletes orphans older than a grace period (an add in progress stores its value
moments before its row: a fresh orphan may be that) and nothing else: an unreadable or
missing value is recovered by uploading it again (`capgate cred update`, `secret set`),
which the finding says.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime

from . import vault
from .credential_rows import CLIENT_SECRET_REF
from .errors import VaultError
from .stores import Stores

ORPHAN = "orphan"
UNREADABLE = "unreadable"
MISSING = "missing"
ORPHAN_GRACE_S = 600.0  # an orphan younger than this may be an add in progress


@dataclass(frozen=True)
class Owner:
    """The control row that names a vault entry."""

    table: str  # credentials | secrets | oauth_states
    row_id: str
    name: str
    org_id: str
    org: str
    kind: str  # the vault entry kind the row expects

    def describe(self) -> str:
        what = {"credentials": "credential", "secrets": "secret"}.get(self.table, "consent")
        label = "client secret of credential" if self.kind == vault.CLIENT_SECRET else what
        return f"{label} {self.name} (org {self.org}, {self.row_id})"


@dataclass(frozen=True)
class Finding:
    problem: str  # orphan | unreadable | missing
    ref: str
    org_id: str
    kind: str
    owner: Owner | None
    detail: str
    created_at: str | None = None

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["owner"] = None if self.owner is None else self.owner.describe()
        return data

    def describe(self) -> str:
        if self.problem == ORPHAN:
            return (
                f"orphan: vault entry {self.ref} ({self.kind}, org {self.org_id}, created "
                f"{self.created_at}) is named by no row"
            )
        assert self.owner is not None
        fix = "upload the value again (capgate cred update / secret delete + secret set)"
        return f"{self.problem}: {self.owner.describe()}: {self.detail}; {fix}"


def _owners(stores: Stores) -> dict[str, Owner]:
    control = stores.control
    owners: dict[str, Owner] = {}
    rows = control.query(
        "SELECT c.id, c.name, c.org_id, o.name AS org, c.durable_ref, c.provider_config"
        " FROM credentials c JOIN orgs o ON o.id = c.org_id"
    )
    for r in rows:
        if r["durable_ref"]:
            owners[r["durable_ref"]] = Owner(
                "credentials", r["id"], r["name"], r["org_id"], r["org"], vault.CREDENTIAL
            )
        config = json.loads(r["provider_config"] or "{}")
        ref = config.get(CLIENT_SECRET_REF) if isinstance(config, dict) else None
        if ref:
            owners[ref] = Owner(
                "credentials", r["id"], r["name"], r["org_id"], r["org"], vault.CLIENT_SECRET
            )
    rows = control.query(
        "SELECT s.id, s.name, s.org_id, o.name AS org, s.durable_ref"
        " FROM secrets s JOIN orgs o ON o.id = s.org_id"
    )
    for r in rows:
        owners[r["durable_ref"]] = Owner(
            "secrets", r["id"], r["name"], r["org_id"], r["org"], vault.SECRET
        )
    # oauth_states exists in every migrated store (SQLite and PostgreSQL alike): no
    # catalogue lookup, which was SQLite's own (`sqlite_master`).
    rows = control.query(
        "SELECT s.sha256, s.org_id, o.name AS org, s.verifier_ref FROM oauth_states s"
        " JOIN orgs o ON o.id = s.org_id WHERE s.verifier_ref IS NOT NULL"
    )
    for r in rows:
        owners[r["verifier_ref"]] = Owner(
            "oauth_states",
            r["sha256"][:12],
            "pending consent",
            r["org_id"],
            r["org"],
            vault.OAUTH_VERIFIER,
        )
    return owners


def check(stores: Stores) -> list[Finding]:
    """Every orphan, unreadable and missing entry, in ref order."""
    owners = _owners(stores)
    credentials = {o.row_id: o for o in owners.values() if o.table == "credentials"}
    findings: list[Finding] = []
    seen: set[str] = set()
    for entry in stores.vault.entries():
        ref = entry["ref"]
        seen.add(ref)
        owner = owners.get(ref)
        if owner is None and entry["kind"] == vault.MINTED_TOKEN:
            owner = _minted_owner(ref, credentials)
        if owner is None:
            findings.append(
                Finding(ORPHAN, ref, entry["org_id"], entry["kind"], None, "", entry["created_at"])
            )
            continue
        if owner.org_id != entry["org_id"] or owner.kind != entry["kind"]:
            detail = "the entry belongs to another org or kind (moved or swapped)"
            findings.append(Finding(UNREADABLE, ref, owner.org_id, owner.kind, owner, detail))
            continue
        try:
            stores.vault.get(ref, owner.org_id, owner.kind)
        except VaultError as exc:
            findings.append(Finding(UNREADABLE, ref, owner.org_id, owner.kind, owner, str(exc)))
    for ref, owner in sorted(owners.items()):
        if ref not in seen:
            detail = f"its vault entry {ref} does not exist"
            findings.append(Finding(MISSING, ref, owner.org_id, owner.kind, owner, detail))
    return findings


def _minted_owner(ref: str, credentials: dict[str, Owner]) -> Owner | None:
    """A shared minted token (`minted.<credential id>.<digest>`) belongs to its credential;
    there may be none or several per credential, so it is never reported missing."""
    credential_id = ref.removeprefix("minted.").split(".", 1)[0]
    cred = credentials.get(credential_id)
    if cred is None:
        return None
    return Owner(cred.table, cred.row_id, cred.name, cred.org_id, cred.org, vault.MINTED_TOKEN)


def repair(
    stores: Stores, findings: list[Finding], *, grace_s: float = ORPHAN_GRACE_S
) -> list[Finding]:
    """Delete orphans older than `grace_s`; returns the findings repaired."""
    repaired = []
    owners = _owners(stores)  # again: a row may have been written since the check
    now = time.time()
    for finding in findings:
        if finding.problem != ORPHAN or finding.ref in owners:
            continue
        if finding.created_at and now - _unix(finding.created_at) < grace_s:
            continue
        stores.vault.delete(finding.ref)
        repaired.append(finding)
    return repaired


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
