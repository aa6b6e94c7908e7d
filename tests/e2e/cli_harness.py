"""Running the real `capgate` CLI in subprocesses: a home, a proxy process, clients.

`CliHome` drives `python -m capgate.proxy` with CAPGATE_HOME set; `ProxyProcess` is
`capgate proxy` on an ephemeral port with stdout/stderr in files (scanned by the canary
test); `curl` and `urllib_get` are the two non-httpx clients.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CAPGATE = [sys.executable, "-m", "capgate.proxy"]


@dataclass
class CliHome:
    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("CAPGATE_ORG", None)
        env["CAPGATE_HOME"] = str(self.root)
        env.update(self.extra_env)
        return env

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """`capgate ARGS` in a subprocess of its own."""
        done = subprocess.run(
            [*CAPGATE, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"capgate {' '.join(args)} -> {done.returncode}: {done.stderr}")
        return done

    def cli(self, *args: str, stdin: str | None = None) -> str:
        """`capgate ARGS` in this process (CliRunner): another process than the proxy's,
        without paying the interpreter start-up."""
        from click.testing import CliRunner

        from capgate.proxy.cli.main import main

        result = CliRunner().invoke(
            main,
            ["--home", str(self.root), *args],
            input=stdin,
            env=self.extra_env,
            catch_exceptions=False,
        )
        if result.exit_code != 0:
            raise AssertionError(f"capgate {' '.join(args)} -> {result.exit_code}: {result.output}")
        return result.stdout

    def workspace(self, role: str, user: str = "alice") -> tuple[str, str]:
        created = json.loads(
            self.cli("workspace", "create", "--role", role, "--user", user, "--json")
        )
        return created["id"], created["token"]

    def decisions(self, *args: str, at_least: int = 0, wait: float = 3.0) -> list[dict[str, Any]]:
        """Rows via `capgate decisions --json`; waits up to `wait` s for `at_least` rows
        (a running proxy writes them in batches, off the request path)."""
        deadline = time.monotonic() + wait
        while True:
            out = self.cli("decisions", "--json", "--limit", "1000", *args)
            rows = [json.loads(line) for line in out.splitlines() if line.strip()]
            if len(rows) >= at_least or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


@dataclass
class ProxyProcess:
    process: subprocess.Popen[bytes]
    port: int
    stdout: Path
    stderr: Path

    def url(self, token: str) -> str:
        return f"http://agent:{token}@127.0.0.1:{self.port}"

    def terminate(self, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


def start_proxy_process(
    home: CliHome, caps: Path, upstream_ca: Path, logs: Path, *extra: str
) -> ProxyProcess:
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / "proxy.stdout", logs / "proxy.stderr"
    process = subprocess.Popen(
        [
            *CAPGATE,
            "proxy",
            "--caps",
            str(caps),
            "--listen",
            "127.0.0.1:0",
            "--upstream-ca",
            str(upstream_ca),
            *extra,
        ],
        stdout=out.open("wb"),
        stderr=err.open("wb"),
        env=home.env(),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = err.read_text(errors="replace")
        for line in text.splitlines():
            if "listening on " in line:
                port = int(line.rsplit(":", 1)[1])
                return ProxyProcess(process, port, out, err)
        if process.poll() is not None:
            raise AssertionError(f"capgate proxy exited {process.returncode}: {text}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("capgate proxy did not start listening")


def curl(proxy_url: str, ca: Path, url: str, *args: str) -> tuple[int, str]:
    """(HTTP status, body) of one curl call through the proxy."""
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--proxy",
            proxy_url,
            "--cacert",
            str(ca),
            "-w",
            "\n%{http_code}",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    body, _, status = done.stdout.rpartition("\n")
    return int(status or 0), body + done.stderr


def urllib_get(proxy_url: str, ca: Path, url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": proxy_url, "https": proxy_url}),
        urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(ca))),
    )
    try:
        with opener.open(url, timeout=20) as reply:
            return reply.status, reply.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
