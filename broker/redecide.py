"""`capgate caps diff`: re-decide recorded requests under a candidate caps.yaml.

Each recorded policy_decision row whose outcome came from the policy (allowed, or denied
`no_capability` / `plaintext`, CONNECT tunnels included) is decided again from its
method, scheme, host, port, path and its workspace's role, with the same verdict
functions the proxy uses (caps/decide.py). Rows refused for other reasons (proxy
authentication, a tripwire, a bad header, ...) or without a workspace are skipped:
caps.yaml did not decide them.

Identical requests are decided once (a cache keyed by the six inputs), so a log of
repeated traffic re-decides at the speed of a dict lookup.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from capgate.caps import CapsConfig
from capgate.caps.decide import decide, decide_tunnel
from capgate.caps.http import Destination

from .store import ControlStore

# Recorded reasons that came from the policy verdict (DESIGN.md: policy_decisions.reason).
POLICY_DENIALS = frozenset({"no_capability", "plaintext"})


@dataclass(frozen=True, slots=True)
class Outcome:
    decision: str  # allow | deny
    capability: str | None

    def to_json(self) -> dict:
        return {"decision": self.decision, "capability": self.capability}

    def __str__(self) -> str:
        return self.decision + (f" {self.capability}" if self.capability else "")


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    scheme: str
    host: str
    port: int
    path: str
    role: str

    def __str__(self) -> str:
        target = f"{self.scheme}://{self.host}:{self.port}{self.path}"
        return f"{self.method} {target}  (role {self.role})"


@dataclass(frozen=True, slots=True)
class Change:
    seq: int | None
    id: int
    request: Request
    before: Outcome
    after: Outcome
    after_reason: str | None

    def to_json(self) -> dict:
        r = self.request
        return {
            "seq": self.seq,
            "method": r.method,
            "scheme": r.scheme,
            "host": r.host,
            "port": r.port,
            "path": r.path,
            "role": r.role,
            "from": self.before.to_json(),
            "to": self.after.to_json(),
        }


@dataclass
class Diff:
    changed: list[Change] = field(default_factory=list)
    unchanged: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> rows

    def to_json(self) -> dict:
        return {
            "changed": [c.to_json() for c in self.changed],
            "unchanged": self.unchanged,
            "skipped": sum(self.skipped.values()),
        }

    def groups(self) -> list[tuple[tuple[Outcome, Outcome, str | None], Counter[Request]]]:
        """Changes grouped by (from, to, the new reason), each group's distinct requests
        counted; the largest groups first."""
        grouped: dict[tuple[Outcome, Outcome, str | None], Counter[Request]] = {}
        for change in self.changed:
            key = (change.before, change.after, change.after_reason)
            grouped.setdefault(key, Counter())[change.request] += 1
        return sorted(grouped.items(), key=lambda item: -sum(item[1].values()))


def _verdict(config: CapsConfig, role: str, request: Request) -> tuple[Outcome, str | None]:
    """The candidate's verdict on one request, by the proxy's own verdict functions
    (caps/decide.py): a CONNECT row is a tunnel refused at connect time (`decide_tunnel`),
    anything else a request (`decide`). Returns (outcome, reason)."""
    dest = Destination(request.scheme, request.host, request.port)
    if request.method == "CONNECT":
        refusal = decide_tunnel(config, role, dest)
        if refusal is not None:
            return Outcome("deny", None), refusal
        return Outcome("allow", None), None
    verdict = decide(config, role, dest, request.method, request.path)
    if verdict.deny is not None:
        return Outcome("deny", None), verdict.deny
    name = verdict.capability.name if verdict.capability is not None else None
    return Outcome("allow", name), verdict.reason


def recorded_rows(store: ControlStore, org_id: str, since: float | None) -> Iterator[tuple]:
    """(id, seq, method, scheme, host, port, path, decision, reason, capability, role) of
    the org's rows, oldest first; role is None for rows without a workspace."""
    sql = (
        "SELECT d.id, d.seq, d.method, d.scheme, d.host, d.port, d.path, d.decision,"
        " d.reason, d.capability, w.role FROM policy_decisions d"
        " LEFT JOIN workspaces w ON w.id = d.workspace_id WHERE d.org_id = ?"
    )
    params: tuple = (org_id,)
    if since is not None:
        sql += " AND d.at >= ?"
        params += (since,)
    with store.read() as conn:
        cursor = conn.execute(sql + " ORDER BY d.id", params)
        cursor.row_factory = None  # plain tuples: this loop may see 10^5 rows
        yield from cursor


def rediff(config: CapsConfig, rows: Iterable[tuple]) -> Diff:
    diff = Diff()
    cache: dict[Request, tuple[Outcome, str | None]] = {}
    for row_id, seq, method, scheme, host, port, path, decision, reason, cap, role in rows:
        if role is None:
            diff.skipped["no_workspace"] += 1
            continue
        if decision != "allow" and reason not in POLICY_DENIALS:
            diff.skipped[reason if decision == "deny" else decision] += 1
            continue
        request = Request(method, scheme, host, port, path, role)
        found = cache.get(request)
        if found is None:
            found = cache[request] = _verdict(config, role, request)
        after, after_reason = found
        before = Outcome("allow", cap) if decision == "allow" else Outcome("deny", None)
        if after == before:
            diff.unchanged += 1
        else:
            diff.changed.append(Change(seq, row_id, request, before, after, after_reason))
    return diff
