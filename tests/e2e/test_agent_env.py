"""`capgate env`, `capgate ca --bundle`, `capgate --version`, `capgate init --json`, through
the real CLI and a running `capgate proxy`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .certs import TestPki
from .cli_harness import CliHome, ProxyProcess, start_proxy_process
from .test_cli_proxy import GITHUB, caps_file, cli_home, dead_port, template_home
from .upstream import Upstream

FIXTURES = (caps_file, cli_home, dead_port, template_home)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PUBLIC_ROOT_MARK = "ISRG Root X1"  # a public root every certifi bundle holds


@pytest.fixture
def proxy_process(cli_home: CliHome, caps_file: Path, pki: TestPki, tmp_path: Path) -> ProxyProcess:
    proxy = start_proxy_process(cli_home, caps_file, pki.ca_pem, tmp_path / "logs")
    yield proxy  # type: ignore[misc]
    proxy.terminate()


def _env(home: CliHome, *args: str) -> subprocess.CompletedProcess[str]:
    return home.run("env", "--role", "researcher", "--user", "alice", *args, check=False)


def _fresh_shell(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`sh -c SCRIPT` with nothing inherited but PATH."""
    return subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
        cwd=cwd,
        timeout=60,
    )


def test_env_output_wires_a_fresh_shell_to_the_running_proxy(
    cli_home: CliHome, proxy_process: ProxyProcess, tls_upstream: Upstream, tmp_path: Path
) -> None:
    # given the lines `capgate env` prints, saved verbatim
    done = _env(cli_home, "--proxy", f"http://127.0.0.1:{proxy_process.port}", "--ttl", "1h")
    assert done.returncode == 0, done.stderr
    (tmp_path / "wiring.sh").write_text(done.stdout)
    # when a fresh shell evals them and runs curl and Python with zero flags
    url = tls_upstream.url("/repos/x?echo_headers=authorization", host="localhost")
    script = (
        'eval "$(cat wiring.sh)"; curl -sS --max-time 20 "$0"; echo;'
        f' {sys.executable} -c "import urllib.request,sys;'
        ' print(urllib.request.urlopen(sys.argv[1], timeout=20).status)" "$0";'
        ' curl -sS -o /dev/null -w "%{http_code}" --max-time 20 https://no-such-host.invalid/'
    )
    shell = _fresh_shell(script.replace('"$0"', f'"{url}"'), tmp_path)
    # then the upstream got the credential, the agent never did
    lines = shell.stdout.splitlines()
    assert ["Authorization", "Bearer [REDACTED:github]"] in json.loads(lines[0])["headers"]
    assert lines[1] == "200"
    assert tls_upstream.log.items[-1].header("Authorization") == [f"Bearer {GITHUB}"]
    # and a host outside the caps file is refused by capgate (not reached around it)
    assert lines[2] == "403" or "403" in shell.stderr
    assert GITHUB not in done.stdout + done.stderr + shell.stdout + shell.stderr


def test_env_sets_both_cases_and_the_trust_variables(cli_home: CliHome) -> None:
    done = _env(cli_home, "--shell", "json", "--proxy", "http://127.0.0.1:9999")
    assert done.returncode == 0, done.stderr
    variables = json.loads(done.stdout)
    proxy = variables["HTTPS_PROXY"]
    assert proxy.startswith("http://agent:cg_") and proxy.endswith("@127.0.0.1:9999")
    for name in ("HTTP_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        assert variables[name] == proxy
    bundle = Path(cli_home.run("ca", "--bundle").stdout.strip())
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"):
        assert variables[name] == str(bundle)
    assert variables["NODE_EXTRA_CA_CERTS"] == cli_home.run("ca").stdout.strip()
    assert variables["NO_PROXY"] == variables["no_proxy"] == ""
    assert "CAPGATE_HOME" not in variables
    workspace = json.loads(cli_home.cli("workspace", "list", "--json"))[-1]
    assert variables["CAPGATE_WORKSPACE"] == workspace["id"] and workspace["role"] == "researcher"


def test_env_refuses_a_role_the_caps_file_lacks_and_a_proxy_url_with_credentials(
    cli_home: CliHome, caps_file: Path
) -> None:
    before = cli_home.cli("workspace", "list", "--json")
    bad_role = cli_home.run(
        "env", "--role", "admin", "--user", "alice", "--caps", str(caps_file), check=False
    )
    assert bad_role.returncode == 2 and "'admin' is not defined" in bad_role.stderr
    bad_url = _env(cli_home, "--proxy", "http://u:p@127.0.0.1:1")
    assert bad_url.returncode == 2 and "--proxy" in bad_url.stderr
    assert bad_role.stdout == bad_url.stdout == ""
    assert cli_home.cli("workspace", "list", "--json") == before


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_env_fish_lines_are_read_by_fish(cli_home: CliHome) -> None:
    done = _env(cli_home, "--shell", "fish")
    shell = subprocess.run(
        ["fish", "-c", done.stdout + "\necho $HTTPS_PROXY"], capture_output=True, text=True
    )
    assert shell.stdout.strip().startswith("http://agent:cg_")


def test_ca_bundle_holds_the_public_roots_and_capgates_ca(cli_home: CliHome) -> None:
    bundle = Path(cli_home.run("ca", "--bundle").stdout.strip())
    ca = Path(cli_home.run("ca").stdout.strip())
    text = bundle.read_text()
    assert ca.read_text().strip() in text
    assert PUBLIC_ROOT_MARK in text or text.count("BEGIN CERTIFICATE") > 100
    assert "PRIVATE KEY" not in text


def test_version_and_init_json(tmp_path: Path) -> None:
    from importlib.metadata import version

    home = CliHome(tmp_path / "fresh")
    assert home.run("--version").stdout.strip() == f"capgate {version('capgate')}"
    document = json.loads(home.run("init", "--json").stdout)
    assert document["home"] == str(home.root)
    assert document["key_file"] == str(home.root / "key") and Path(document["key_file"]).exists()
    assert document["created_key"] is True
