"""Control-plane latency: p50/p95 of `GET /v1/credentials` and of a workspace create
(`POST /v1/workspaces`, pre-flight included) on a real `capgate serve`, under a small
concurrent load (a few client threads, keep-alive connections).

    python -m tests.bench.bench_server [--requests N] [--concurrency C]

The home holds 50 credentials and a caps file with one role; `make bench` runs it too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

CAPS = """\
version: 1
capabilities:
  - name: github-api
    match: {hosts: ["api.github.com"]}
    transforms:
      - auth: {credential: cred-0, provider: github_pat}
roles:
  bench:
    capabilities: [github-api]
"""


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1] * 1000, 2),
        "n": len(ordered),
    }


def _load(base: str, token: str, method: str, path: str, body, requests: int, workers: int):
    per_worker = max(1, requests // workers)

    def worker(_: int) -> list[float]:
        times = []
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as c:
            for _ in range(per_worker):
                started = time.perf_counter()
                reply = c.request(method, path, json=body)
                times.append(time.perf_counter() - started)
                assert reply.status_code in (200, 201), reply.text
        return times

    with ThreadPoolExecutor(workers) as pool:
        return [t for chunk in pool.map(worker, range(workers)) for t in chunk]


def run(requests: int = 400, concurrency: int = 4) -> dict[str, object]:
    from tests.e2e.cli_harness import CliHome
    from tests.server.harness import api_key, start_serve

    with tempfile.TemporaryDirectory(prefix="capgate-bench-serve-") as tmp:
        root = Path(tmp)
        home = CliHome(root / "home")
        home.cli("init")
        home.cli("user", "add", "alice", "--operator")
        for i in range(50):
            home.cli(
                "cred", "add", f"cred-{i}", "--provider", "github_pat", "--kind", "api_key",
                stdin=f"ghp_bench{i:04d}",
            )  # fmt: skip
        caps = root / "caps.yaml"
        caps.write_text(CAPS)
        served = start_serve(home, root / "logs", "--caps", str(caps))
        try:
            token = api_key(home, "alice")
            _load(served.base, token, "GET", "/v1/credentials", None, 40, concurrency)  # warm-up
            listing = _load(
                served.base, token, "GET", "/v1/credentials", None, requests, concurrency
            )
            creates = _load(
                served.base, token, "POST", "/v1/workspaces", {"role": "bench"}, requests // 2,
                concurrency,
            )  # fmt: skip
        finally:
            served.stop()
    return {
        "concurrency": concurrency,
        "get_credentials_50": _percentiles(listing),
        "workspace_create": _percentiles(creates),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    print(json.dumps(run(args.requests, args.concurrency), indent=2))


if __name__ == "__main__":
    main()
