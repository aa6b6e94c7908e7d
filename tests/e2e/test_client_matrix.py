"""The client matrix: the HTTP clients agents really use, each run with zero flags under a
contained `capgate exec`, against a real upstream on 127.0.0.1.

Each either works (the upstream sees capgate's credential, the client never holds it) or
fails closed (nothing reaches the upstream). A runtime the machine lacks is skipped with
the reason printed (`-ra`).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from capgate.proxy.contain.sandbox import NODE_UNDICI

from .certs import TestPki
from .cli_harness import CAPGATE, CliHome
from .git_upstream import GitUpstream, start_git_upstream
from .test_cli_proxy import GITHUB, template_home
from .upstream import Upstream

FIXTURES = (template_home,)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("bwrap") is None or not sys.platform.startswith("linux"),
        reason="the matrix runs under contained exec: needs Linux and bubblewrap",
    ),
]

GIT_TOKEN = "ghp_MatrixGitCanary_0a1b2c3d4e5f6a7b"

CAPS = """\
version: 1
capabilities:
  - name: api
    match: {{hosts: ["localhost:{tls}"], paths: ["/repos/**"]}}
    transforms:
      - auth: {{credential: github, provider: github_pat}}
  - name: git
    match: {{hosts: ["localhost:{git}"], methods: [GET, POST], paths: ["/**"]}}
    transforms:
      - auth: {{credential: gitcred, provider: github_git_https}}
roles:
  agent:
    capabilities: [api, git]
"""


@dataclass(frozen=True)
class Client:
    name: str
    needs: tuple[str, ...]  # executables on PATH or importable Python modules
    script: str  # sh; $URL is the upstream URL; prints "STATUS <code>" or "FAILED <why>"
    works: bool = True  # False: must fail closed


PY = sys.executable
CLIENTS = [
    Client("curl", ("curl",), 'curl -sS -o /dev/null -w "STATUS %{http_code}" "$URL"'),
    Client("wget", ("wget",), 'wget -q -O /dev/null "$URL" && echo "STATUS 200"'),
    Client(
        "python-urllib",
        (),
        f'{PY} -c "import urllib.request,sys;'
        ' print(\'STATUS\', urllib.request.urlopen(sys.argv[1], timeout=20).status)" "$URL"',
    ),
    Client(
        "python-requests",
        ("requests",),
        f"{PY} -c \"import requests,sys; print('STATUS', requests.get(sys.argv[1]).status_code)\""
        ' "$URL"',
    ),
    Client(
        "python-httpx",
        ("httpx",),
        f'{PY} -c "import httpx,sys; print(\'STATUS\', httpx.get(sys.argv[1]).status_code)" "$URL"',
    ),
    Client(
        "python-aiohttp-trust-env",
        ("aiohttp",),
        f'{PY} -c "{{AIOHTTP}}" "$URL" trust',
    ),
    Client(
        "python-aiohttp-default",  # no trust_env: goes direct, and cannot
        ("aiohttp",),
        f'{PY} -c "{{AIOHTTP}}" "$URL" direct',
        works=False,
    ),
    Client(
        "python-openai-sdk",
        ("openai",),
        f'{PY} -c "import openai,sys;'
        " c = openai.OpenAI(api_key='sk-dummy-not-a-key', base_url=sys.argv[1] + '/v1');"
        ' r = c.models.with_raw_response.list(); print(\'STATUS\', r.status_code)" "$BASE"',
    ),
    Client(
        "python-anthropic-sdk",
        ("anthropic",),
        f'{PY} -c "import anthropic,sys;'
        " c = anthropic.Anthropic(api_key='sk-ant-dummy', base_url=sys.argv[1]);"
        ' r = c.models.with_raw_response.list(); print(\'STATUS\', r.status_code)" "$BASE"',
    ),
    Client(
        "node-fetch",  # Node 20 ignores the proxy variables: capgate's preload wires undici
        ("node", "undici"),
        "node -e \"fetch(process.argv[1]).then(r => console.log('STATUS', r.status),"
        ' e => console.log(\'FAILED\', e.cause ? e.cause.code : e.message))" "$URL"',
    ),
    Client(
        "node-undici-env-proxy-agent",
        ("node", "undici"),
        'node -e "const u = require(process.argv[2]);'
        " u.request(process.argv[1], {dispatcher: new u.EnvHttpProxyAgent()})"
        ".then(r => console.log('STATUS', r.statusCode), e => console.log('FAILED', e.code))\""
        f' "$URL" {NODE_UNDICI}',
    ),
    Client(
        "node-https-get",  # ignores the proxy variables: direct, and cannot
        ("node",),
        "node -e \"require('https').get(process.argv[1], r => console.log('STATUS',"
        " r.statusCode)).on('error', e => console.log('FAILED', e.code))\" \"$URL\"",
        works=False,
    ),
]

AIOHTTP = textwrap.dedent(
    """
    import aiohttp, asyncio, sys
    async def main():
        async with aiohttp.ClientSession(trust_env=sys.argv[2] == 'trust') as s:
            try:
                async with s.get(sys.argv[1]) as r:
                    print('STATUS', r.status)
            except aiohttp.ClientError as e:
                print('FAILED', type(e).__name__)
    asyncio.run(main())
    """
).strip()


def _missing(needs: tuple[str, ...]) -> str | None:
    for need in needs:
        if need == "undici":
            if not NODE_UNDICI.is_dir():
                return "undici is not installed (make venv runs npm ci in proxy/contain/node)"
        elif need in ("curl", "wget", "node", "git"):
            if shutil.which(need) is None:
                return f"{need} is not installed"
        elif importlib.util.find_spec(need) is None:
            return f"Python package {need} is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def git_upstream(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitUpstream]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path_factory.mktemp("git-root")
    seed = root / "seed"
    subprocess.run(["git", "init", "-q", "-b", "main", str(seed)], check=True)
    (seed / "README").write_text("hello\n")
    git = ["git", "-C", str(seed), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "seed"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(seed), str(root / "repo.git")], check=True)
    upstream = start_git_upstream(
        root, "x-access-token", GIT_TOKEN, pki.server_cert_pem, pki.server_key_pem
    )
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def matrix_home(template_home: CliHome, tmp_path_factory: pytest.TempPathFactory) -> CliHome:
    root = tmp_path_factory.mktemp("matrix") / "home"
    shutil.copytree(template_home.root, root)
    home = CliHome(root, dict(template_home.extra_env))
    home.cli(
        "cred", "add", "gitcred", "--provider", "github_git_https", "--kind", "basic_auth",
        stdin=GIT_TOKEN,
    )  # fmt: skip
    return home


@pytest.fixture(scope="module")
def matrix_caps(
    tls_upstream: Upstream, git_upstream: GitUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("matrix-caps") / "caps.yaml"
    path.write_text(CAPS.format(tls=tls_upstream.port, git=git_upstream.port))
    return path


def _contained(
    home: CliHome, caps: Path, pki: TestPki, script: str, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *CAPGATE,
            "exec",
            "--caps",
            str(caps),
            "--role",
            "agent",
            "--user",
            "alice",
            "--upstream-ca",
            str(pki.ca_pem),
            "--",
            "sh",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        env={**home.env(), **env},
        cwd=cwd,
        timeout=120,
    )


@pytest.mark.parametrize("client", CLIENTS, ids=[c.name for c in CLIENTS])
def test_client_under_contained_exec(
    client: Client,
    matrix_home: CliHome,
    matrix_caps: Path,
    pki: TestPki,
    tls_upstream: Upstream,
    tmp_path: Path,
) -> None:
    missing = _missing(client.needs)
    if missing:
        pytest.skip(missing)
    base = tls_upstream.url("/repos/matrix", host="localhost")
    url = f"{base}/{client.name}"
    before = len(tls_upstream.log.items)
    done = _contained(
        matrix_home,
        matrix_caps,
        pki,
        client.script.replace("{AIOHTTP}", AIOHTTP.replace('"', '\\"')),
        tmp_path,
        {"URL": url, "BASE": base},
    )
    out = done.stdout.strip()
    assert GITHUB not in done.stdout + done.stderr
    reached = [i for i in tls_upstream.log.items[before:]]
    if client.works:
        assert out.splitlines()[-1:] == ["STATUS 200"], (out, done.stderr)
        assert reached, "the request did not reach the upstream"
        # the upstream saw capgate's credential, whatever the client sent
        assert reached[-1].header("Authorization") == [f"Bearer {GITHUB}"]
    else:
        assert "STATUS" not in out, out
        assert out.startswith("FAILED"), (out, done.stderr)
        assert reached == [], "a direct connection reached the upstream"


def test_git_clone_and_push_over_smart_http_with_basic(
    matrix_home: CliHome,
    matrix_caps: Path,
    pki: TestPki,
    git_upstream: GitUpstream,
    tmp_path: Path,
) -> None:
    script = textwrap.dedent(
        f"""
        set -e
        git clone -q {git_upstream.url("repo.git")} work
        cd work
        echo change > CHANGE
        git add CHANGE
        git -c user.name=agent -c user.email=agent@example.com commit -q -m change
        git push -q origin HEAD:main
        echo PUSHED
        """
    )
    done = _contained(matrix_home, matrix_caps, pki, script, tmp_path, {})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("PUSHED")
    log = subprocess.run(
        ["git", "--git-dir", str(git_upstream.root / "repo.git"), "log", "--format=%s", "main"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert log.stdout.splitlines()[0] == "change"
    assert git_upstream.authorizations and set(git_upstream.authorizations) == {
        git_upstream._server.expected  # type: ignore[attr-defined]
    }
    assert GIT_TOKEN not in done.stdout + done.stderr
    assert not list(tmp_path.rglob("*credential*"))
