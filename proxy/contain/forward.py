"""Byte relays between a TCP port and a Unix socket, and the launcher that runs CMD inside
the sandbox.

Standard library only: inside the sandbox this file runs as a plain script
(`python -I -S forward.py ...`), without capgate's package, its dependencies or site
directories. Outside, `capgate exec` imports `UnixToTcp` from it.

The contained CMD lives in a network namespace holding only a loopback interface. Its
one way out is `127.0.0.1:PORT` inside, which this launcher relays to a Unix socket that
`capgate exec` bind-mounts in; exec relays that socket to the proxy's TCP port outside.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading

CHUNK = 65536
READY = b"R"
TERMINAL_SIGNALS = (
    signal.SIGINT,
    signal.SIGQUIT,
)  # written to the ready descriptor once CMD has been started inside


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while True:
            data = source.recv(CHUNK)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _splice(a: socket.socket, b: socket.socket) -> None:
    """Relay both directions until each side has closed; then close both."""
    other = threading.Thread(target=_pump, args=(b, a), daemon=True)
    other.start()
    _pump(a, b)
    other.join()
    a.close()
    b.close()


class Relay:
    """Accept on `listener`; for each connection open one with `connect()` and splice."""

    def __init__(self, listener: socket.socket, connect) -> None:
        self.listener = listener
        self.connect = connect
        self._thread = threading.Thread(target=self._serve, name="capgate-relay", daemon=True)

    def start(self) -> Relay:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        try:
            upstream = self.connect()
        except OSError:
            client.close()
            return
        _splice(client, upstream)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


class UnixToTcp(Relay):
    """Outside the sandbox: a Unix socket at `path` relayed to `host:port` (the proxy)."""

    def __init__(self, path: str, host: str, port: int) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(128)
        super().__init__(listener, lambda: socket.create_connection((host, port)))


def _tcp_to_unix(port: int, path: str) -> Relay:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)

    def connect() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            s.close()
            raise
        return s

    return Relay(listener, connect)


def main(argv: list[str]) -> int:
    """`forward.py PORT SOCKET READY_FD -- CMD [ARG]...`: relay, run CMD, exit with its code."""
    port, path, ready_fd = int(argv[0]), argv[1], int(argv[2])
    command = argv[4:] if argv[3:4] == ["--"] else argv[3:]
    relay = _tcp_to_unix(port, path)  # listening before CMD's first connect
    # exec starts bwrap (and so this launcher) with SIGINT and SIGQUIT ignored, so that a
    # terminal's Ctrl-C does not kill bwrap (and with it, by SIGKILL, the sandbox). CMD
    # gets the default dispositions back.
    for sig in TERMINAL_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        sys.stderr.write(f"capgate: cannot run {command[0]}: {exc.strerror}\n")
        os.write(ready_fd, READY)
        os.close(ready_fd)
        return 127
    os.write(ready_fd, READY)
    os.close(ready_fd)
    # exec sends SIGTERM to this launcher alone: pass it on. A terminal's SIGINT, SIGQUIT and
    # SIGHUP reach CMD directly (same process group): passing them on too would deliver
    # each twice (two Ctrl-C quit some interactive agents), so here they are ignored, after
    # CMD started (an ignored disposition would be inherited).
    signal.signal(signal.SIGTERM, lambda number, _frame: _forward(child, number))
    for sig in (*TERMINAL_SIGNALS, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    relay.start()
    # This launcher is the sandbox's pid 1: it reaps every orphan until CMD itself exits.
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 1
        if pid == child.pid:
            break
    relay.close()
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _forward(child: subprocess.Popen[bytes], number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, number)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
