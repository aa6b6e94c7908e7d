"""Start-up cost of `capgate exec ... -- true`, contained and with --no-contain.

A report, not a test: `python -m tests.bench.bench_exec [--runs N]` prints JSON; `run()`
returns it. Wall time of the whole command (interpreter start, workspace, proxy, sandbox,
CMD, revoke), interleaved contained / not contained so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CAPGATE = [sys.executable, "-m", "capgate.proxy"]
CAPS = "version: 1\ncapabilities: []\nroles:\n  agent:\n    capabilities: []\n"


def _time(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - start


def sandbox_only(home: Path, work: Path, runs: int) -> dict[str, Any]:
    """The sandbox and its launcher alone around `true` (no proxy, no workspace): the part
    of exec's start-up that containment adds, less exposed to the noise of the rest."""
    from capgate.proxy.contain import sandbox
    from capgate.proxy.contain.forward import UnixToTcp

    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return {"skipped": "bwrap is not installed"}
    run_dir = Path(tempfile.mkdtemp(prefix="capgate-bench-sandbox-"))
    shutil.copyfile(sandbox.FORWARDER, run_dir / "forward.py")
    relay = UnixToTcp(str(run_dir / "proxy.sock"), "127.0.0.1", 9).start()
    box = sandbox.Sandbox(bwrap, home, work, run_dir, 18080, os.geteuid() == 0)
    times = []
    try:
        for _ in range(runs):
            ready_r, ready_w = os.pipe()
            seccomp = sandbox.seccomp_fd()
            fds = [ready_w] + ([seccomp] if seccomp is not None else [])
            options = sandbox.args_fd(box.options(seccomp))
            fds.append(options)
            start = time.perf_counter()
            subprocess.run(
                [bwrap, "--args", str(options), "--", *box.command(["true"], ready_w)],
                pass_fds=fds,
                check=True,
            )
            times.append(time.perf_counter() - start)
            for fd in (ready_r, *fds):
                os.close(fd)
    finally:
        relay.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "median_ms": round(statistics.median(times) * 1000, 1),
        "min_ms": round(min(times) * 1000, 1),
    }


def run(runs: int = 5) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="capgate-bench-exec-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "CAPGATE_HOME": str(root / "home")}
        subprocess.run([*CAPGATE, "init"], env=env, check=True, capture_output=True)
        subprocess.run([*CAPGATE, "ca"], env=env, check=True, capture_output=True)
        (root / "caps.yaml").write_text(CAPS)
        work = root / "work"
        work.mkdir()
        base = [*CAPGATE, "exec", "--caps", str(root / "caps.yaml"), "--role", "agent"]
        base += ["--user", "alice"]
        variants = {"no_contain": [*base, "--no-contain", "--", "true"]}
        if shutil.which("bwrap"):
            variants["contained"] = [*base, "--", "true"]
        times: dict[str, list[float]] = {name: [] for name in variants}
        _time(variants["no_contain"], env, work)  # warm the page cache
        for _ in range(runs):
            for name, argv in variants.items():
                times[name].append(_time(argv, env, work))
        help_times = [_time([*CAPGATE, "--help"], env, work) for _ in range(runs)]
        sandbox_figures = sandbox_only(root / "home", work, max(runs, 10))
    report: dict[str, Any] = {
        name: {"median_s": round(statistics.median(t), 3), "runs_s": [round(x, 3) for x in t]}
        for name, t in times.items()
    }
    if "contained" in report:
        report["containment_cost_s"] = round(
            report["contained"]["median_s"] - report["no_contain"]["median_s"], 3
        )
    else:
        report["contained"] = {"skipped": "bwrap is not installed"}
    report["sandbox_only"] = sandbox_figures
    report["help_median_s"] = round(statistics.median(help_times), 3)
    report["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    print(json.dumps(run(parser.parse_args().runs), indent=2))
