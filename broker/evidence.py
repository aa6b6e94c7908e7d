"""The decision log as evidence: read the chains back from the store, verify them, export.

Rows are read in storage order (`id`) and handed to `chain.verify`, which recomputes every
link; each chain's head row (moved in the same transaction as the rows) catches rows
removed from the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import chain
from .audit import AuditEvent
from .decisions import _stored
from .store import ControlStore, StoreRow


@dataclass(frozen=True)
class ChainReport:
    org_key: str  # org id, or "" for decisions without an org
    kind: str  # decisions | audit
    result: chain.ChainResult
    unchained: int = 0  # rows written before the chain started (NULL seq)
    started_at: str | None = None

    @property
    def ok(self) -> bool:
        return self.result.problem is None


def _org_filter(org_key: str) -> tuple[str, tuple]:
    if org_key == chain.NO_ORG:
        return "org_id IS NULL", ()
    return "org_id = ?", (org_key,)


def _stream(store: ControlStore, sql: str, params: tuple) -> Iterator[StoreRow]:
    """Rows of one query, fetched in pages (a chain may hold millions of rows)."""
    with store.read() as conn:
        cursor = conn.execute(sql, params)
        while page := cursor.fetchmany(2_000):
            yield from page


def decision_rows(
    store: ControlStore, org_key: str, *, since: float | None = None
) -> Iterator[dict]:
    """The chained decision rows of one org ("" = no org), oldest first, as dicts."""
    where, params = _org_filter(org_key)
    if since is not None:
        where += " AND at >= ?"
        params += (since,)
    sql = f"SELECT * FROM policy_decisions WHERE {where} AND seq IS NOT NULL ORDER BY id"
    return (_stored(r).to_json() for r in _stream(store, sql, params))


def audit_rows(store: ControlStore, org_key: str) -> Iterator[dict]:
    sql = "SELECT * FROM audit_events WHERE org_id = ? AND seq IS NOT NULL ORDER BY id"
    return (AuditEvent(**dict(r)).to_json() for r in _stream(store, sql, (org_key,)))


def _seq_exists(store: ControlStore, table: str, org_key: str) -> Callable[[int], bool]:
    where, params = _org_filter(org_key)
    sql = f"SELECT 1 FROM {table} WHERE {where} AND seq = ? LIMIT 1"
    return lambda seq: bool(store.query(sql, (*params, seq)))


def chain_keys(store: ControlStore, org_id: str | None) -> list[tuple[str, str]]:
    """(org_key, kind) of every chain of one org, or of every org (and no org) for None."""
    if org_id is None:
        rows = store.query("SELECT org_key, kind FROM chain_heads ORDER BY org_key, kind")
        keys = {(r["org_key"], r["kind"]) for r in rows}
        # A chain whose head row was deleted still has rows: verify those too.
        for table, kind in (("policy_decisions", "decisions"), ("audit_events", "audit")):
            for r in store.query(f"SELECT DISTINCT org_id FROM {table} WHERE seq IS NOT NULL"):
                keys.add((r["org_id"] or chain.NO_ORG, kind))
        return sorted(keys)
    return [(org_id, "decisions"), (org_id, "audit")]


def verify_store(store: ControlStore, org_id: str | None) -> list[ChainReport]:
    reports = []
    for org_key, kind in chain_keys(store, org_id):
        head_row = store.query(
            "SELECT seq, chain, started_at FROM chain_heads WHERE org_key = ? AND kind = ?",
            (org_key, kind),
        )
        table = "policy_decisions" if kind == "decisions" else "audit_events"
        rows = decision_rows(store, org_key) if kind == "decisions" else audit_rows(store, org_key)
        head = chain.Head(head_row[0]["seq"], head_row[0]["chain"]) if head_row else None
        result = chain.verify(rows, head=head, seq_exists=_seq_exists(store, table, org_key))
        if head is None and result.rows and result.problem is None:
            # rows but no head: the head row itself was removed
            result = chain.ChainResult(result.rows, chain.ChainProblem(0, "head_removed"), 1)
        cond, params = _org_filter(org_key)
        unchained = store.query(
            f"SELECT count(*) AS n FROM {table} WHERE {cond} AND seq IS NULL", params
        )[0]["n"]
        reports.append(
            ChainReport(
                org_key,
                kind,
                result,
                unchained,
                head_row[0]["started_at"] if head_row else None,
            )
        )
    return reports


def verify_export(lines: Iterable[str]) -> list[ChainReport]:
    """Verify an export (JSON lines, `jsonl` or `ocsf`): each org's rows as one chain, in
    file order, checked from the file's first row of that org on."""
    chains: dict[tuple[str, str], list[dict]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {number}: not JSON ({exc.msg})") from None
        row = chained_row(record)
        if row is None:
            raise ValueError(f"line {number}: not a capgate decision row (no seq and chain)")
        kind = "audit" if "action" in row and "method" not in row else "decisions"
        chains.setdefault((row.get("org_id") or chain.NO_ORG, kind), []).append(row)
    reports = []
    for (org_key, kind), rows in sorted(chains.items()):
        anchored = rows[0].get("seq") == 1
        reports.append(ChainReport(org_key, kind, chain.verify(rows, anchored=anchored)))
    return reports


def chained_row(record: Mapping[str, Any]) -> dict | None:
    """The capgate row inside one export line: the line itself (jsonl), or the OCSF
    event's `unmapped` object, which carries the row unchanged."""
    if record.get("class_uid") == OCSF_HTTP_ACTIVITY and isinstance(record.get("unmapped"), dict):
        record = record["unmapped"]
    if isinstance(record.get("seq"), int) and isinstance(record.get("chain"), str):
        return dict(record)
    return None


# --- export ---------------------------------------------------------------------------

OCSF_HTTP_ACTIVITY = 6002
OCSF_VERSION = "1.3.0"
_OCSF_METHODS = {
    "CONNECT": 1,
    "DELETE": 2,
    "GET": 3,
    "HEAD": 4,
    "OPTIONS": 5,
    "POST": 6,
    "PUT": 7,
    "TRACE": 8,
    "PATCH": 9,
}


def export_rows(store: ControlStore, org_ids: list[str], since: float | None) -> Iterator[dict]:
    """Chained decision rows of the given orgs ("" = no org), each org's oldest first."""
    for org_key in org_ids:
        yield from decision_rows(store, org_key, since=since)


def to_ocsf(row: Mapping[str, Any], org_name: str | None) -> dict:
    """One decision as an OCSF HTTP Activity event (class 6002); the row itself rides along
    unchanged in `unmapped`, so the export verifies like a jsonl one."""
    method = str(row["method"]).upper()
    allowed = row["decision"] == "allow"
    activity_id = _OCSF_METHODS.get(method, 99)
    event: dict[str, Any] = {
        "class_uid": OCSF_HTTP_ACTIVITY,
        "class_name": "HTTP Activity",
        "category_uid": 4,
        "category_name": "Network Activity",
        "activity_id": activity_id,
        "activity_name": method.capitalize() if activity_id != 99 else "Other",
        "type_uid": OCSF_HTTP_ACTIVITY * 100 + activity_id,
        "time": int(float(row["at"]) * 1000),
        "severity_id": 1 if allowed else 3,  # informational / medium
        "status_id": 1 if allowed else 2,  # success / failure
        "status": "Success" if allowed else "Failure",
        "action_id": 1 if allowed else 2,  # allowed / denied
        "action": "Allowed" if allowed else "Denied",
        "disposition_id": 1 if allowed else 2,
        "disposition": "Allowed" if allowed else "Blocked",
        "status_detail": row["reason"] or row["decision"],
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "capgate", "vendor_name": "capgate"},
            "uid": str(row["id"]),
            "sequence": row["seq"],
            "log_name": "policy_decisions",
            "tenant_uid": row["org_id"],
        },
        "http_request": {
            "http_method": method,
            "url": {
                "scheme": row["scheme"],
                "hostname": row["host"],
                "port": row["port"],
                "path": row["path"],
            },
        },
        "dst_endpoint": {"hostname": row["host"], "port": row["port"]},
        "actor": {"session": {"uid": row["workspace_id"]}} if row["workspace_id"] else {},
        "duration": row["duration_ms"],
        "unmapped": dict(row),
    }
    if org_name is not None:
        event["metadata"]["tenant_name"] = org_name
    if row["upstream_status"] is not None:
        event["http_response"] = {"code": row["upstream_status"]}
    if row["capability"]:
        event["policy"] = {"name": row["capability"]}
    return event
