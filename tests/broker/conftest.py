"""Fixtures for the broker's store tests: an initialised home, its stores, a CLI runner."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from capgate.broker.home import Home, init_home
from capgate.broker.stores import Stores
from capgate.proxy.cli.main import main

CANARY = "CANARY-cred-7f3a9c"


@pytest.fixture
def home(tmp_path: Path) -> Home:
    root = tmp_path / "home"
    init_home(root)
    Stores.open(Home(root)).close()
    return Home(root)


@pytest.fixture
def stores(home: Home) -> Iterator[Stores]:
    opened = Stores.open(home)
    yield opened
    opened.close()


@pytest.fixture
def org(stores: Stores) -> str:
    return stores.control.org_id("acme", create=True)


@dataclass
class Cli:
    """Runs `capgate --home HOME [--org ORG] ARGS` in-process."""

    root: Path
    org: str = "default"

    def __call__(
        self, *args: str, input: str | bytes | None = None, org: str | None = None
    ) -> Result:
        runner = CliRunner()
        argv = ["--home", str(self.root), "--org", org or self.org, *args]
        return runner.invoke(main, argv, input=input, catch_exceptions=False)


def read_outside(path: Path) -> bytes:
    """A file's bytes, read by another process (b"" when absent).

    Opening and closing a SQLite file in this process would drop the POSIX locks of this
    process's open connections to it; `cat` in a child process cannot.
    """
    done = subprocess.run(["cat", str(path)], capture_output=True, check=False)
    return done.stdout if done.returncode == 0 else b""


@pytest.fixture
def file_bytes() -> Callable[[Path], bytes]:
    return read_outside


@pytest.fixture
def canary() -> str:
    return CANARY


@pytest.fixture
def uninitialised_cli(tmp_path: Path) -> Cli:
    """A CLI over a home folder that `capgate init` has not created."""
    return Cli(tmp_path / "no-home")


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """A CLI over an initialised home (through `capgate init`)."""
    runner = Cli(tmp_path / "cli-home")
    result = runner("init")
    assert result.exit_code == 0, result.output
    return runner
