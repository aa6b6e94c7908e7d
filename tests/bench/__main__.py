"""`make bench`: stock mitmdump vs `capgate proxy` under the same load, in one run.

    python -m tests.bench [--out FILE.json] [--long] [--quick] [--rounds N] [--duration S]
                          [--no-pin] [--stock-only]

Every process (upstream, proxies, load generators) is a child of this one and is stopped
when it ends. Every figure that compares two proxies is a ratio or a difference between
runs of this same invocation, interleaved (A, B, B, A, ...) so that noise from the
machine hits both alike. BENCHMARKS.md says what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.procs import (
    Procs,
    Proxy,
    capgate_available,
    cpu_seconds,
    rss_kib,
    start_bare,
    start_capgate,
    start_mitmdump,
)
from tests.bench.upstream import Upstream, start_upstream

HOST = "127.0.0.1"
UNMATCHED = ("unmatched.bench.example", 443)  # no capability matches it
SSE_PATH = "/sse?events=5&gap_ms=200"
OAUTH_CLIENT = ("bench-client", "bench-client-secret-0123456789")
MEMORY_PHASE_MIN = 10_000  # requests in the final memory phase, at least
MEMORY_BATCH = 5_000  # RSS is sampled after every load run
Result = dict[str, Any]


@dataclass
class Settings:
    duration: float  # seconds per throughput run
    rounds: int  # interleaved rounds per comparison
    latency_requests: int  # sequential requests per unloaded-latency run (capped at 2 x duration)
    memory_points: tuple[int, ...]  # capgate RSS after at least this many requests in total
    caps: int = 1000
    pin: bool = True
    stock_only: bool = False


@dataclass
class Bench:
    settings: Settings
    procs: Procs
    up: Upstream
    served: dict[str, int] = field(default_factory=dict)  # proxy -> requests so far
    rss: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # (served, KiB)

    def load(self, proxy: Proxy, mode: str, port: int, **options: Any) -> Result:
        """One load-generator process against `proxy`; adds the proxy's CPU per request."""
        host = options.pop("host", HOST)
        cmd = [sys.executable, "-m", "tests.bench.loadgen", "--proxy", proxy.address]
        cmd += ["--target", f"{host}:{port}", "--mode", mode, "--ca", str(proxy.ca_pem)]
        if proxy.auth:
            cmd += ["--auth", proxy.auth]
        if self.procs.side_cpu is not None:
            cmd += ["--cpu", str(self.procs.side_cpu)]
        for key, value in options.items():
            cmd += [f"--{key}", str(value)]
        cpu0 = cpu_seconds(proxy.proc.pid)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
        if done.returncode != 0:
            raise RuntimeError(f"loadgen failed: {done.stderr[-1500:]}")
        result: Result = json.loads(done.stdout)
        handled = result["requests"] + int(options.get("connections", 8))  # + warm-up
        cpu_ms = (cpu_seconds(proxy.proc.pid) - cpu0) * 1000
        result["proxy_cpu_ms_per_req"] = round(cpu_ms / max(1, handled), 3)
        self.served[proxy.name] = self.served.get(proxy.name, 0) + handled
        self.rss.setdefault(proxy.name, []).append(
            (self.served[proxy.name], rss_kib(proxy.proc.pid))
        )
        return result


def median_of(runs: list[Result]) -> Result:
    """The per-figure median over rounds (rps, latencies, CPU); counts summed."""
    keys = ("rps", "p50_ms", "p90_ms", "p99_ms", "proxy_cpu_ms_per_req")
    out: Result = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}
    out["requests"] = sum(r["requests"] for r in runs)
    out["ok"] = sum(r["ok"] for r in runs)
    out["errors"] = sum(sum(r["errors"].values()) for r in runs)
    out["statuses"] = runs[-1]["statuses"]
    out["rounds"] = [{k: r[k] for k in ("rps", "p50_ms", "p99_ms")} for r in runs]
    return out


def compare(bench: Bench, pair: list[Proxy], mode: str, port: int, **options: Any) -> Result:
    """Interleaved rounds on each proxy; with two, the second's figures relative to the first."""
    runs: dict[str, list[Result]] = {p.name: [] for p in pair}
    for i in range(options.pop("rounds", bench.settings.rounds)):
        for proxy in pair if i % 2 == 0 else pair[::-1]:  # alternate who goes first
            runs[proxy.name].append(bench.load(proxy, mode, port, **options))
    out: Result = {name: median_of(rs) for name, rs in runs.items()}
    if len(pair) == 2:
        base, other = out[pair[0].name], out[pair[1].name]
        out["ratio_rps"] = round(other["rps"] / base["rps"], 3)
        out["added_p50_ms"] = round(other["p50_ms"] - base["p50_ms"], 3)
        out["added_p99_ms"] = round(other["p99_ms"] - base["p99_ms"], 3)
        cpu_ratio = other["proxy_cpu_ms_per_req"] / base["proxy_cpu_ms_per_req"]
        out["ratio_cpu_per_req"] = round(cpu_ratio, 3)
    return out


def machine() -> Result:
    from mitmproxy.version import VERSION

    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mitmproxy": VERSION,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def match_scaling() -> Result:
    """Match time by capability count (tests/bench/bench_caps.py, owned by caps/)."""
    if importlib.util.find_spec("tests.bench.bench_caps") is None:
        return {"skipped": "tests/bench/bench_caps.py not present yet"}
    from tests.bench import bench_caps

    return dict(bench_caps.run())


def exec_startup() -> Result:
    """`capgate exec -- true`, contained and not (tests/bench/bench_exec.py)."""
    from tests.bench import bench_exec

    return bench_exec.run(runs=3)


def decision_writer() -> Result:
    try:
        from tests.bench import bench_decisions

        return bench_decisions.run()
    except ImportError as exc:
        return {"skipped": f"capgate.broker.decisions not importable: {exc}"}


def control_plane() -> Result:
    """p50/p95 of the control plane's GET /v1/credentials and workspace create."""
    from tests.bench import bench_server

    return bench_server.run()


def caps_diff() -> Result:
    """`capgate caps diff` rows/s over 100,000 recorded rows (tests/bench/bench_caps_diff.py)."""
    from tests.bench import bench_caps_diff

    return bench_caps_diff.run()


def run_all(settings: Settings, workdir: Path, report: Result) -> None:
    from tests.e2e.certs import make_test_pki

    pki = make_test_pki(workdir / "pki")
    with contextlib.ExitStack() as stack:
        procs = stack.enter_context(Procs(workdir / "logs", pin=settings.pin))
        report["pinning"] = (
            {"proxy_cpu": procs.proxy_cpu, "loadgen_and_upstream_cpu": procs.side_cpu}
            if procs.pinned
            else "off"
        )
        up = start_upstream(procs, workdir, pki.ca_pem, pki.server_cert_pem, pki.server_key_pem)
        report["upstream"] = up.kind
        bench = Bench(settings, procs, up)
        lazy = {"connection_strategy": "lazy"}  # what capgate's runner sets
        stock = start_mitmdump(procs, workdir, pki.ca_pem, name="stock", options=lazy)
        streaming = start_mitmdump(
            procs,
            workdir,
            pki.ca_pem,
            name="stock-stream",
            options=lazy | {"stream_large_bodies": "1"},
        )
        why_not = "--stock-only" if settings.stock_only else capgate_available()
        if why_not is not None:
            report["capgate"] = {"skipped": why_not}
            stock_sections(bench, report, stock, streaming)
            return
        from tests.oauth_server import OAuthServer

        oauth = stack.enter_context(OAuthServer())
        oauth.add_client(*OAUTH_CLIENT, grant_types=("client_credentials",))
        ports = (up.http_port, up.https_port, up.sse_http_port, up.sse_https_port)
        setup = start_capgate(
            procs,
            workdir,
            pki.ca_pem,
            [(HOST, port) for port in ports],
            count=settings.caps,
            token_url=oauth.token_url,
            client=OAUTH_CLIENT,
        )
        report["capgate"] = {
            "capabilities": settings.caps,
            "credential_kind": setup.credential_kind,
            "startup_s": round(setup.startup_s, 2),
        }
        capgate, nodecisions = setup.proxy, setup.without_decisions
        assert nodecisions is not None
        step("capgate's first requests (one OAuth mint per home, shared by its processes)")
        first = bench.load(capgate, "https", up.https_port, connections=4, requests=200)
        report["capgate"]["first_run"] = {k: first[k] for k in ("statuses", "errors")}
        calls_first = len(oauth.calls)
        bench.load(nodecisions, "https", up.https_port, connections=4, requests=20)
        calls_after_first, served_after_first = len(oauth.calls), dict(bench.served)
        stock_sections(bench, report, stock, streaming, capgate, nodecisions)
        baseline_sections(bench, report, start_bare(procs, workdir, pki.ca_pem), capgate)
        workers_sections(bench, report, setup)
        postgres_sections(bench, report, stack, workdir, pki.ca_pem, oauth, capgate)
        capgate_sections(bench, report, capgate, nodecisions)
        report["token_endpoint"] = {
            "calls_for_first_200_requests": calls_first,
            "calls_total": len(oauth.calls),
            "calls_after_first_run": len(oauth.calls) - calls_after_first,
            "requests_after_first_run": sum(
                bench.served[p.name] - served_after_first[p.name] for p in (capgate, nodecisions)
            ),
        }
        report["memory"] = {name: bench.rss[name] for name in ("capgate", "stock")}


def step(name: str) -> None:
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)


def stock_sections(
    bench: Bench, report: Result, stock: Proxy, streaming: Proxy, *more: Proxy
) -> None:
    """Every stock-vs-capgate comparison (stock alone when capgate cannot run)."""
    s, up = bench.settings, bench.up
    pair = [stock, *more[:1]]
    step("warm-up: every proxy, plain and HTTPS, 1 s each")
    for proxy in (stock, streaming, *more):
        bench.load(proxy, "http", up.http_port, connections=8, duration=1)
        bench.load(proxy, "https", up.https_port, connections=8, duration=1)
    step("throughput, keep-alive, plain HTTP")
    keep_alive = {"connections": 16, "duration": s.duration}
    report["throughput_http"] = compare(bench, pair, "http", up.http_port, **keep_alive)
    step("throughput, keep-alive, HTTPS via CONNECT")
    report["throughput_https"] = compare(bench, pair, "https", up.https_port, **keep_alive)
    step("new TLS tunnel per request")
    new = {"connections": 8, "duration": s.duration}
    report["new_tunnel"] = compare(bench, pair, "https-new", up.https_port, **new)
    step("unloaded latency, one connection")
    one = {"connections": 1, "requests": s.latency_requests, "duration": 2 * s.duration}
    report["latency_http"] = compare(bench, pair, "http", up.http_port, **one)
    report["latency_https"] = compare(bench, pair, "https", up.https_port, **one)
    step("SSE time to first byte")
    report["sse_ttfb"] = {
        p.name: bench.load(p, "ttfb", up.sse_https_port, connections=1, requests=5, path=SSE_PATH)
        for p in (stock, streaming, *more[:1])
    }


def baseline_sections(bench: Bench, report: Result, bare: Proxy, capgate: Proxy) -> None:
    """capgate against mitmproxy with exactly its runner's addons: capgate's own cost."""
    s, up = bench.settings, bench.up
    keep_alive = {"connections": 16, "duration": s.duration}
    step("bare mitmproxy (capgate's addons, no capgate) vs capgate, plain HTTP and HTTPS")
    for mode, port in (("http", up.http_port), ("https", up.https_port)):
        bench.load(bare, mode, port, connections=8, duration=1)  # warm-up
    pair = [bare, capgate]
    report["bare_http"] = compare(bench, pair, "http", up.http_port, **keep_alive)
    report["bare_https"] = compare(bench, pair, "https", up.https_port, **keep_alive)


def workers_sections(bench: Bench, report: Result, setup: Any) -> None:
    """`--workers 1` vs `--workers 2`, same load. The proxies are not pinned (two workers
    need two cores); the load generator stays on its own core, so on a two-core machine
    the workers share the cores with it and the upstream."""
    s, up = bench.settings, bench.up
    step("capgate --workers 1 vs --workers 2, HTTPS keep-alive")
    one = setup.variant("workers-1", ["--workers", "1", "--no-access-log"], None)
    two = setup.variant("workers-2", ["--workers", "2", "--no-access-log"], None)
    for proxy in (one, two):
        bench.load(proxy, "https", up.https_port, connections=16, duration=1)  # warm-up
    pair = [one, two]
    load = {"connections": 32, "duration": s.duration}
    report["workers_https"] = compare(bench, pair, "https", up.https_port, **load)
    report["workers_http"] = compare(bench, pair, "http", up.http_port, **load)
    for proxy in pair:
        bench.procs.stop(proxy.proc)


def postgres_sections(
    bench: Bench,
    report: Result,
    stack: contextlib.ExitStack,
    workdir: Path,
    upstream_ca: Path,
    oauth: Any,
    sqlite: Proxy,
) -> None:
    """capgate on SQLite stores vs the same on PostgreSQL stores (a private cluster on
    this machine), same caps and credentials, same load: nothing on the per-request path
    should touch the database."""
    from tests.pg import PostgresUnavailable, PrivatePostgres

    s, up = bench.settings, bench.up
    step("capgate on SQLite vs PostgreSQL stores, HTTPS and plain HTTP keep-alive")
    try:
        pg = stack.enter_context(PrivatePostgres.start())
    except PostgresUnavailable as exc:
        report["postgres_https"] = {"skipped": str(exc)}
        return
    ports = (up.http_port, up.https_port, up.sse_http_port, up.sse_https_port)
    setup = start_capgate(
        bench.procs,
        workdir,
        upstream_ca,
        [(HOST, port) for port in ports],
        count=bench.settings.caps,
        token_url=oauth.token_url,
        client=OAUTH_CLIENT,
        store_urls=(pg.create_database("bench_control"), pg.create_database("bench_vault")),
        name="capgate-pg",
        decisions_off_variant=False,
    )
    on_pg = setup.proxy
    for mode, port in (("http", up.http_port), ("https", up.https_port)):
        bench.load(on_pg, mode, port, connections=8, duration=1)  # warm-up, first mint
    pair = [sqlite, on_pg]
    keep_alive = {"connections": 16, "duration": s.duration}
    report["postgres_https"] = compare(bench, pair, "https", up.https_port, **keep_alive)
    report["postgres_http"] = compare(bench, pair, "http", up.http_port, **keep_alive)
    bench.procs.stop(on_pg.proc)


def capgate_sections(bench: Bench, report: Result, capgate: Proxy, nodecisions: Proxy) -> None:
    s, up = bench.settings, bench.up
    step("refused tunnel (no capability matches) vs intercepted tunnel")
    refused = bench.load(
        capgate, "connect", UNMATCHED[1], host=UNMATCHED[0], connections=8, duration=s.duration
    )
    intercepted = report["new_tunnel"]["capgate"]
    report["refused_tunnel"] = {
        "refused": refused,
        "intercepted_rps": intercepted["rps"],
        "ratio_rps": round(refused["rps"] / intercepted["rps"], 2),
        "ratio_cpu_per_tunnel": round(
            refused["proxy_cpu_ms_per_req"] / intercepted["proxy_cpu_ms_per_req"], 3
        ),
    }
    step("policy_decision recording: capgate with vs without")
    pair = [nodecisions, capgate]
    rounds = min(2, s.rounds)
    report["decisions_throughput"] = compare(
        bench, pair, "https", up.https_port, connections=16, duration=s.duration, rounds=rounds
    )
    report["decisions_latency"] = compare(
        bench,
        pair,
        "https",
        up.https_port,
        connections=1,
        requests=s.latency_requests,
        duration=2 * s.duration,
        rounds=rounds,
    )
    # Memory: every workload has run once by now (TLS and certificate caches are warm), so
    # RSS from here on shows whether it grows with the request count alone.
    start = bench.served["capgate"]
    end = max(s.memory_points[-1], start + MEMORY_PHASE_MIN)
    step(f"memory: HTTPS keep-alive load from {start} to {end} requests through capgate")
    report["memory_phase_start"] = start
    while bench.served["capgate"] < end:
        batch = min(MEMORY_BATCH, end - bench.served["capgate"])
        bench.load(capgate, "https", up.https_port, connections=16, requests=batch)


# -- the report ------------------------------------------------------------------------------

WORKLOADS = (
    ("throughput_http", "plain HTTP keep-alive, 16 conns"),
    ("throughput_https", "HTTPS CONNECT keep-alive, 16 conns"),
    ("new_tunnel", "new TLS tunnel per request, 8 conns"),
    ("latency_http", "plain HTTP, 1 conn (unloaded)"),
    ("latency_https", "HTTPS CONNECT, 1 conn (unloaded)"),
    ("decisions_throughput", "decisions on vs off: HTTPS keep-alive, 16 conns"),
    ("decisions_latency", "decisions on vs off: HTTPS, 1 conn"),
    ("bare_http", "bare mitmproxy vs capgate: plain HTTP keep-alive, 16 conns"),
    ("bare_https", "bare mitmproxy vs capgate: HTTPS keep-alive, 16 conns"),
    ("workers_https", "1 vs 2 workers: HTTPS keep-alive, 32 conns"),
    ("workers_http", "1 vs 2 workers: plain HTTP keep-alive, 32 conns"),
    ("postgres_https", "SQLite vs PostgreSQL stores: HTTPS keep-alive, 16 conns"),
    ("postgres_http", "SQLite vs PostgreSQL stores: plain HTTP keep-alive, 16 conns"),
)


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def render(report: Result) -> str:
    """The report as Markdown (what BENCHMARKS.md quotes)."""
    m = report["machine"]
    out = [
        f"Machine: {m['nproc']} x {m['cpu_model']}, Linux {m['kernel']}, Python {m['python']}, "
        f"mitmproxy {m['mitmproxy']}; upstream: {report.get('upstream')}; pinning: "
        f"{report.get('pinning')}; load average at start: {m['load_avg_at_start']}.",
        "",
        "| workload | proxy | req/s | p50 ms | p99 ms | proxy CPU ms/req | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    ratios = [
        "| workload | B vs A | req/s ratio | added p50 ms | added p99 ms | CPU/req ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key, label in WORKLOADS:
        section = report.get(key, {})
        names = [n for n, v in section.items() if isinstance(v, dict)]
        for name in names:
            r = section[name]
            out.append(
                f"| {label} | {name} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                f"| {r['proxy_cpu_ms_per_req']:.2f} | {r['errors']} |"
            )
        if "ratio_rps" in section:
            ratios.append(
                f"| {label} | {names[1]} vs {names[0]} | {section['ratio_rps']:.2f}x "
                f"| {section['added_p50_ms']:+.2f} | {section['added_p99_ms']:+.2f} "
                f"| {section['ratio_cpu_per_req']:.2f}x |"
            )
    if len(ratios) > 2:
        out += ["", *ratios]
    out += [
        "",
        "| SSE: 5 events 200 ms apart, HTTPS | first byte p50 ms | first whole event p50 ms "
        "| last byte p50 ms | ok | errors |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, r in report.get("sse_ttfb", {}).items():
        errors = r["errors"] and f"{r['errors']} {r['error_examples']}"
        out.append(
            f"| {name} | {r['ttfb_p50_ms']:.1f} | {r.get('first_event_p50_ms', float('nan')):.1f} "
            f"| {r['p50_ms']:.1f} | {r['ok']} | {errors or 0} |"
        )
    if "refused_tunnel" in report:
        rt, ref = report["refused_tunnel"], report["refused_tunnel"]["refused"]
        out += [
            "",
            f"Refused tunnel (CONNECT to a host no capability matches, answered "
            f"{ref['statuses']}): {ref['rps']:.0f}/s, p50 {ref['p50_ms']:.2f} ms, proxy CPU "
            f"{ref['proxy_cpu_ms_per_req']:.2f} ms per tunnel; an intercepted new tunnel: "
            f"{rt['intercepted_rps']:.0f}/s. Refusing runs at {rt['ratio_rps']}x the rate for "
            f"{rt['ratio_cpu_per_tunnel']}x the proxy CPU.",
        ]
    if "memory" in report:
        out += ["", "Resident memory (VmRSS) after N requests through each proxy:"]
        for name, series in report["memory"].items():
            at_10k = next(((n, kib) for n, kib in series if n >= 10_000), series[-1])
            shown = ", ".join(f"{_mib(kib)} after {n}" for n, kib in (series[0], at_10k))
            out.append(f"- {name}: {shown}, {_mib(series[-1][1])} after {series[-1][0]}")
        phase = [p for p in report["memory"]["capgate"] if p[0] >= report["memory_phase_start"]]
        if len(phase) >= 2:
            (n0, kib0), (n1, kib1) = phase[0], phase[-1]
            out.append(
                f"- capgate steady state (HTTPS keep-alive only, after every workload ran once): "
                f"{_mib(kib0)} after {n0} -> {_mib(kib1)} after {n1}: "
                f"{(kib1 - kib0) / 1024:+.2f} MiB over {n1 - n0} requests"
            )
    if "token_endpoint" in report:
        t = report["token_endpoint"]
        out += [
            "",
            f"Token endpoint: {t['calls_for_first_200_requests']} call(s) for capgate's first "
            f"200 requests; {t['calls_total']} in all (the decisions-off proxy is a second "
            f"process with its own token cache); {t['calls_after_first_run']} during the "
            f"{t['requests_after_first_run']} requests after each proxy's first ones.",
        ]
    scaling = report.get("match_scaling", {})
    if "match" in scaling:
        out += ["", "| capabilities | match µs/request | vs 10 | caps file load ms |"]
        out.append("|---:|---:|---:|---:|")
        for count, f in scaling["match"].items():
            out.append(
                f"| {count} | {f['match_seconds'] * 1e6:.2f} | {f['ratio_to_10']:.2f}x "
                f"| {f['load_seconds'] * 1e3:.0f} |"
            )
        cel = ", ".join(f"{k} {v * 1e6:.0f} µs" for k, v in scaling.get("cel", {}).items())
        out += ["", f"CEL evaluate() per call: {cel}."]
    elif scaling:
        out += ["", f"Match scaling: {scaling}"]
    writer = report.get("decision_writer", {})
    if "rows_per_s" in writer:
        out += [
            "",
            f"policy_decision writer: {writer['rows_per_s']} rows/s end to end "
            f"({writer['written']}/{writer['rows']} written, {writer['dropped']} dropped); "
            f"record() {writer['record_us_per_row']} µs/row on the hot path; "
            f"{writer['cpu_us_per_row']} µs of process CPU per row in all.",
        ]
    diff = report.get("caps_diff", {})
    if "distinct_diff_rows_per_s" in diff:
        out += [
            "",
            f"caps diff: {diff['rows']} recorded rows re-decided in "
            f"{diff['distinct_diff_seconds']} s ({diff['distinct_diff_rows_per_s']} rows/s) "
            f"when every request is distinct, {diff['repeated_diff_seconds']} s "
            f"({diff['repeated_diff_rows_per_s']} rows/s) for 500 distinct requests; "
            f"chained rows written at {diff['distinct_write_rows_per_s']} rows/s.",
        ]
    if "capgate" in report:
        out += ["", f"capgate set-up: `{json.dumps(report['capgate'])}`"]
    out += ["", f"Total wall time: {report.get('wall_s')} s."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    default_out = Path(tempfile.gettempdir()) / "capgate-bench.json"
    parser.add_argument("--out", type=Path, default=default_out, help="JSON figures file")
    parser.add_argument("--long", action="store_true", help="memory up to 100k requests")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per comparison (3)")
    parser.add_argument("--duration", type=float, help="seconds per throughput run (4)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--stock-only", action="store_true", help="skip the capgate half")
    args = parser.parse_args(argv)
    settings = Settings(
        duration=args.duration or (1.5 if args.quick else 4.0),
        rounds=args.rounds or (1 if args.quick else 3),
        latency_requests=300 if args.quick else 1000,
        memory_points=(2_000, 5_000) if args.quick else (10_000, 100_000 if args.long else 30_000),
        pin=not args.no_pin,
        stock_only=args.stock_only,
    )
    started = time.monotonic()
    report: Result = {"machine": machine(), "settings": asdict(settings)}
    with tempfile.TemporaryDirectory(prefix="capgate-bench-") as tmp:
        run_all(settings, Path(tmp), report)
    step("match scaling and policy_decision writer (in this process)")
    report["match_scaling"] = match_scaling()
    report["exec_startup"] = exec_startup()
    if not settings.stock_only:
        report["decision_writer"] = decision_writer()
        step("control plane (capgate serve) latency")
        report["control_plane"] = control_plane()
        report["caps_diff"] = caps_diff()
    report["wall_s"] = round(time.monotonic() - started, 1)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    print(f"\n(figures as JSON: {args.out})")


if __name__ == "__main__":
    main()
