"""`make bench`: stock mitmdump vs `capgate proxy` under the same load, in one run.

    python -m tests.bench [--out FILE.json] [--long] [--quick] [--rounds N] [--duration S]
                          [--no-pin] [--stock-only]

Every process (upstream, proxies, load generators) is a child of this one and is stopped
when it ends. Every figure that compares the two proxies is a ratio or a difference
between runs of the same run, interleaved (stock, capgate, stock, capgate, ...), so that
noise from the machine hits both alike. See BENCHMARKS.md for what each figure means.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.procs import (
    Procs,
    Proxy,
    capgate_available,
    cpu_seconds,
    rss_kib,
    start_capgate,
    start_mitmdump,
)
from tests.bench.upstream import Upstream, start_upstream

HOST = "127.0.0.1"
UNMATCHED = ("unmatched.bench.example", 443)
SSE_PATH = "/sse?events=5&gap_ms=200"
OAUTH_CLIENT = ("bench-client", "bench-client-secret-0123456789")
Result = dict[str, Any]


@dataclass
class Settings:
    duration: float  # seconds per throughput run
    rounds: int  # interleaved rounds per comparison
    latency_requests: int  # sequential requests per unloaded-latency run
    memory_points: tuple[int, ...]  # capgate RSS after this many requests in total
    caps: int = 1000
    pin: bool = True
    stock_only: bool = False


@dataclass
class Bench:
    settings: Settings
    procs: Procs
    up: Upstream
    served: dict[str, int] = field(default_factory=dict)  # proxy name -> requests so far

    def load(self, proxy: Proxy, mode: str, port: int, **kw: Any) -> Result:
        """One load-generator process against `proxy`; adds the proxy's CPU per request."""
        host = kw.pop("host", HOST)
        cmd = [sys.executable, "-m", "tests.bench.loadgen", "--proxy", proxy.address]
        cmd += ["--target", f"{host}:{port}", "--mode", mode, "--ca", str(proxy.ca_pem)]
        if proxy.auth:
            cmd += ["--auth", proxy.auth]
        if self.procs.side_cpu is not None:
            cmd += ["--cpu", str(self.procs.side_cpu)]
        for key, value in kw.items():
            cmd += [f"--{key}", str(value)]
        cpu0 = cpu_seconds(proxy.proc.pid)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"loadgen failed: {done.stderr[-1500:]}")
        result: Result = json.loads(done.stdout)
        handled = result["requests"] + int(kw.get("connections", 8))  # + warm-up requests
        result["proxy_cpu_ms_per_req"] = round(
            (cpu_seconds(proxy.proc.pid) - cpu0) * 1000 / max(1, handled), 3
        )
        self.served[proxy.name] = self.served.get(proxy.name, 0) + handled
        return result


def median_of(runs: list[Result]) -> Result:
    """The per-figure median over rounds (rps, latencies, CPU); counts summed."""
    keys = ("rps", "p50_ms", "p90_ms", "p99_ms", "proxy_cpu_ms_per_req", "ttfb_p50_ms")
    out: Result = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys if k in runs[0]}
    out["requests"] = sum(r["requests"] for r in runs)
    out["ok"] = sum(r["ok"] for r in runs)
    out["errors"] = sum(sum(r["errors"].values()) for r in runs)
    out["statuses"] = runs[-1]["statuses"]
    out["rounds"] = [{k: r[k] for k in ("rps", "p50_ms", "p99_ms")} for r in runs]
    return out


def compare(bench: Bench, proxies: list[Proxy], mode: str, port: int, **kw: Any) -> Result:
    runs: dict[str, list[Result]] = {p.name: [] for p in proxies}
    for i in range(bench.settings.rounds):
        for proxy in proxies if i % 2 == 0 else proxies[::-1]:  # alternate who goes first
            runs[proxy.name].append(bench.load(proxy, mode, port, **kw))
    out: Result = {name: median_of(rs) for name, rs in runs.items()}
    if "stock" in out and "capgate" in out:
        s, c = out["stock"], out["capgate"]
        out["ratio_rps"] = round(c["rps"] / s["rps"], 3) if s["rps"] else None
        out["added_p50_ms"] = round(c["p50_ms"] - s["p50_ms"], 3)
        out["added_p99_ms"] = round(c["p99_ms"] - s["p99_ms"], 3)
        out["ratio_cpu_per_req"] = round(c["proxy_cpu_ms_per_req"] / s["proxy_cpu_ms_per_req"], 3)
    return out


def machine() -> Result:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    from mitmproxy.version import VERSION

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mitmproxy": VERSION,
        "load_avg_at_start": os.getloadavg(),
    }


def scaling() -> Result:
    """Match time by capability count (tests/bench/bench_caps.py, when it exists)."""
    if importlib.util.find_spec("tests.bench.bench_caps") is None:
        return {"skipped": "tests/bench/bench_caps.py not present yet"}
    from tests.bench import bench_caps

    return dict(bench_caps.run())


def decisions() -> Result:
    try:
        from tests.bench import bench_decisions

        return bench_decisions.run()
    except ImportError as exc:
        return {"skipped": f"capgate.broker.decisions not importable: {exc}"}


def run_all(settings: Settings, workdir: Path, report: Result) -> None:
    from tests.e2e.certs import make_test_pki

    pki = make_test_pki(workdir / "pki")
    with contextlib.ExitStack() as stack:
        procs = stack.enter_context(Procs(workdir / "logs", pin=settings.pin))
        report["pinning"] = (
            {"proxy_cpu": procs.proxy_cpu, "loadgen_and_upstream_cpu": procs.side_cpu}
            if procs.pinned
            else "off (fewer than 2 usable cores, or --no-pin)"
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
        proxies = [stock]
        oauth = None
        why_not = "--stock-only" if settings.stock_only else capgate_available()
        if why_not is None:
            from tests.oauth_server import OAuthServer

            oauth = stack.enter_context(OAuthServer())
            oauth.add_client(*OAUTH_CLIENT, grant_types=("client_credentials",))
            targets = [
                (HOST, p)
                for p in (up.http_port, up.https_port, up.sse_http_port, up.sse_https_port)
            ]
            setup = start_capgate(
                procs,
                workdir,
                pki.ca_pem,
                targets,
                count=settings.caps,
                token_url=oauth.token_url,
                client=OAUTH_CLIENT,
            )
            report["capgate"] = {
                "capabilities": settings.caps,
                "credential_kind": setup.credential_kind,
                "startup_s": round(setup.startup_s, 2),
            }
            proxies.append(setup.proxy)
        else:
            report["capgate"] = {"skipped": why_not}
        sections(bench, report, proxies, streaming, oauth)


def sections(
    bench: Bench, report: Result, proxies: list[Proxy], streaming: Proxy, oauth: Any
) -> None:
    s, up = bench.settings, bench.up
    capgate = next((p for p in proxies if p.name == "capgate"), None)
    step = lambda name: print(f"[bench] {name} ...", file=sys.stderr, flush=True)  # noqa: E731

    if capgate is not None:
        step("capgate first requests (mints the OAuth token)")
        first = bench.load(capgate, "https", up.https_port, connections=4, requests=200)
        report["capgate"]["first_run"] = {k: first[k] for k in ("statuses", "errors")}
        calls_after_first = len(oauth.calls)
    step("warm-up: every proxy, plain and HTTPS, 1 s each")
    for proxy in [*proxies, streaming]:
        bench.load(proxy, "http", up.http_port, connections=8, duration=1)
        bench.load(proxy, "https", up.https_port, connections=8, duration=1)
    if capgate is not None:
        rss = {str(bench.served["capgate"]): rss_kib(capgate.proc.pid)}
        report["memory"] = {"capgate_rss_kib": rss}

    step("throughput, keep-alive, plain HTTP")
    report["throughput_http"] = compare(
        bench, proxies, "http", up.http_port, connections=16, duration=s.duration
    )
    step("throughput, keep-alive, HTTPS via CONNECT")
    report["throughput_https"] = compare(
        bench, proxies, "https", up.https_port, connections=16, duration=s.duration
    )
    step("new TLS tunnel per request")
    report["new_tunnel"] = compare(
        bench, proxies, "https-new", up.https_port, connections=8, duration=s.duration
    )
    step("unloaded latency, one connection")
    report["latency_http"] = compare(
        bench, proxies, "http", up.http_port, connections=1, requests=s.latency_requests
    )
    report["latency_https"] = compare(
        bench, proxies, "https", up.https_port, connections=1, requests=s.latency_requests
    )
    step("SSE time to first byte")
    sse = [*proxies, streaming]
    report["sse_ttfb"] = {
        p.name: bench.load(p, "ttfb", up.sse_https_port, connections=1, requests=5, path=SSE_PATH)
        for p in sse
    }
    if capgate is None:
        return

    step("refused tunnel (no capability matches) vs intercepted tunnel")
    refused = bench.load(
        capgate, "connect", UNMATCHED[1], host=UNMATCHED[0], connections=8, duration=s.duration
    )
    intercepted = report["new_tunnel"]["capgate"]
    report["refused_tunnel"] = {
        "capgate_refused": refused,
        "capgate_intercepted_rps": intercepted["rps"],
        "ratio_rps_refused_vs_intercepted": round(refused["rps"] / intercepted["rps"], 2),
        "ratio_cpu_refused_vs_intercepted": round(
            refused["proxy_cpu_ms_per_req"] / intercepted["proxy_cpu_ms_per_req"], 3
        ),
    }

    step("memory: top up to the request-count checkpoints")
    rss = report["memory"]["capgate_rss_kib"]
    for point in s.memory_points:
        missing = point - bench.served["capgate"]
        if missing > 0:
            bench.load(capgate, "https", up.https_port, connections=16, requests=missing)
        rss[str(bench.served["capgate"])] = rss_kib(capgate.proc.pid)
    report["memory"]["stock_rss_kib_at_end"] = {
        str(bench.served["stock"]): rss_kib(proxies[0].proc.pid)
    }
    report["token_endpoint"] = {
        "calls_total": len(oauth.calls),
        "calls_after_first_run": len(oauth.calls) - calls_after_first,
        "requests_after_first_run": bench.served["capgate"] - first["requests"] - 4,
        "per_request_after_first_run": round(
            (len(oauth.calls) - calls_after_first)
            / max(1, bench.served["capgate"] - first["requests"] - 4),
            6,
        ),
    }


def render(report: Result) -> str:
    """The report as Markdown (pasted into BENCHMARKS.md)."""
    m = report["machine"]
    out = [
        f"Machine: {m['nproc']} x {m['cpu_model']}, Linux {m['kernel']}, Python {m['python']}, "
        f"mitmproxy {m['mitmproxy']}; upstream {report.get('upstream')}; pinning "
        f"{report.get('pinning')}; load average at start {m['load_avg_at_start']}.",
        "",
    ]
    head = "| workload | proxy | req/s | p50 ms | p99 ms | proxy CPU ms/req | errors |"
    rows = [head, "|---|---|---:|---:|---:|---:|---:|"]
    ratios = ["", "| workload | req/s ratio | added p50 ms | added p99 ms | CPU/req ratio |"]
    ratios.append("|---|---:|---:|---:|---:|")
    for key, label in (
        ("throughput_http", "plain HTTP keep-alive, 16 conns"),
        ("throughput_https", "HTTPS CONNECT keep-alive, 16 conns"),
        ("new_tunnel", "new TLS tunnel per request, 8 conns"),
        ("latency_http", "plain HTTP, 1 conn (unloaded)"),
        ("latency_https", "HTTPS CONNECT, 1 conn (unloaded)"),
    ):
        section = report.get(key, {})
        for name in ("stock", "capgate"):
            r = section.get(name)
            if r:
                rows.append(
                    f"| {label} | {name} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                    f"| {r['proxy_cpu_ms_per_req']:.2f} | {r['errors']} |"
                )
        if "ratio_rps" in section:
            ratios.append(
                f"| {label} | {section['ratio_rps']:.2f}x | {section['added_p50_ms']:+.2f} | "
                f"{section['added_p99_ms']:+.2f} | {section['ratio_cpu_per_req']:.2f}x |"
            )
    out += rows + (ratios if len(ratios) > 3 else [])
    out += [
        "",
        "| SSE (5 events, 200 ms apart, HTTPS) | TTFB p50 ms | total p50 ms |",
        "|---|---:|---:|",
    ]
    for name, r in report.get("sse_ttfb", {}).items():
        out.append(f"| {name} | {r['ttfb_p50_ms']:.1f} | {r['p50_ms']:.1f} |")
    if "refused_tunnel" in report:
        rt = report["refused_tunnel"]
        ref = rt["capgate_refused"]
        out += [
            "",
            f"Refused tunnel (CONNECT to a host no capability matches): {ref['rps']:.0f} req/s, "
            f"p50 {ref['p50_ms']:.2f} ms, proxy CPU {ref['proxy_cpu_ms_per_req']:.2f} ms, "
            f"statuses {ref['statuses']}; vs an intercepted new tunnel "
            f"{rt['capgate_intercepted_rps']:.0f} req/s: {rt['ratio_rps_refused_vs_intercepted']}x "
            f"the rate at {rt['ratio_cpu_refused_vs_intercepted']}x the CPU.",
        ]
    for key in ("memory", "token_endpoint", "capgate", "match_scaling", "decision_writer"):
        if key in report:
            out += ["", f"{key}: `{json.dumps(report[key])}`"]
    out += ["", f"Total wall time: {report.get('wall_s')} s."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "capgate-bench.json"
    )
    parser.add_argument("--long", action="store_true", help="memory checkpoint at 100k requests")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per comparison (3)")
    parser.add_argument("--duration", type=float, help="seconds per throughput run (5)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--stock-only", action="store_true", help="skip the capgate half")
    args = parser.parse_args(argv)
    settings = Settings(
        duration=args.duration or (1.5 if args.quick else 5.0),
        rounds=args.rounds or (1 if args.quick else 3),
        latency_requests=300 if args.quick else 1000,
        memory_points=(2_000, 5_000) if args.quick else (10_000, 100_000 if args.long else 30_000),
        pin=not args.no_pin,
        stock_only=args.stock_only,
    )
    started = time.monotonic()
    report: Result = {"machine": machine(), "settings": settings.__dict__.copy()}
    with tempfile.TemporaryDirectory(prefix="capgate-bench-") as tmp:
        run_all(settings, Path(tmp), report)
    print("[bench] match scaling and decision writer ...", file=sys.stderr, flush=True)
    report["match_scaling"] = scaling()
    if not settings.stock_only:
        report["decision_writer"] = decisions()
    report["wall_s"] = round(time.monotonic() - started, 1)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    print(f"\n(figures as JSON: {args.out})")


if __name__ == "__main__":
    main()
