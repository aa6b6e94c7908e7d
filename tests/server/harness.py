"""A real `capgate serve` process on an ephemeral port, and API clients for it.

`start_serve(home, logs, *args)` runs `python -m capgate.proxy serve --listen 127.0.0.1:0`
with the home's environment, waits for its "listening on" line and returns a
`ServeProcess` (stopped by PID with SIGTERM by the caller; stdout/stderr kept in files
for the canary scans).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.e2e.cli_harness import CAPGATE, CliHome


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    base: str
    stdout: Path
    stderr: Path

    def client(self, token: str | None = None, **kw: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=30, **kw)  # type: ignore[arg-type]

    def stop(self, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


def start_serve(home: CliHome, logs: Path, *extra: str) -> ServeProcess:
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / "serve.stdout", logs / "serve.stderr"
    process = subprocess.Popen(
        [*CAPGATE, "serve", "--listen", "127.0.0.1:0", *extra],
        stdout=out.open("wb"),
        stderr=err.open("wb"),
        env=home.env(),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = err.read_text(errors="replace")
        for line in text.splitlines():
            if "listening on http://" in line:
                base = line.split("listening on ", 1)[1].strip()
                served = ServeProcess(process, base, out, err)
                _wait_healthy(served)
                return served
        if process.poll() is not None:
            raise AssertionError(f"capgate serve exited {process.returncode}: {text}")
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise AssertionError("capgate serve did not start listening")


def _wait_healthy(served: ServeProcess) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if httpx.get(served.base + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("capgate serve is not healthy")


def api_key(home: CliHome, user: str, *args: str) -> str:
    created = json.loads(home.cli("apikey", "create", "--user", user, "--json", *args))
    return created["token"]


def file_bytes(*paths: Path) -> dict[str, bytes]:
    """The bytes of each existing file (a store and its write-ahead log; not the -shm
    index, which readers touch)."""
    out = {}
    for path in paths:
        for candidate in (path, Path(f"{path}-wal")):
            if candidate.exists():
                out[candidate.name] = candidate.read_bytes()
    return out
