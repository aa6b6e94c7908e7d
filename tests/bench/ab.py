"""This checkout's `capgate proxy` against another checkout's, under the same load.

    python -m tests.bench.ab --baseline /path/to/other/checkout [--rounds N] [--duration S]

The other checkout needs its own `.venv` (`make venv` there). Each build gets its own
throwaway home, made with its own `capgate` (so store formats never mix), the same
1,000-capability caps.yaml and the same upstream, OAuth token endpoint and load generator
as `make bench`. Stock mitmdump runs beside them as a fixed reference. Rounds are
interleaved (A B, B A, ...) and the figures are medians, as in `make bench`; the report is
the proxy CPU per request and req/s of this checkout relative to the baseline. It is how
"the hot path did not slow down" is checked across a change (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.bench import procs as bench_procs
from tests.bench.__main__ import OAUTH_CLIENT, Bench, Settings, compare
from tests.bench.procs import Procs, Proxy, start_capgate, start_mitmdump
from tests.bench.upstream import start_upstream

HOST = "127.0.0.1"
WORKLOADS = (  # (report key, loadgen mode, upstream port attribute, connections)
    ("http", "http", "http_port", 16),
    ("https", "https", "https_port", 16),
    ("https_1conn", "https", "https_port", 1),
)


def start_build(
    procs: Procs, workdir: Path, ca: Path, up: Any, oauth: Any, capgate: Path, name: str
) -> Proxy:
    """`capgate proxy` of the build whose `capgate` program is `capgate`, on its own home."""
    saved = bench_procs.CAPGATE
    bench_procs.CAPGATE = capgate
    try:
        setup = start_capgate(
            procs,
            workdir / name,
            ca,
            [(HOST, port) for port in (up.http_port, up.https_port)],
            count=1000,
            token_url=oauth.token_url,
            client=OAUTH_CLIENT,
            name=name,
            decisions_off_variant=False,
        )
    finally:
        bench_procs.CAPGATE = saved
    return setup.proxy


def run(baseline: Path, settings: Settings, workdir: Path) -> dict[str, Any]:
    from tests.e2e.certs import make_test_pki
    from tests.oauth_server import OAuthServer

    pki = make_test_pki(workdir / "pki")
    report: dict[str, Any] = {"baseline": str(baseline), "load_avg": os.getloadavg()}
    with contextlib.ExitStack() as stack:
        procs = stack.enter_context(Procs(workdir / "logs", pin=settings.pin))
        up = start_upstream(procs, workdir, pki.ca_pem, pki.server_cert_pem, pki.server_key_pem)
        oauth = stack.enter_context(OAuthServer())
        oauth.add_client(*OAUTH_CLIENT, grant_types=("client_credentials",))
        bench = Bench(settings, procs, up)
        base = start_build(
            procs, workdir, pki.ca_pem, up, oauth, baseline / ".venv/bin/capgate", "baseline"
        )
        this = start_build(procs, workdir, pki.ca_pem, up, oauth, bench_procs.CAPGATE, "this")
        stock = start_mitmdump(
            procs, workdir, pki.ca_pem, name="stock", options={"connection_strategy": "lazy"}
        )
        for proxy in (base, this, stock):  # warm-up, and the first OAuth mint
            bench.load(proxy, "http", up.http_port, connections=4, duration=1)
            bench.load(proxy, "https", up.https_port, connections=4, duration=1)
        for key, mode, port_name, connections in WORKLOADS:
            options = {"connections": connections, "duration": settings.duration}
            port = getattr(up, port_name)
            report[key] = compare(bench, [base, this], mode, port, **options)
            report[key]["stock"] = compare(bench, [stock], mode, port, **options)["stock"]
    return report


def render(report: dict[str, Any]) -> str:
    lines = [
        f"baseline: {report['baseline']}; load average at start: {report['load_avg']}",
        "",
        "| workload | baseline CPU ms/req | this CPU ms/req | CPU ratio | req/s ratio |"
        " stock CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, *_ in WORKLOADS:
        r = report[key]
        lines.append(
            f"| {key} | {r['baseline']['proxy_cpu_ms_per_req']} | "
            f"{r['this']['proxy_cpu_ms_per_req']} | {r['ratio_cpu_per_req']}x | "
            f"{r['ratio_rps']}x | {r['stock']['proxy_cpu_ms_per_req']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--out", type=Path, help="the figures as JSON")
    args = parser.parse_args()
    if not (args.baseline / ".venv/bin/capgate").exists():
        sys.exit(f"error: {args.baseline}/.venv/bin/capgate not found (run `make venv` there)")
    settings = Settings(args.duration, args.rounds, 0, (), pin=not args.no_pin)
    with tempfile.TemporaryDirectory(prefix="capgate-ab-") as tmp:
        report = run(args.baseline.resolve(), settings, Path(tmp))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print(render(report))


if __name__ == "__main__":
    main()
