"""Class 6: config that is half there is not config.

A caps path that is a FIFO, a symlink to /dev/zero, or larger than the limit is refused
quickly with an `error:` line (caps check, proxy start, replay); a caps.yaml written in two
steps is never applied half-written; a big reload compiles off the event loop.
"""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from pathlib import Path

import pytest

from capgate.proxy.addon.reload import CapsWatcher
from tests.e2e.cli_harness import CAPGATE, CliHome
from tests.e2e.upstream import Upstream

from .clients import get
from .conftest import CAPS, Proxies, ca_of

MAX_CAPS_BYTES = 8 * 1024 * 1024  # caps/files.py, as documented in the README
MEMORY_CAP = 1024 * 1024 * 1024  # the CLI runs under a 1 GiB address-space limit here


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP * 2, MEMORY_CAP * 2))


def run_capped(home: CliHome, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`capgate ARGS` with a memory cap (a regression must not eat the machine)."""
    return subprocess.run(
        [*CAPGATE, *args],
        capture_output=True,
        text=True,
        env=home.env(),
        timeout=timeout,
        preexec_fn=_limited,
    )


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "caps-fifo.yaml"
    os.mkfifo(path)
    return path


@pytest.fixture
def zero_link(tmp_path: Path) -> Path:
    path = tmp_path / "caps-zero.yaml"
    path.symlink_to("/dev/zero")
    return path


@pytest.fixture
def huge(tmp_path: Path) -> Path:
    path = tmp_path / "caps-huge.yaml"
    line = "# " + "x" * 1000 + "\n"
    with path.open("w") as handle:
        handle.write("version: 1\n")
        for _ in range(MAX_CAPS_BYTES // len(line) + 10):
            handle.write(line)
    return path


@pytest.mark.parametrize(
    ("which", "words"),
    [("fifo", "a FIFO"), ("zero_link", "a character device"), ("huge", "MiB limit")],
)
def test_caps_check_refuses_a_path_that_is_no_regular_file_or_too_large(
    request: pytest.FixtureRequest, home: CliHome, which: str, words: str
) -> None:
    path = request.getfixturevalue(which)
    done = run_capped(home, "caps", "check", str(path))
    assert done.returncode == 1, done.stderr
    assert words in done.stderr  # as a file:line:col problem, like any invalid caps file
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr


@pytest.mark.parametrize("which", ["fifo", "zero_link", "huge"])
def test_proxy_refuses_to_start_on_such_a_caps_path(
    request: pytest.FixtureRequest, home: CliHome, which: str
) -> None:
    path = request.getfixturevalue(which)
    done = run_capped(home, "proxy", "--caps", str(path), "--listen", "127.0.0.1:0")
    assert done.returncode == 1, done.stderr
    assert "error:" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("which", ["fifo", "zero_link", "huge"])
def test_replay_refuses_such_a_fixture_path(
    request: pytest.FixtureRequest, home: CliHome, caps_file: Path, which: str
) -> None:
    path = request.getfixturevalue(which)
    done = run_capped(home, "replay", "--caps", str(caps_file), str(path))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr
    assert "cannot read fixture" in done.stdout + done.stderr


def test_replay_refuses_a_caps_fifo(home: CliHome, fifo: Path, tmp_path: Path) -> None:
    fixture = tmp_path / "f.yaml"
    fixture.write_text("description: x\n")
    done = run_capped(home, "replay", "--caps", str(fifo), str(fixture))
    assert done.returncode == 1, done.stderr
    assert "a FIFO" in done.stdout + done.stderr


TWO_STEP_HEAD = """\
version: 1
capabilities:
  - name: github-api
    match: {hosts: ["api.test"], paths: ["/repos/**"]}
  - name: graph
    match: {hosts: ["api.test"], paths: ["/graph/**"]}
roles:
  researcher:
    capabilities:
      - github-api
"""
TWO_STEP_TAIL = "      - graph\n"


def test_a_caps_file_written_in_two_steps_is_never_applied_half_written(tmp_path: Path) -> None:
    # given a watched caps.yaml
    path = tmp_path / "caps.yaml"
    path.write_text(TWO_STEP_HEAD + TWO_STEP_TAIL)
    watcher = CapsWatcher(path)  # settles 0.25 s
    assert watcher.config.roles["researcher"].capabilities == ("github-api", "graph")
    # when an editor truncates and writes it in two steps (the first part is valid YAML
    # in which `graph` has vanished from the role), and a reload check runs in between
    with path.open("w") as handle:
        handle.write(TWO_STEP_HEAD.replace("api.test", "api2.test"))
        handle.flush()
        os.fsync(handle.fileno())

        def second_step() -> None:
            time.sleep(0.1)
            handle.write(TWO_STEP_TAIL)
            handle.flush()

        writer = threading.Thread(target=second_step)
        writer.start()
        applied = watcher.poll(force=True)
        writer.join()
    # then the half-written file was not applied
    assert applied is False
    assert watcher.config.roles["researcher"].capabilities == ("github-api", "graph")
    # and the complete file is, on the next check
    assert watcher.poll(force=True) is True
    assert watcher.config.roles["researcher"].capabilities == ("github-api", "graph")
    assert watcher.config.matcher("researcher").match("https", "api2.test", 443, "GET", "/graph/x")


def _big_caps(tls_port: int, extra: int) -> str:
    base = CAPS.format(tls=tls_port)
    head, _, _roles = base.partition("roles:\n")
    caps = [head.rstrip("\n")]
    for i in range(extra):
        caps.append(
            f"""  - name: cap{i}
    match: {{hosts: ["h{i}.example.com"], paths: ["/v{i}/**"]}}
    transforms:
      - header: {{name: X-Cap, action: set, value: '"cap" + "{i}" + request.method'}}"""
        )
    names = ", ".join(["github-api", "graph", "tenant", *(f"cap{i}" for i in range(extra))])
    return "\n".join(caps) + f"\nroles:\n  researcher:\n    capabilities: [{names}]\n"


@pytest.mark.slow
def test_a_big_hot_reload_compiles_off_the_event_loop(
    proxies: Proxies, caps_file: Path, tls_upstream: Upstream
) -> None:
    # given a running proxy, when caps.yaml is replaced by one of 3,000 capabilities
    # (several seconds to compile on this machine)
    proxy = proxies.start()
    _, token = proxies.home.workspace("researcher")
    ca = ca_of(proxies.home)
    assert get(proxy.url(token), ca, tls_upstream.url("/repos/a", host="localhost")).is_success
    tmp = caps_file.with_suffix(".new")
    tmp.write_text(_big_caps(tls_upstream.port, 3000))
    tmp.replace(caps_file)
    time.sleep(1.6)  # the once-a-second check has seen the change and is compiling
    # then requests are answered while it compiles (before the swap is logged)
    reply = get(proxy.url(token), ca, tls_upstream.url("/repos/b", host="localhost"), 30)
    assert reply.status_code == 200
    assert "reloaded (3003 capabilities)" not in proxy.output()
    ends = time.monotonic() + 90
    while "reloaded (3003 capabilities)" not in proxy.output():
        assert time.monotonic() < ends, proxy.output()
        time.sleep(0.2)
    assert get(proxy.url(token), ca, tls_upstream.url("/repos/c", host="localhost")).is_success
    assert proxy.terminate(timeout=30) == 0
