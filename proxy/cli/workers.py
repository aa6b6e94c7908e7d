"""`capgate proxy --workers N`: a supervisor and N proxy processes on one port.

The supervisor reserves the port (a socket bound with SO_REUSEPORT that never listens, so
the kernel hands it no connection and the port stays ours while a worker restarts), then
starts N `capgate proxy` processes that each listen on it with SO_REUSEPORT (the runner's
seam); the kernel spreads new connections over the listening workers. Every worker opens
the same home: the stores, the cross-process credential locks and the change generation
are shared, so a delete or a refresh in one worker is seen by the others exactly as with
separate proxies.

- A worker that dies after it was listening is restarted (backing off when it keeps
  dying); one that dies before it ever listened stops the whole start (a broken
  configuration would otherwise restart forever).
- SIGTERM or SIGINT stops every worker with SIGTERM, so each flushes its pending policy
  decision rows; a worker still running after the grace period is killed.
- Workers die with the supervisor (PR_SET_PDEATHSIG), so a killed supervisor leaves no
  orphan holding the port.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger("capgate.proxy")

READY_TIMEOUT = 30.0  # seconds a worker may take to listen
STOP_GRACE = 20.0  # seconds workers get to flush and exit after SIGTERM
RESTART_WINDOW = 60.0  # restarts counted over this many seconds for the back-off
MAX_BACKOFF = 5.0
_PR_SET_PDEATHSIG = 1


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT, not listening: it fixes the port
    (picking one for port 0) and fails early with EADDRINUSE when someone else holds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    ready_fd: int = -1
    ready: bool = False
    started_at: float = 0.0
    restart_at: float | None = None
    restarts: list[float] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


class Supervisor:
    """Start, watch, restart and stop the workers; `run()` returns the exit code."""

    def __init__(self, count: int, command: Callable[[int, int], Sequence[str]]) -> None:
        """`command(index, ready_fd)`: the argv of worker `index`, which writes one byte to
        `ready_fd` once it listens."""
        self.workers = [Worker(i) for i in range(1, count + 1)]
        self._command = command
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------

    def run(self, on_ready: Callable[[], None]) -> int:
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for worker in self.workers:
                self._spawn(worker)
            if not self._wait_all_ready():
                self.stop()
                return 1
            on_ready()
            while not self._stopping:
                self._watch_once(timeout=0.2)
            self.stop()
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def stop(self) -> None:
        """SIGTERM every live worker, wait for them to flush and exit, kill stragglers."""
        self._stopping = True
        live = [w for w in self.workers if w.process and w.process.poll() is None]
        for worker in live:
            assert worker.process is not None
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for worker in live:
            assert worker.process is not None
            try:
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("worker %d (pid %d) did not stop in time; killing it",
                             worker.index, worker.process.pid)  # fmt: skip
                worker.process.kill()
                worker.process.wait()
        for worker in self.workers:
            self._close_ready(worker)

    # -- workers -----------------------------------------------------------------------

    def _spawn(self, worker: Worker) -> None:
        read_fd, write_fd = os.pipe()
        try:
            worker.process = subprocess.Popen(
                list(self._command(worker.index, write_fd)),
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._close_ready(worker)
        worker.ready_fd, worker.ready = read_fd, False
        worker.started_at, worker.restart_at = time.monotonic(), None
        logger.debug("worker %d started (pid %d)", worker.index, worker.process.pid)

    @staticmethod
    def _close_ready(worker: Worker) -> None:
        if worker.ready_fd >= 0:
            os.close(worker.ready_fd)
            worker.ready_fd = -1

    def _poll_ready(self, timeout: float) -> None:
        waiting = {w.ready_fd: w for w in self.workers if w.ready_fd >= 0 and not w.ready}
        if not waiting:
            time.sleep(timeout)
            return
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select(list(waiting), [], [], timeout)
            for fd in readable:
                worker = waiting[fd]
                if os.read(fd, 1):
                    worker.ready = True
                    logger.info("worker %d (pid %d) listening", worker.index, worker.pid)
                self._close_ready(worker)  # EOF without a byte: the worker died

    def _wait_all_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(w.ready for w in self.workers):
            if self._stopping:
                return False
            for worker in self.workers:
                assert worker.process is not None
                code = worker.process.poll()
                if code is not None and not worker.ready:
                    logger.error("worker %d exited with code %d before listening",
                                 worker.index, code)  # fmt: skip
                    return False
            if time.monotonic() > deadline:
                logger.error("the workers did not start listening in time")
                return False
            self._poll_ready(0.05)
        return True

    def _watch_once(self, timeout: float) -> None:
        self._poll_ready(timeout)
        now = time.monotonic()
        for worker in self.workers:
            assert worker.process is not None
            if self._stopping:
                return
            if worker.restart_at is not None:
                if now >= worker.restart_at:
                    self._spawn(worker)
                continue
            code = worker.process.poll()
            if code is None:
                continue
            worker.restarts = [t for t in worker.restarts if now - t < RESTART_WINDOW]
            delay = min(MAX_BACKOFF, 0.1 * 2 ** len(worker.restarts)) if worker.restarts else 0
            worker.restarts.append(now)
            worker.restart_at = now + delay
            logger.warning("worker %d (pid %d) exited with code %d; restarting in %.1fs",
                           worker.index, worker.process.pid, code, delay)  # fmt: skip
