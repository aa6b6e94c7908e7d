"""`capgate caps diff` speed: recorded rows re-decided per second (tests/bench, `make bench`).

`run()` writes `rows` chained policy_decision rows into a fresh store (the proxy's
writer path), then re-decides them under a candidate that changes some of them, reading
the rows from SQLite as the command does. Two traffic shapes: every request distinct (no
help from the verdict cache) and realistic repetition (500 distinct requests).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

CAPS = """\
version: 1
capabilities:
{caps}
roles:
  dev: {{capabilities: [{names}]}}
"""


def _caps(count: int, widen: bool) -> str:
    entries, names = [], []
    for i in range(count):
        paths = '["/**"]' if widen and i % 10 == 0 else f'["/v1/{i}/**", "/health"]'
        entries.append(
            f'  - name: cap-{i}\n    match: {{hosts: ["svc{i}.example"], paths: {paths}}}'
        )
        names.append(f"cap-{i}")
    return CAPS.format(caps="\n".join(entries), names=", ".join(names))


def run(rows: int = 100_000, capabilities: int = 200) -> dict[str, float | int]:
    from capgate.broker.decisions import write_chained
    from capgate.broker.home import init_home
    from capgate.broker.redecide import recorded_rows, rediff
    from capgate.broker.store import ControlStore, immediate
    from capgate.broker.types import PolicyDecision
    from capgate.caps import parse_caps

    report: dict[str, float | int] = {"rows": rows, "capabilities": capabilities}
    with tempfile.TemporaryDirectory(prefix="capgate-bench-capsdiff-") as tmp:
        home = init_home(Path(tmp) / "home").home
        store = ControlStore.open(home)
        org_id = store.org_id("bench", create=True)
        with store.write() as conn:
            conn.execute(
                "INSERT INTO users (id, org_id, name, operator, created_at)"
                " VALUES ('user_b', ?, 'b', 0, 'now')",
                (org_id,),
            )
            conn.execute(
                "INSERT INTO workspaces (id, org_id, role, user_id, created_at)"
                " VALUES ('ws_b', ?, 'dev', 'user_b', 'now')",
                (org_id,),
            )
        base = PolicyDecision(
            at=time.time(),
            org_id=org_id,
            workspace_id="ws_b",
            capability=None,
            decision="allow",
            reason=None,
            method="GET",
            scheme="https",
            host="",
            port=443,
            path="",
        )
        current = parse_caps(_caps(capabilities, widen=False), "current.yaml")
        candidate = parse_caps(_caps(capabilities, widen=True), "candidate.yaml")
        for shape, distinct in (("distinct", rows), ("repeated", 500)):
            store.conn.execute("DELETE FROM policy_decisions")
            batch = []
            for i in range(rows):
                k = i % distinct
                cap = k % capabilities
                path = f"/v1/{cap}/items/{k}" if k % 3 else f"/other/{k}"
                decision = replace(base, host=f"svc{cap}.example", path=path)
                matched = current.matcher("dev").match("https", decision.host, 443, "GET", path)
                if matched is None:
                    decision = replace(decision, decision="deny", reason="no_capability")
                else:
                    decision = replace(decision, capability=matched.name)
                batch.append(decision)
            started = time.perf_counter()
            for offset in range(0, rows, 5_000):
                with immediate(store.conn):
                    write_chained(store.conn, batch[offset : offset + 5_000])
            report[f"{shape}_write_rows_per_s"] = round(rows / (time.perf_counter() - started))
            started = time.perf_counter()
            diff = rediff(candidate, recorded_rows(store, org_id, None))
            seconds = time.perf_counter() - started
            report[f"{shape}_diff_seconds"] = round(seconds, 3)
            report[f"{shape}_diff_rows_per_s"] = round(rows / seconds)
            report[f"{shape}_changed"] = len(diff.changed)
        store.close()
    return report


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
