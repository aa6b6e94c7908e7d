"""Process management for the benchmark: every child in its own process group, stopped on exit.

`Procs` is a context manager; everything spawned through it is stopped (SIGTERM to the
group, then SIGKILL) when the block ends, whatever happened. When the machine has at
least two usable cores, the proxy under test is pinned to one core (`proxy_cpu`) and the
load generator and upstream to another (`side_cpu`), through a tiny exec trampoline that
sets the affinity before the program starts (so every thread it creates inherits it).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

_TRAMPOLINE = (
    "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); "
    "os.execvp(sys.argv[2], sys.argv[2:])"
)


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process and its live children (workers) have used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return own + sum(cpu_seconds(int(child)) for child in children)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def read_line(self, timeout: float) -> str:
        """One line of the child's stdout (only for `capture_stdout=True`), within `timeout`."""
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.popen.stdout.fileno()
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RuntimeError(f"{self.name}: no output within {timeout}s; see {self.log}")
            chunk = os.read(fd, 1)
            if not chunk:
                raise RuntimeError(f"{self.name} exited; see {self.log}")
            buf += chunk
        return buf.decode()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Procs:
    """Starts and (always) stops the benchmark's child processes."""

    logdir: Path
    pin: bool = True
    children: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        cores = sorted(os.sched_getaffinity(0))
        self.pinned = self.pin and len(cores) >= 2
        self.proxy_cpu: int | None = cores[0] if self.pinned else None
        self.side_cpu: int | None = cores[1] if self.pinned else None

    def __enter__(self) -> Procs:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for proc in reversed(self.children):
            self.stop(proc)

    def spawn(
        self,
        cmd: list[str],
        *,
        name: str,
        cpu: int | None = None,
        env: dict[str, str] | None = None,
        capture_stdout: bool = False,
    ) -> Proc:
        if cpu is not None:
            cmd = [sys.executable, "-c", _TRAMPOLINE, str(cpu), *cmd]
        log = self.logdir / f"{name}.log"
        with log.open("wb") as logfile:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture_stdout else logfile,
                stderr=logfile,
                env=env,
                start_new_session=True,  # its own process group, for a clean stop
            )
        proc = Proc(name, popen, log)
        self.children.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        if proc.popen.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.popen.wait(timeout=8)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.popen.wait(timeout=5)
            except ProcessLookupError:
                pass
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()
        if proc in self.children:
            self.children.remove(proc)


def wait_port(port: int, proc: Proc, timeout: float = 20) -> None:
    """Wait until 127.0.0.1:port accepts connections; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not listen on {port} within {timeout}s:\n{proc.tail()}")


@dataclass(frozen=True)
class Proxy:
    """A running proxy under test: where it listens, the CA clients trust, the auth to send."""

    name: str
    port: int
    ca_pem: Path
    proc: Proc
    auth: str | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


MITMDUMP = Path(sys.executable).with_name("mitmdump")


def start_mitmdump(
    procs: Procs, workdir: Path, upstream_ca: Path, *, name: str, options: dict[str, str]
) -> Proxy:
    """Stock mitmdump, no addon script, quiet; `options` are extra `--set` options."""
    confdir = workdir / name
    confdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [str(MITMDUMP), "-q", "--listen-host", "127.0.0.1", "--listen-port", str(port)]
    settings = {"confdir": str(confdir), "ssl_verify_upstream_trusted_ca": str(upstream_ca)}
    for key, value in (settings | options).items():
        cmd += ["--set", f"{key}={value}"]
    proc = procs.spawn(cmd, name=name, cpu=procs.proxy_cpu)
    wait_port(port, proc, timeout=30)
    return Proxy(name, port, confdir / "mitmproxy-ca-cert.pem", proc)


# -- capgate ---------------------------------------------------------------------------------

CAPGATE = Path(sys.executable).with_name("capgate")
SAME_HOST_DECOYS = 20  # capabilities on the target's host whose paths do not match


def caps_yaml(count: int, targets: list[tuple[str, int]], credential: str, provider: str) -> str:
    """A caps.yaml of `count` capabilities; the last one matches `targets` and injects.

    The others are decoys: exact, wildcard and exact-with-port hosts elsewhere, plus
    SAME_HOST_DECOYS on the target's own host and ports whose paths do not match (so the
    matcher has real work: first match in file order on an indexed host).
    """
    hosts = ", ".join(f'"{host}:{port}"' for host, port in targets)
    lines = ["version: 1", "defaults: {unmatched: deny}", "capabilities:"]
    names = []
    for i in range(count - 1):
        if i < SAME_HOST_DECOYS:
            match = f"hosts: [{hosts}], schemes: [http, https], paths: ['/other-{i:02d}/**']"
        elif i % 3 == 0:
            match = f"hosts: ['svc-{i:05d}.bench.example'], methods: [GET, POST]"
        elif i % 3 == 1:
            match = f"hosts: ['*.tenant-{i:05d}.bench.example'], paths: ['/v1/**']"
        else:
            match = f"hosts: ['api-{i:05d}.bench.example:8443'], paths: ['/items/*', '/x']"
        names.append(f"decoy-{i:05d}")
        lines += [
            f"  - name: decoy-{i:05d}",
            f"    match: {{{match}}}",
            "    allow_plaintext: true",
            f"""    transforms: [{{header: {{name: X-Decoy, action: set, value: '"{i}"'}}}}]""",
        ]
    names.append("bench-target")
    lines += [
        "  - name: bench-target",
        f"    match: {{hosts: [{hosts}], schemes: [http, https], paths: ['/bench', '/sse']}}",
        "    allow_plaintext: true",
        "    transforms:",
        f"      - auth: {{credential: {credential}, provider: {provider}}}",
        """      - header: {name: X-Bench-Secret, action: set, value: 'secrets["bench-secret"]'}""",
        "      - query: {name: ws, action: set, value: 'workspace.id'}",
        "roles:",
        "  bench:",
        "    capabilities:",
        *(f"      - {name}" for name in names),
    ]
    return "\n".join(lines) + "\n"


def capgate_available() -> str | None:
    """None when `capgate proxy` and the store commands exist; else why not."""
    for group in (["proxy"], ["workspace", "create"], ["secret", "set"], ["cred", "add"]):
        done = subprocess.run(
            [str(CAPGATE), *group, "--help"], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            return f"`capgate {' '.join(group)}` is not available yet"
    return None


def _capgate(home: Path, env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [str(CAPGATE), "--home", str(home), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"capgate {' '.join(args[:2])} failed: {done.stderr.strip()[-800:]}")
    return done.stdout


@dataclass(frozen=True)
class CapgateSetup:
    proxy: Proxy
    without_decisions: Proxy | None  # the same, with policy_decision recording switched off
    credential_kind: str
    startup_s: float  # process start to listening (loads and compiles caps.yaml)
    # Another `capgate proxy` on the same home: (name, extra CLI args, cpu or None).
    variant: Callable[[str, list[str], int | None], Proxy]


def start_capgate(
    procs: Procs,
    workdir: Path,
    upstream_ca: Path,
    targets: list[tuple[str, int]],
    *,
    count: int,
    token_url: str,
    client: tuple[str, str],
    store_urls: tuple[str, str] | None = None,
    name: str = "capgate",
    decisions_off_variant: bool = True,
) -> CapgateSetup:
    """Initialise a throwaway home, store a credential and a secret, start `capgate proxy`.

    The credential is a Microsoft client-credentials OAuth client whose token endpoint is
    redirected to `token_url` (CAPGATE_UNSAFE_TOKEN_ENDPOINTS). A second proxy on the same
    home runs with policy_decision recording switched off (tests/bench/nodecisions.py).
    """
    home = workdir / f"{name}-home"
    env = dict(os.environ, CAPGATE_HOME=str(home))
    env["CAPGATE_UNSAFE_TOKEN_ENDPOINTS"] = json.dumps({"microsoft": token_url})
    if store_urls is not None:  # PostgreSQL control and vault stores
        _capgate(home, env, "init", "--store", store_urls[0], "--vault", store_urls[1])
    else:
        _capgate(home, env, "init")
    kind, provider = "oauth2_client_credentials", "microsoft"
    _capgate(
        home, env, "cred", "add", "bench-cred", "--provider", provider, "--kind", kind,
        "--config", f"client_id={client[0]}", "--config", "tenant_id=bench", stdin=client[1],
    )  # fmt: skip
    _capgate(home, env, "secret", "set", "bench-secret", stdin="bench-secret-value-0123456789")
    _capgate(home, env, "user", "add", "bench")
    caps = workdir / "caps.yaml"
    caps.write_text(caps_yaml(count, targets, "bench-cred", provider))
    token = json.loads(
        _capgate(home, env, "workspace", "create", "--role", "bench", "--user", "bench", "--json")
    )["token"]

    def command(program: list[str], port: int) -> list[str]:
        listen = f"127.0.0.1:{port}"
        options = ["--caps", str(caps), "--upstream-ca", str(upstream_ca), "--listen", listen]
        return [*program, "--home", str(home), "proxy", *options]

    port, variant_port = free_port(), free_port()
    started = time.monotonic()
    proc = procs.spawn(command([str(CAPGATE)], port), name=name, cpu=procs.proxy_cpu, env=env)
    wait_port(port, proc, timeout=120)
    startup = time.monotonic() - started
    variant = None
    if decisions_off_variant:
        variant = procs.spawn(
            command([sys.executable, "-m", "tests.bench.nodecisions"], variant_port),
            name=f"{name}-nodecisions",
            cpu=procs.proxy_cpu,
            env=env,
        )
        wait_port(variant_port, variant, timeout=120)
    try:
        ca_pem = Path(_capgate(home, env, "ca").strip())
    except RuntimeError:  # before `capgate ca` existed: the runner's confdir
        ca_pem = home / "ca" / "mitmproxy-ca-cert.pem"
    auth = f"agent:{token}"

    def another(name: str, extra: list[str], cpu: int | None) -> Proxy:
        other_port = free_port()
        other = procs.spawn(
            [*command([str(CAPGATE)], other_port), *extra], name=name, cpu=cpu, env=env
        )
        wait_port(other_port, other, timeout=120)
        return Proxy(name, other_port, ca_pem, other, auth)

    return CapgateSetup(
        Proxy(name, port, ca_pem, proc, auth),
        Proxy(f"{name}-nodecisions", variant_port, ca_pem, variant, auth) if variant else None,
        kind,
        startup,
        another,
    )


def start_bare(procs: Procs, workdir: Path, upstream_ca: Path) -> Proxy:
    """mitmproxy with exactly capgate's runner addons and options, no capgate addon."""
    home = workdir / "bare"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "tests.bench.bare", "--home", str(home)]
    cmd += ["--listen-port", str(port), "--upstream-ca", str(upstream_ca)]
    proc = procs.spawn(cmd, name="bare", cpu=procs.proxy_cpu)
    wait_port(port, proc, timeout=30)
    return Proxy("bare", port, home / "ca" / "mitmproxy-ca-cert.pem", proc)
