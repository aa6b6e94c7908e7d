"""Red team, real processes: what a `capgate exec` child can see of capgate's values."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from .certs import TestPki
from .cli_harness import CliHome
from .test_cli_proxy import CANARIES, caps_file, cli_home, dead_port, template_home

# The home and caps fixtures of test_cli_proxy, used here under the same names.
FIXTURES = (caps_file, cli_home, dead_port, template_home)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_exec_child_environment_holds_no_value_and_its_token_dies_with_it(
    cli_home: CliHome, caps_file: Path, pki: TestPki
) -> None:
    done = cli_home.run(
        "exec", "--caps", str(caps_file), "--role", "researcher", "--user", "alice",
        "--upstream-ca", str(pki.ca_pem), "--", "env", "-0",
    )  # fmt: skip
    env = dict(item.split("=", 1) for item in done.stdout.split("\0") if "=" in item)
    blob = done.stdout + done.stderr
    key = (cli_home.root / "key").read_text().strip()
    for value in (*CANARIES, key):
        for form in (value, base64.b64encode(value.encode()).decode()):
            assert form not in blob
    proxy = env["HTTPS_PROXY"]
    assert proxy.startswith("http://agent:cg_") and proxy.endswith(tuple("0123456789"))
    assert {env[n] for n in ("HTTP_PROXY", "http_proxy", "https_proxy", "ALL_PROXY")} == {proxy}
    assert env["NO_PROXY"] == ""
    token = proxy.split("agent:", 1)[1].split("@", 1)[0]
    from capgate.broker.stores import Stores

    stores = Stores.open(cli_home.root)
    try:
        assert stores.workspaces.authenticate(token) is None  # revoked when CMD exited
    finally:
        stores.close()
