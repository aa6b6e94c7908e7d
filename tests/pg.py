"""A private PostgreSQL cluster for tests and the cluster example: initdb into a temporary
folder, run `postgres` on 127.0.0.1 at a picked port (and a Unix socket in that folder),
stop it by PID.

PostgreSQL refuses to run as root, so as root the cluster is created and run as the
unprivileged `nobody` (the folder is handed to it); as anyone else, as that user. Host
connections need a password (scram-sha-256); the password is random per cluster.

    with PrivatePostgres.start() as pg:
        url = pg.create_database("control")   # postgresql://capgate:...@127.0.0.1:PORT/control
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PG_BIN_DIRS = tuple(Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15, 14))
SUPERUSER = "capgate"
RUN_AS = "nobody"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here, or the cluster would not start."""


def find_bin() -> Path:
    for candidate in PG_BIN_DIRS:
        if (candidate / "postgres").exists() and (candidate / "initdb").exists():
            return candidate
    raise PostgresUnavailable(
        "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin "
        "(Debian: apt-get install postgresql)"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrivatePostgres:
    root: Path
    port: int
    password: str
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, timeout: float = 60.0) -> PrivatePostgres:
        bindir = find_bin()
        root = Path(tempfile.mkdtemp(prefix="capgate-pg-"))
        password = secrets.token_urlsafe(18)
        as_root = os.geteuid() == 0
        prefix: list[str] = []
        if as_root:
            user = pwd.getpwnam(RUN_AS)
            os.chown(root, user.pw_uid, user.pw_gid)
            prefix = ["runuser", "-u", RUN_AS, "--"]
        os.chmod(root, 0o700)
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        if as_root:
            os.chown(pwfile, pwd.getpwnam(RUN_AS).pw_uid, -1)
        data = root / "data"
        init = subprocess.run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        pwfile.unlink()
        if init.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            raise PostgresUnavailable(f"initdb failed: {init.stderr.strip()[-600:]}")
        port = _free_port()
        log = (root / "postgres.log").open("wb")
        if as_root:
            os.chown(root / "postgres.log", pwd.getpwnam(RUN_AS).pw_uid, -1)
        process = subprocess.Popen(
            [
                *prefix,
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-k",
                str(root),
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        pg = cls(root, port, password, process)
        try:
            pg._wait_ready(timeout)
        except BaseException:
            pg.stop()
            raise
        return pg

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise PostgresUnavailable(f"postgres exited: {self.log_tail()}")
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(
                        f"postgres did not start: {self.log_tail()}"
                    ) from None
                time.sleep(0.1)

    def log_tail(self) -> str:
        try:
            return (self.root / "postgres.log").read_text(errors="replace")[-800:]
        except OSError:
            return ""

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown by PID (SIGINT), then SIGKILL; the folder is removed."""
        if self.process.poll() is None:
            try:
                # runuser forwards the signal to postgres; as non-root this is postgres.
                self.process.send_signal(signal.SIGINT)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
