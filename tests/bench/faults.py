"""The fault figures of BENCHMARKS.md ("Faults"): `python -m tests.bench.faults`.

Memory per idle client connection, connections held under a 1,024 hard descriptor limit
(with an authenticated agent served meanwhile), and how long a wedged OAuth credential
(token endpoint that never answers, TTL 0) takes to recover, with a static capability's
latency during the wedge. Every process it starts is stopped by PID at the end.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.e2e.certs import make_test_pki
from tests.e2e.cli_harness import CAPGATE, CliHome, ProxyProcess
from tests.e2e.upstream import start_upstream
from tests.faults.clients import Burst, get
from tests.faults.conftest import CAPS, GITHUB, MS_CLIENT_SECRET
from tests.faults.token_server import FaultyTokenServer


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="capgate-faults-bench"))
    pki = make_test_pki(tmp / "pki")
    upstream = start_upstream(str(pki.server_cert_pem), str(pki.server_key_pem))
    tokens = FaultyTokenServer().start()
    running: list[subprocess.Popen[bytes]] = []
    try:
        home = CliHome(
            tmp / "home",
            {
                "CAPGATE_UNSAFE_TOKEN_ENDPOINTS": json.dumps({"microsoft": tokens.url}),
                "CAPGATE_TOKEN_TTL": "0",
            },
        )
        home.cli("init")
        home.cli("user", "add", "alice")
        home.cli(
            "cred", "add", "github", "--provider", "github_pat", "--kind", "api_key", stdin=GITHUB
        )
        home.cli(
            "cred",
            "add",
            "graph",
            "--provider",
            "microsoft",
            "--kind",
            "oauth2_client_credentials",
            "--config",
            "tenant_id=t1",
            "--config",
            "client_id=c1",
            stdin=MS_CLIENT_SECRET,
        )
        home.cli("secret", "set", "tenant-id", stdin="bench")
        caps = tmp / "caps.yaml"
        caps.write_text(CAPS.format(tls=upstream.port))
        ca = Path(home.cli("ca").strip())
        _, token = home.workspace("researcher")

        def start(soft: int, hard: int, env: dict[str, str] | None = None) -> ProxyProcess:
            out, err = tmp / f"out{len(running)}", tmp / f"err{len(running)}"
            process = subprocess.Popen(
                [
                    *CAPGATE,
                    "proxy",
                    "--caps",
                    str(caps),
                    "--listen",
                    "127.0.0.1:0",
                    "--upstream-ca",
                    str(pki.ca_pem),
                    "--no-access-log",
                ],
                stdout=out.open("wb"),
                stderr=err.open("wb"),
                env={**home.env(), **(env or {})},
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
            )
            running.append(process)
            ends = time.monotonic() + 30
            while time.monotonic() < ends:
                for line in err.read_text().splitlines():
                    if "listening on " in line:
                        return ProxyProcess(process, int(line.rsplit(":", 1)[1]), out, err)
                time.sleep(0.05)
            raise RuntimeError("the proxy did not start")

        def url(path: str) -> str:
            return upstream.url(path, host="localhost")

        idle_env = {"CAPGATE_PREAUTH_IDLE_TIMEOUT": "600"}
        proxy = start(8192, 8192, idle_env)
        get(proxy.url(token), ca, url("/repos/a"))
        time.sleep(0.5)
        before = _rss(proxy.process.pid)
        conns = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(1000)]
        time.sleep(2)
        after = _rss(proxy.process.pid)
        print(
            f"memory per idle connection: {(after - before) / 1000:.1f} KiB "
            f"(RSS {before} -> {after} KiB for 1,000)"
        )
        for c in conns:
            c.close()
        proxy.terminate()

        proxy = start(1024, 1024, idle_env)
        conns = []
        for _ in range(1100):
            c = socket.socket()
            c.settimeout(5)
            c.connect(("127.0.0.1", proxy.port))
            conns.append(c)
        time.sleep(2)
        held = _fds(proxy.process.pid)
        t0 = time.monotonic()
        status = get(proxy.url(token), ca, url("/repos/b"), 30).status_code
        print(
            f"1,024 hard limit, 1,100 idle opened: {held} descriptors held; an agent got "
            f"{status} in {time.monotonic() - t0:.2f} s"
        )
        for c in conns:
            c.close()
        proxy.terminate()

        proxy = start(20000, 20000)
        tokens.mode = "hang"
        burst = Burst(proxy.url(token), ca, url("/graph/me"), 12).start()
        time.sleep(2)
        t0 = time.monotonic()
        get(proxy.url(token), ca, url("/repos/x"))
        static = time.monotonic() - t0
        tokens.mode = "ok"
        t0 = time.monotonic()
        get(proxy.url(token), ca, url("/graph/me"), 60)
        recovered = time.monotonic() - t0
        print(
            f"wedged credential: static capability {static:.2f} s during the wedge; the "
            f"next request after the endpoint recovered got its token in {recovered:.1f} s"
        )
        burst.join()
        proxy.terminate()
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        tokens.stop()
        upstream.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
