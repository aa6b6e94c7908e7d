"""Smaller CLI and proxy edges, through real processes: a port in use, `decisions --follow
--limit 0`, upstream failures answered as capgate's JSON, an SSE reader closing early."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .cli_harness import CAPGATE, CliHome, ProxyProcess, curl
from .test_cli_proxy import caps_file, cli_home, dead_port, proxy_process, template_home
from .upstream import Upstream

FIXTURES = (caps_file, cli_home, dead_port, proxy_process, template_home)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_proxy_on_a_port_in_use_exits_1_naming_it(cli_home: CliHome, caps_file: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = cli_home.run(
            "proxy", "--caps", str(caps_file), "--listen", f"127.0.0.1:{port}",
            check=False, timeout=30,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"error: 127.0.0.1:{port} is in use"


def test_decisions_follow_with_limit_0_prints_only_new_rows(
    cli_home: CliHome, proxy_process: ProxyProcess, tls_upstream: Upstream
) -> None:
    _, token = cli_home.workspace("researcher")
    ca = Path(cli_home.cli("ca").strip())
    for path in ("/repos/old-1", "/repos/old-2"):
        assert curl(proxy_process.url(token), ca, tls_upstream.url(path, "localhost"))[0] == 200
    cli_home.decisions(at_least=2)
    follower = subprocess.Popen(
        [*CAPGATE, "decisions", "--json", "--follow", "--limit", "0"],
        env=cli_home.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # When the follower has read its starting point is unknown: keep making new
        # requests until it prints one. The first line must be new, not history.
        assert follower.stdout is not None
        deadline = time.monotonic() + 90
        line = ""
        for n in range(1000):
            assert time.monotonic() < deadline, "the follower printed nothing"
            url = tls_upstream.url(f"/repos/new-{n}", "localhost")
            assert curl(proxy_process.url(token), ca, url)[0] == 200
            ready, _, _ = select.select([follower.stdout], [], [], 2.0)
            if ready:
                line = follower.stdout.readline()
                break
        assert json.loads(line)["path"].startswith("/repos/new-")
    finally:
        follower.terminate()
        follower.wait(timeout=10)


def test_decisions_limit_must_not_be_negative(cli_home: CliHome) -> None:
    done = cli_home.run("decisions", "--limit", "-1", check=False)
    assert done.returncode == 2


def test_unreachable_upstream_is_answered_as_capgate_json_with_the_cause_on_the_row(
    cli_home: CliHome, proxy_process: ProxyProcess, dead_port: int
) -> None:
    _, token = cli_home.workspace("researcher")
    ca = Path(cli_home.cli("ca").strip())
    for flags in (("--http1.1",), ("--http2",)):
        status, body = curl(
            proxy_process.url(token), ca, f"https://localhost:{dead_port}/x", *flags
        )
        assert status == 502, body
        document = json.loads(body.strip().splitlines()[0])
        assert document["reason"] == "upstream_connect_refused", flags
        assert document["cause"] == "connect_refused"
        assert "mitmproxy" not in body.lower() and "<html" not in body.lower()
    rows = [r for r in cli_home.decisions(at_least=2) if r["path"] == "/x"]
    assert [r["reason"] for r in rows] == ["upstream_connect_refused"] * 2
    assert {r["decision"] for r in rows} == {"allow"}


def test_reader_closing_a_stream_early_is_not_an_upstream_error(
    cli_home: CliHome, proxy_process: ProxyProcess, tls_upstream: Upstream
) -> None:
    _, token = cli_home.workspace("researcher")
    ca = Path(cli_home.cli("ca").strip())
    url = tls_upstream.url("/sse?events=20&gap_ms=200", "localhost")
    # curl reads the first event; `head` exits, and curl's next write closes the stream
    script = 'curl -sS -N --http1.1 --proxy "$0" --cacert "$1" "$2" | head -c 20 >/dev/null'
    subprocess.run(["sh", "-c", script, proxy_process.url(token), str(ca), url], timeout=60)
    deadline = time.monotonic() + 15
    while True:
        rows = [r for r in cli_home.decisions() if r["path"] == "/sse"]
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows, "no row for the stream"
    assert rows[-1]["reason"] == "client_closed"
    assert rows[-1]["upstream_status"] == 200
