"""Agent containment, real processes: what a contained `capgate exec` child can reach.

Each test runs `capgate exec` as a subprocess with a real proxy and a real upstream on
127.0.0.1; the child is a small probe script whose findings come back as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .certs import TestPki
from .cli_harness import CAPGATE, CliHome, start_proxy_process
from .test_cli_proxy import GITHUB, caps_file, cli_home, dead_port, template_home
from .upstream import Upstream

FIXTURES = (caps_file, cli_home, dead_port, template_home)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None or not sys.platform.startswith("linux"),
    reason="containment needs Linux and bubblewrap (apt-get install bubblewrap)",
)

PROBE = r"""
import json, os, socket, sys
home, port = open("probe-args").read().split()  # not in argv: /proc is scanned for it
port = int(port)
found = {}
def attempt(name, call):
    try:
        call()
        found[name] = "ok"
    except OSError as exc:
        found[name] = type(exc).__name__
attempt("read_key", lambda: open(os.path.join(home, "key"), "rb").read())
attempt("read_control_db", lambda: open(os.path.join(home, "control.db"), "rb").read())
attempt("list_home", lambda: os.listdir(home) or (_ for _ in ()).throw(FileNotFoundError()))
attempt("raw_socket", lambda: socket.create_connection(("127.0.0.1", port), timeout=3).close())
attempt("dns", lambda: socket.getaddrinfo("example.com", 443))
leaks = []
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    for part in ("environ", "cmdline"):
        try:
            data = open(f"/proc/{pid}/{part}", "rb").read()
        except OSError:
            continue
        if home.encode() in data or b"CAPGATE_HOME" in data:
            leaks.append(f"{pid}/{part}")
    try:
        open(f"/proc/{pid}/root/{home.lstrip('/')}/key", "rb").read()
        leaks.append(f"{pid}/root")
    except OSError:
        pass
found["proc_leaks"] = leaks
found["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
found["uid"] = os.getuid()
print(json.dumps(found))
"""


def _exec(home: CliHome, caps: Path, pki: TestPki, *command: str, extra: tuple[str, ...] = (),
          env: dict[str, str] | None = None, cwd: Path | None = None,
          timeout: float = 90) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [
            *CAPGATE,
            "exec",
            "--caps",
            str(caps),
            "--role",
            "researcher",
            "--user",
            "alice",
            "--upstream-ca",
            str(pki.ca_pem),
            *extra,
            "--",
            *command,
        ],
        capture_output=True,
        text=True,
        env={**home.env(), **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )


def _probe(tmp_path: Path, home: CliHome, port: int) -> Path:
    path = tmp_path / "work" / "probe.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(PROBE)
    (path.parent / "probe-args").write_text(f"{home.root} {port}")
    return path


def _status(proxy_url: str, ca: Path, url: str) -> int:
    """The status the agent sees: the upstream's, or the proxy's answer to CONNECT."""
    done = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "--max-time", "20", "--proxy", proxy_url,
         "--cacert", str(ca), "-w", "%{http_code} %{http_connect}", url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    code, connect = done.stdout.split()
    return int(code) or int(connect)


def _workspaces(home: CliHome) -> list[dict]:
    return json.loads(home.cli("workspace", "list", "--json"))


@needs_bwrap
@pytest.mark.parametrize("workdir", ["beside", "above"])
def test_contained_child_cannot_read_the_home_or_find_it_through_proc(
    cli_home: CliHome,
    caps_file: Path,
    pki: TestPki,
    tls_upstream: Upstream,
    tmp_path: Path,
    workdir: str,
) -> None:
    # beside: the home is outside CMD's folder; above: the home is inside it (bound rw)
    probe = _probe(tmp_path, cli_home, tls_upstream.port)
    cwd = probe.parent if workdir == "beside" else tmp_path
    if workdir == "above":
        (tmp_path / "probe-args").write_text((probe.parent / "probe-args").read_text())
    assert (cli_home.root / "key").exists()
    done = _exec(cli_home, caps_file, pki, sys.executable, str(probe), cwd=cwd)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["read_key"] != "ok" and found["read_control_db"] != "ok"
    assert found["list_home"] != "ok"
    assert found["proc_leaks"] == []
    assert max(found["pids"]) < 20  # a pid namespace of its own: capgate is not in it


@needs_bwrap
def test_contained_child_reaches_nothing_but_the_proxy(
    cli_home: CliHome, caps_file: Path, pki: TestPki, tls_upstream: Upstream, tmp_path: Path
) -> None:
    probe = _probe(tmp_path, cli_home, tls_upstream.port)
    url = tls_upstream.url("/repos/x?echo_headers=authorization", host="localhost")
    script = f'{sys.executable} {probe}; curl -sS --max-time 20 "{url}"'
    done = _exec(cli_home, caps_file, pki, "sh", "-c", script, cwd=probe.parent)
    assert done.returncode == 0, done.stderr
    probe_line, curl_line = done.stdout.splitlines()[:2]
    found = json.loads(probe_line)
    # a raw socket to the upstream's port and DNS both fail: no route but the proxy
    assert found["raw_socket"] in ("ConnectionRefusedError", "OSError")
    assert found["dns"] != "ok"
    # the proxied call works, with the credential injected on the way out
    assert ["Authorization", "Bearer [REDACTED:github]"] in json.loads(curl_line)["headers"]
    assert tls_upstream.log.items[-1].header("Authorization") == [f"Bearer {GITHUB}"]
    assert GITHUB not in done.stdout + done.stderr


@needs_bwrap
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_contained_node_https_get_around_the_proxy_fails_closed(
    cli_home: CliHome, caps_file: Path, pki: TestPki, tls_upstream: Upstream, tmp_path: Path
) -> None:
    # Node 20's https.get ignores the proxy variables: contained, it cannot go direct.
    script = (
        "require('https').get({host: '127.0.0.1', port: PORT, path: '/repos/x',"
        " rejectUnauthorized: false}, r => { console.log('reached', r.statusCode); })"
        ".on('error', e => { console.log('failed', e.code); });"
    ).replace("PORT", str(tls_upstream.port))
    before = len(tls_upstream.log.items)
    done = _exec(cli_home, caps_file, pki, "node", "-e", script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("failed"), done.stdout
    assert len(tls_upstream.log.items) == before


@needs_bwrap
def test_contained_child_cannot_create_a_workspace(
    cli_home: CliHome, caps_file: Path, pki: TestPki, tmp_path: Path
) -> None:
    before = {w["id"] for w in _workspaces(cli_home)}
    done = _exec(
        cli_home, caps_file, pki, *CAPGATE, "--home", str(cli_home.root), "workspace",
        "create", "--role", "admin", "--user", "alice", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode != 0
    assert "token:" not in done.stdout
    after = _workspaces(cli_home)
    assert [w for w in after if w["id"] not in before and w["role"] == "admin"] == []


@needs_bwrap
def test_exec_refuses_to_run_from_inside_the_home(
    cli_home: CliHome, caps_file: Path, pki: TestPki
) -> None:
    done = _exec(cli_home, caps_file, pki, "true", cwd=cli_home.root)
    assert done.returncode == 1
    assert "inside the capgate home" in done.stderr and "--no-contain" in done.stderr


def test_exec_without_bubblewrap_refuses_naming_it_and_writes_nothing(
    cli_home: CliHome, caps_file: Path, pki: TestPki, tmp_path: Path
) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("sh", "true"):
        os.symlink(shutil.which(tool), bare / tool)
    before = _workspaces(cli_home)
    done = _exec(cli_home, caps_file, pki, "true", env={"PATH": str(bare)}, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "bubblewrap" in done.stderr
    assert "--no-contain" in done.stderr
    assert _workspaces(cli_home) == before


def test_no_contain_runs_the_command_with_a_warning(
    cli_home: CliHome, caps_file: Path, pki: TestPki, tls_upstream: Upstream, tmp_path: Path
) -> None:
    url = tls_upstream.url("/repos/x", host="localhost")
    done = _exec(
        cli_home, caps_file, pki, "sh", "-c", f'curl -sS -o /dev/null -w "%{{http_code}}" "{url}"',
        extra=("--no-contain",), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "200"
    assert any(line.startswith("warning: --no-contain") for line in done.stderr.splitlines())


@needs_bwrap
def test_run_as_drops_the_command_to_that_user(
    cli_home: CliHome,
    caps_file: Path,
    pki: TestPki,
    tls_upstream: Upstream,
    request: pytest.FixtureRequest,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("--run-as needs root")
    work = Path(tempfile.mkdtemp(prefix="capgate-run-as-"))  # pytest's tmp is root-only
    work.chmod(0o777)
    request.addfinalizer(lambda: shutil.rmtree(work, ignore_errors=True))
    url = tls_upstream.url("/repos/x", host="localhost")
    done = _exec(
        cli_home, caps_file, pki, "sh", "-c",
        f'id -u; cat {cli_home.root}/key 2>/dev/null || echo unreadable;'
        f' curl -sS -o /dev/null -w "%{{http_code}}" "{url}"',
        extra=("--run-as", "nobody"), cwd=work,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    uid, key, status = done.stdout.splitlines()
    assert (uid, key, status) == ("65534", "unreadable", "200")


def test_run_as_needs_a_known_user(cli_home: CliHome, caps_file: Path, pki: TestPki) -> None:
    done = _exec(cli_home, caps_file, pki, "true", extra=("--run-as", "no-such-user-x"))
    assert done.returncode == 2 and "no OS user" in done.stderr


@needs_bwrap
def test_sigkilled_exec_leaves_a_token_that_dies_with_its_lease(
    cli_home: CliHome, caps_file: Path, pki: TestPki, tls_upstream: Upstream, tmp_path: Path
) -> None:
    # given exec with a short lease, whose child hands its token out through its folder
    work = tmp_path / "work"
    work.mkdir()
    exec_process = subprocess.Popen(
        [
            *CAPGATE,
            "exec",
            "--caps",
            str(caps_file),
            "--role",
            "researcher",
            "--user",
            "alice",
            "--upstream-ca",
            str(pki.ca_pem),
            "--",
            "sh",
            "-c",
            'echo "$HTTPS_PROXY" > token.txt; sleep 120',
        ],
        env={**cli_home.env(), "CAPGATE_EXEC_LEASE_S": "9"},  # renewed every 3 s: load-proof
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proxy = start_proxy_process(cli_home, caps_file, pki.ca_pem, tmp_path / "logs")
    try:
        deadline = time.monotonic() + 30
        while not (work / "token.txt").exists() or not (work / "token.txt").read_text():
            assert time.monotonic() < deadline and exec_process.poll() is None
            time.sleep(0.05)
        token = (work / "token.txt").read_text().split("agent:", 1)[1].split("@", 1)[0]
        ca = Path(cli_home.cli("ca").strip())
        url = tls_upstream.url("/repos/x", host="localhost")
        time.sleep(10)  # past one lease: the renewals keep it alive
        assert _status(proxy.url(token), ca, url) == 200
        # when exec is killed outright (no chance to revoke)
        exec_process.send_signal(signal.SIGKILL)
        exec_process.wait(timeout=10)
        # then the other proxy refuses the token once the lease has run out
        deadline = time.monotonic() + 30
        while (status := _status(proxy.url(token), ca, url)) == 200:
            assert time.monotonic() < deadline, "the token outlived its lease"
            time.sleep(0.5)
        assert status == 407
    finally:
        if exec_process.poll() is None:
            exec_process.kill()
            exec_process.wait()
        proxy.terminate()


def test_expired_workspace_gets_407_on_its_next_request_at_a_running_proxy(
    cli_home: CliHome, caps_file: Path, pki: TestPki, tls_upstream: Upstream, tmp_path: Path
) -> None:
    proxy = start_proxy_process(cli_home, caps_file, pki.ca_pem, tmp_path / "logs")
    try:
        created = json.loads(
            cli_home.cli(
                "workspace",
                "create",
                "--role",
                "researcher",
                "--user",
                "alice",
                "--ttl",
                "2s",
                "--json",
            )
        )
        ca = Path(cli_home.cli("ca").strip())
        url = tls_upstream.url("/repos/x", host="localhost")
        assert _status(proxy.url(created["token"]), ca, url) == 200  # now cached by the proxy
        time.sleep(2.5)
        assert _status(proxy.url(created["token"]), ca, url) == 407
    finally:
        proxy.terminate()


@needs_bwrap
def test_sigterm_to_exec_reaches_the_contained_command_and_revokes(
    cli_home: CliHome, caps_file: Path, pki: TestPki, tmp_path: Path
) -> None:
    exec_process = subprocess.Popen(
        [
            *CAPGATE,
            "exec",
            "--caps",
            str(caps_file),
            "--role",
            "researcher",
            "--user",
            "alice",
            "--",
            "sh",
            "-c",
            'trap "echo got-term; exit 3" TERM; echo started; sleep 60 & wait',
        ],
        env=cli_home.env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert exec_process.stdout is not None
        assert exec_process.stdout.readline().strip() == "started"
        exec_process.send_signal(signal.SIGTERM)
        out, _ = exec_process.communicate(timeout=30)
    finally:
        if exec_process.poll() is None:
            exec_process.kill()
    assert "got-term" in out
    assert exec_process.returncode == 3
    assert all(w["revoked_at"] for w in _workspaces(cli_home))


def test_exec_refuses_a_role_the_caps_file_does_not_define(
    cli_home: CliHome, caps_file: Path, pki: TestPki, tmp_path: Path
) -> None:
    before = _workspaces(cli_home)
    done = subprocess.run(
        [*CAPGATE, "exec", "--caps", str(caps_file), "--role", "admin", "--user", "alice",
         "--", "true"],
        capture_output=True, text=True, env=cli_home.env(), cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "'admin' is not defined in the caps file (roles: researcher)" in done.stderr
    assert _workspaces(cli_home) == before


def test_exec_refuses_when_the_sandbox_cannot_be_set_up(
    cli_home: CliHome, caps_file: Path, pki: TestPki, tmp_path: Path
) -> None:
    # a bwrap that fails the way it does on a kernel without user namespaces
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "bwrap").write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n"
    )
    (fake / "bwrap").chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    done = _exec(
        cli_home, caps_file, pki, "sh", "-c", "touch ran",
        env={"PATH": f"{fake}:/usr/bin:/bin"}, cwd=work,
    )  # fmt: skip
    assert done.returncode == 1
    assert "error: containment could not be set up" in done.stderr
    assert "--no-contain" in done.stderr
    assert not (work / "ran").exists()
    assert all(w["revoked_at"] for w in _workspaces(cli_home))


COUNT_SIGINT = """
import signal, sys, time
count = 0
def on_int(number, frame):
    global count
    count += 1
signal.signal(signal.SIGINT, on_int)
print("ready", flush=True)
deadline = time.monotonic() + 4
while time.monotonic() < deadline:
    time.sleep(0.05)
print(count, flush=True)
"""


@needs_bwrap
def test_a_terminal_ctrl_c_reaches_the_contained_command_once(
    cli_home: CliHome, caps_file: Path, pki: TestPki, tmp_path: Path
) -> None:
    # a terminal sends SIGINT to its whole foreground process group: exec, bwrap, CMD
    exec_process = subprocess.Popen(
        [
            *CAPGATE,
            "exec",
            "--caps",
            str(caps_file),
            "--role",
            "researcher",
            "--user",
            "alice",
            "--",
            sys.executable,
            "-c",
            COUNT_SIGINT,
        ],
        env=cli_home.env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert exec_process.stdout is not None
        assert exec_process.stdout.readline().strip() == "ready"
        os.killpg(exec_process.pid, signal.SIGINT)
        out, _ = exec_process.communicate(timeout=60)
    finally:
        if exec_process.poll() is None:
            exec_process.kill()
    assert out.strip() == "1"
    assert exec_process.returncode == 0
