"""Clients for the fault tests: httpx through a proxy process, and a store-lock holder."""

from __future__ import annotations

import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def client(proxy_url: str, ca: Path, timeout: float = 30.0) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(ca))
    return httpx.Client(proxy=proxy_url, verify=context, timeout=timeout)


def get(proxy_url: str, ca: Path, url: str, timeout: float = 30.0) -> httpx.Response:
    with client(proxy_url, ca, timeout) as c:
        return c.get(url)


@dataclass
class Burst:
    """`count` concurrent GETs in threads; `results` holds a status or an exception name."""

    proxy_url: str
    ca: Path
    url: str
    count: int
    timeout: float = 60.0
    results: list[object] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Burst:
        lock = threading.Lock()

        def one() -> None:
            try:
                result: object = get(self.proxy_url, self.ca, self.url, self.timeout)
                result = (result.status_code, result.text)  # type: ignore[union-attr]
            except Exception as exc:
                result = type(exc).__name__
            with lock:
                self.results.append(result)

        self._threads = [threading.Thread(target=one, daemon=True) for _ in range(self.count)]
        for t in self._threads:
            t.start()
        return self

    def join(self, timeout: float = 90.0) -> list[object]:
        for t in self._threads:
            t.join(timeout)
        return self.results


HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


class WriteLockHolder:
    """Another process holding control.db's write lock until `release()`."""

    def __init__(self, db: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "held"

    def release(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("\n")
            self.process.stdin.flush()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def __enter__(self) -> WriteLockHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
