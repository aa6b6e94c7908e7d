"""Profile `capgate proxy` under the benchmark's load with pyinstrument.

    python -m tests.bench.profile [--mode https|http|https-new] [--seconds 10] [--out FILE]
                                  [--cprofile STATS --requests N]

Same set-up as `make bench` (1,000 capabilities, OAuth client-credentials credential,
header transform with a secret, query transform), but the proxy runs under pyinstrument;
after the load it is stopped with SIGINT (a clean shutdown) and the text profile printed.
pyinstrument's sampling roughly doubles the per-request cost: read shares, not times.

`--cprofile STATS` runs the proxy under cProfile instead and writes its pstats file, after
a fixed `--requests N` (plus one warm-up per connection), so that two builds can be compared
function by function per request (`python -m pstats STATS`); cProfile's overhead is per
call, so it overstates code made of many small calls.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.bench.procs import Procs, free_port, start_capgate, wait_port
from tests.bench.upstream import start_upstream

CLIENT = ("bench-client", "bench-client-secret-0123456789")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", default="https", choices=("http", "https", "https-new"))
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--out", type=Path, help="write the profile here too")
    parser.add_argument("--cprofile", type=Path, help="cProfile stats file instead")
    parser.add_argument("--requests", type=int, help="a fixed number of requests")
    args = parser.parse_args()
    from tests.e2e.certs import make_test_pki
    from tests.oauth_server import OAuthServer

    with tempfile.TemporaryDirectory(prefix="capgate-profile-") as tmp, OAuthServer() as oauth:
        work = Path(tmp)
        pki = make_test_pki(work / "pki")
        oauth.add_client(*CLIENT, grant_types=("client_credentials",))
        with Procs(work / "logs") as procs:
            up = start_upstream(procs, work, pki.ca_pem, pki.server_cert_pem, pki.server_key_pem)
            ports = (up.http_port, up.https_port, up.sse_http_port, up.sse_https_port)
            setup = start_capgate(
                procs,
                work,
                pki.ca_pem,
                [("127.0.0.1", p) for p in ports],
                count=1000,
                token_url=oauth.token_url,
                client=CLIENT,
                decisions_off_variant=False,
            )
            procs.stop(setup.proxy.proc)  # only the set-up is reused
            home = work / "capgate-home"
            env = dict(os.environ, CAPGATE_HOME=str(home))
            env["CAPGATE_UNSAFE_TOKEN_ENDPOINTS"] = json.dumps({"microsoft": oauth.token_url})
            port, report = free_port(), work / "profile.txt"
            if args.cprofile:
                profiler = ["cProfile", "-o", str(args.cprofile.resolve())]
            else:
                profiler = ["pyinstrument", "-o", str(report)]
            cmd = [sys.executable, "-m", *profiler, "-m", "capgate.proxy"]
            cmd += ["--home", str(home), "proxy", "--caps", str(work / "caps.yaml")]
            cmd += ["--upstream-ca", str(pki.ca_pem), "--listen", f"127.0.0.1:{port}"]
            proc = procs.spawn(cmd, name="capgate-profiled", cpu=procs.proxy_cpu, env=env)
            wait_port(port, proc, timeout=120)
            target = up.http_port if args.mode == "http" else up.https_port
            load = [sys.executable, "-m", "tests.bench.loadgen", "--proxy", f"127.0.0.1:{port}"]
            load += ["--target", f"127.0.0.1:{target}", "--mode", args.mode]
            load += ["--auth", str(setup.proxy.auth), "--ca", str(setup.proxy.ca_pem)]
            load += ["--connections", "16", "--duration", str(args.seconds)]
            if args.requests:
                load += ["--requests", str(args.requests)]
            if procs.side_cpu is not None:
                load += ["--cpu", str(procs.side_cpu)]
            done = subprocess.run(load, capture_output=True, text=True, timeout=300)
            print(done.stdout.strip() or done.stderr[-1500:])
            os.kill(proc.pid, signal.SIGINT)
            proc.popen.wait(timeout=60)
            text = "" if args.cprofile else report.read_text()
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
