"""policy_decision writer throughput: rows/s through capgate.broker.decisions.DecisionWriter.

`run()` queues `rows` decisions as fast as one thread can (the proxy's hot-path cost is
`record()`), then closes the writer (which writes every queued row to SQLite) and reports
rows/s end to end, the record() cost per row, and the process CPU per row (the background
writer thread shares the proxy's process and GIL, so this is what a row costs the proxy).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def run(rows: int = 50_000) -> dict[str, float | int]:
    from capgate.broker.decisions import DecisionWriter
    from capgate.broker.home import init_home
    from capgate.broker.store import ControlStore
    from capgate.broker.types import PolicyDecision

    with tempfile.TemporaryDirectory(prefix="capgate-bench-decisions-") as tmp:
        home = init_home(Path(tmp) / "home").home
        store = ControlStore.open(home)
        decision = PolicyDecision(
            at=time.time(),
            org_id="org_bench",
            workspace_id="ws_bench",
            capability="bench-target",
            decision="allow",
            reason=None,
            method="GET",
            scheme="https",
            host="api.bench.example",
            port=443,
            path="/v1/things",
            transforms_applied=("auth:bench-cred", "header:X-Bench-Secret", "query:ws"),
            upstream_status=200,
            duration_ms=1.25,
        )
        writer = DecisionWriter(home.control_db)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(rows):
            writer.record(decision)
        t_record = time.perf_counter() - t0
        writer.close()
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        written = store.query("SELECT count(*) AS n FROM policy_decisions")[0]["n"]
        store.close()
    return {
        "rows": rows,
        "written": int(written),
        "dropped": writer.dropped,
        "rows_per_s": round(rows / seconds),
        "record_us_per_row": round(t_record / rows * 1e6, 2),
        "cpu_us_per_row": round(cpu / rows * 1e6, 2),
    }


if __name__ == "__main__":
    print(run())
