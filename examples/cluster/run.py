"""Two capgate homes on one PostgreSQL, two proxies: a delete via one home takes effect on
both proxies' next request.

    .venv/bin/python examples/cluster/run.py

What it does, step by step (each step prints the command it stands for):
1. starts a private PostgreSQL (initdb into a temporary folder, 127.0.0.1, a picked port;
   as root it runs as `nobody`, since PostgreSQL refuses root) and creates two databases,
   one for the control store and one for the vault;
2. `capgate init --store URL --vault URL` for home A, then for home B with A's key file
   copied in (every machine needs the same key);
3. adds a user and a credential via home A, starts `capgate proxy` on each home, and
   sends one request through each proxy to a local echo upstream: both stamp the
   credential;
4. `capgate cred delete` via home A, and one request through each proxy again: neither
   stamps it any more.
Everything it started is stopped at the end. Exits 1 when a step did not come out right.
"""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.pg import PrivatePostgres  # noqa: E402

CAPGATE = [sys.executable, "-m", "capgate.proxy"]
TOKEN_VALUE = "ghp_clusterDemoToken_0123456789abcdef"
CAPS = """\
version: 1
capabilities:
  - name: echo
    match: {{hosts: ["127.0.0.1:{port}"], schemes: [http]}}
    allow_plaintext: true
    transforms:
      - auth: {{credential: github, provider: github_pat}}
roles:
  agent:
    capabilities: [echo]
"""


class Echo(http.server.BaseHTTPRequestHandler):
    """Answers with the Authorization header it received (as JSON)."""

    def do_GET(self) -> None:
        body = json.dumps({"authorization": self.headers.get("Authorization")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def capgate(home: Path, *args: str, stdin: str | None = None) -> str:
    shown = [a if not a.startswith("postgresql://") else "postgresql://…" for a in args]
    print(f"$ CAPGATE_HOME={home.name} capgate {' '.join(shown)}")
    done = subprocess.run(
        [*CAPGATE, "--home", str(home), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        sys.exit(f"capgate {' '.join(shown)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def start_proxy(home: Path, caps: Path, logs: Path) -> tuple[subprocess.Popen[bytes], int]:
    print(f"$ CAPGATE_HOME={home.name} capgate proxy --caps caps.yaml --listen 127.0.0.1:0 &")
    err = logs / f"{home.name}.stderr"
    process = subprocess.Popen(
        [*CAPGATE, "--home", str(home), "proxy", "--caps", str(caps), "--listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=err.open("wb"),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in err.read_text(errors="replace").splitlines():
            if "listening on " in line:
                return process, int(line.rsplit(":", 1)[1])
        if process.poll() is not None:
            sys.exit(f"capgate proxy exited: {err.read_text()}")
        time.sleep(0.05)
    process.kill()
    sys.exit("capgate proxy did not start")


def through(port: int, token: str, url: str) -> str | None:
    """The Authorization header the upstream saw for one request through a proxy."""
    proxy = f"http://agent:{token}@127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    with opener.open(url, timeout=20) as reply:
        return json.loads(reply.read())["authorization"]


def shown(header: str | None) -> str:
    # The echo sends the header back; capgate scrubs the stored value out of the response,
    # so the agent sees "[REDACTED:github]" where the upstream saw the token.
    return "(none)" if header is None else header


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="capgate-cluster-"))
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{upstream.server_port}/whoami"
    proxies: list[subprocess.Popen[bytes]] = []
    print("# 1. a private PostgreSQL: initdb into a temporary folder, 127.0.0.1 only")
    pg = PrivatePostgres.start()
    try:
        store, vault = pg.create_database("capgate_control"), pg.create_database("capgate_vault")
        print(f"   postgres pid {pg.process.pid} on 127.0.0.1:{pg.port}; databases created")
        a, b = work / "home-a", work / "home-b"
        print("# 2. two homes on the same stores, with the same key file")
        capgate(a, "init", "--store", store, "--vault", vault)
        b.mkdir(mode=0o700)
        shutil.copy2(a / "key", b / "key")
        print("$ cp home-a/key home-b/key")
        capgate(b, "init", "--store", store, "--vault", vault)
        print("# 3. a credential added via home A; a proxy on each home")
        capgate(a, "user", "add", "alice")
        capgate(
            a, "cred", "add", "github", "--provider", "github_pat", "--kind", "api_key",
            stdin=TOKEN_VALUE,
        )  # fmt: skip
        created = capgate(a, "workspace", "create", "--role", "agent", "--user", "alice", "--json")
        token = json.loads(created)["token"]
        caps = work / "caps.yaml"
        caps.write_text(CAPS.format(port=upstream.server_port))
        (work / "logs").mkdir()
        ports = []
        for home in (a, b):
            process, port = start_proxy(home, caps, work / "logs")
            proxies.append(process)
            ports.append(port)
        before = [through(port, token, url) for port in ports]
        for name, header in zip("AB", before, strict=True):
            print(f"   via proxy {name}: the upstream got Authorization: {shown(header)}")
        print("   (the upstream saw the token; capgate scrubbed it from the echo the agent got)")
        print("# 4. delete the credential via home A")
        capgate(a, "cred", "delete", "github")
        after = [through(port, token, url) for port in ports]
        for name, header in zip("AB", after, strict=True):
            print(f"   via proxy {name}: the upstream got Authorization: {shown(header)}")
        ok = before == ["Bearer [REDACTED:github]"] * 2 and after == [None, None]
        print("OK: the delete took effect on both proxies" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        for process in proxies:
            process.terminate()
            process.wait(timeout=20)
        upstream.shutdown()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
