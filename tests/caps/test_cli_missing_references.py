"""`capgate caps check` warns about names the store does not hold; the file stays valid."""

from __future__ import annotations

import json

from click.testing import CliRunner

from capgate.proxy.cli.main import main

CAPS = """\
version: 1
capabilities:
  - name: github
    match: {hosts: [api.github.com]}
    transforms:
      - auth: {credential: gh, provider: github_pat}
      - header: {name: X-Tenant, action: set, value: 'secrets["tenant"]'}
  - name: search
    match: {hosts: [www.googleapis.com]}
    transforms:
      - auth: {credential: search, provider: google_search}
roles:
  r: {capabilities: [github, search]}
"""


def _check(runner, home, caps, *extra):
    return runner.invoke(main, ["--home", str(home), *extra, "caps", "check", str(caps), "--json"])


def test_missing_and_mismatched_references_are_warnings(tmp_path):
    runner = CliRunner()
    home, caps = tmp_path / "home", tmp_path / "caps.yaml"
    caps.write_text(CAPS)
    assert runner.invoke(main, ["--home", str(home), "init"]).exit_code == 0
    added = runner.invoke(
        main,
        ["--home", str(home), "cred", "add", "search", "--provider", "openai", "--kind", "api_key"],
        input="sk-test-value-123\n",
    )
    assert added.exit_code == 0, added.output

    result = _check(runner, home, caps)

    assert result.exit_code == 0
    warnings = json.loads(result.stdout)["warnings"]
    assert any("'gh'" in w and "does not exist" in w for w in warnings)
    assert any("'search'" in w and "openai" in w and "google_search" in w for w in warnings)
    assert any("secret 'tenant'" in w for w in warnings)


def test_complete_deployment_has_no_warnings(tmp_path):
    runner = CliRunner()
    home, caps = tmp_path / "home", tmp_path / "caps.yaml"
    caps.write_text(CAPS)
    runner.invoke(main, ["--home", str(home), "init"])
    for name, provider in (("gh", "github_pat"), ("search", "google_search")):
        kind = "query_api_key" if provider == "google_search" else "api_key"
        args = ["--home", str(home), "cred", "add", name, "--provider", provider, "--kind", kind]
        assert runner.invoke(main, args, input="value-0123456789\n").exit_code == 0
    runner.invoke(main, ["--home", str(home), "secret", "set", "tenant"], input="t-1\n")

    result = _check(runner, home, caps)

    assert result.exit_code == 0 and json.loads(result.stdout)["warnings"] == []


def test_references_are_checked_in_the_selected_org(tmp_path):
    runner = CliRunner()
    home, caps = tmp_path / "home", tmp_path / "caps.yaml"
    caps.write_text(CAPS)
    runner.invoke(main, ["--home", str(home), "init"])
    args = [
        "--home",
        str(home),
        "--org",
        "acme",
        "cred",
        "add",
        "gh",
        "--provider",
        "github_pat",
        "--kind",
        "api_key",
    ]
    assert runner.invoke(main, args, input="value-0123456789\n").exit_code == 0

    in_acme = json.loads(_check(runner, home, caps, "--org", "acme").stdout)["warnings"]
    in_default = json.loads(_check(runner, home, caps).stdout)["warnings"]

    assert not any("'gh'" in w for w in in_acme)
    assert any("'gh'" in w for w in in_default)


def test_uninitialised_home_gives_no_warnings(tmp_path):
    caps = tmp_path / "caps.yaml"
    caps.write_text(CAPS)
    result = _check(CliRunner(), tmp_path / "nowhere", caps)
    assert result.exit_code == 0 and json.loads(result.stdout)["warnings"] == []
