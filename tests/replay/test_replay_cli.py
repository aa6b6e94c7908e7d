"""`capgate replay`: green fixtures pass, broken ones fail with a diff that names the field,
the expected and the actual value, and nothing in the output is ever a fixture value."""

from __future__ import annotations

import base64

from .conftest import CANARY_TOKEN, GOOD

CANARY_FORMS = (CANARY_TOKEN, base64.b64encode(CANARY_TOKEN.encode()).decode())


def assert_no_canary(output: str) -> None:
    for form in CANARY_FORMS:
        assert form not in output


def test_matching_fixture_passes(replay, write_fixture) -> None:
    result = replay(write_fixture(GOOD))

    assert result.exit_code == 0, result.output
    assert "1 passed, 0 failed" in result.output


def test_wrong_expected_header_fails_with_a_diff_naming_field_expected_and_actual(
    replay, write_fixture
) -> None:
    broken = GOOD.replace(
        "Authorization: Bearer {{credential:github}}", "Authorization: token {{credential:github}}"
    )

    result = replay(write_fixture(broken))

    assert result.exit_code == 1
    assert "FAIL" in result.output
    assert "request.headers.Authorization (line 17)" in result.output
    assert 'expected: "token {{credential:github}}"' in result.output
    assert 'actual:   "Bearer {{credential:github}}"' in result.output
    assert_no_canary(result.output)


def test_wrong_expected_decision_fails_with_a_diff(replay, write_fixture) -> None:
    result = replay(write_fixture(GOOD.replace("decision: allow", "decision: deny")))

    assert result.exit_code == 1
    assert "decision (line 13)" in result.output
    assert 'expected: "deny"' in result.output
    assert 'actual:   "allow"' in result.output


def test_json_report_lists_mismatches_per_fixture(replay, write_fixture) -> None:
    good = write_fixture(GOOD, "good.yaml")
    bad = write_fixture(
        GOOD.replace('{login: octocat, echo: "[R', '{login: hubot, echo: "[R'), "bad.yaml"
    )

    report = replay(good, bad, as_json=True)

    assert report.exit_code == 1
    doc = report.json()
    assert (doc["passed"], doc["failed"]) == (1, 1)
    assert [f["ok"] for f in doc["fixtures"]] == [True, False]
    (mismatch,) = doc["fixtures"][1]["mismatches"]
    assert mismatch["path"] == "response.body.login"
    assert (mismatch["expected"], mismatch["actual"]) == ('"hubot"', '"octocat"')
    assert_no_canary(report.output)


def test_failing_fixture_output_never_shows_a_fixture_value(replay, write_fixture) -> None:
    # The scrubbed echo is expected raw: the diff must show the placeholder, not the value.
    broken = GOOD.replace('echo: "[REDACTED:github]"', f'echo: "{CANARY_TOKEN}x"')
    broken = broken.replace("Bearer {{credential:github}}", f"Bearer {CANARY_TOKEN}-other")

    result = replay(write_fixture(broken))
    as_json = replay(write_fixture(broken, "again.yaml"), as_json=True)

    assert result.exit_code == 1
    assert "{{credential:github}}" in result.output
    assert_no_canary(result.output)
    assert_no_canary(as_json.output)


def test_yaml_syntax_error_points_at_file_and_line(replay, write_fixture) -> None:
    path = write_fixture(GOOD.replace("  method: GET\n", "  method: [GET\n"))

    result = replay(path)

    assert result.exit_code == 1
    assert f"{path}:6:" in result.output
    assert "invalid YAML" in result.output


def test_unknown_and_missing_keys_point_at_their_lines(replay, write_fixture) -> None:
    text = GOOD.replace("  decision: allow\n", "  decison: allow\n")
    path = write_fixture(text)

    result = replay(path)

    assert result.exit_code == 1
    assert f"{path}:13:3: unknown key 'decison' in expect" in result.output
    assert "expect: missing required key 'decision'" in result.output


def test_placeholder_naming_no_declared_value_is_a_fixture_error(replay, write_fixture) -> None:
    path = write_fixture(GOOD.replace("{{credential:github}}\n", "{{secret:nope}}\n"))

    result = replay(path)

    assert result.exit_code == 1
    assert f"{path}:17:" in result.output
    assert "placeholder {{secret:nope}} names no secret" in result.output


def test_unknown_role_is_a_fixture_error(replay, write_fixture) -> None:
    path = write_fixture(GOOD.replace("role: reader", "role: admin"))

    result = replay(path)

    assert result.exit_code == 1
    assert f"{path}:1:1: workspace.role: the caps file defines no role 'admin'" in result.output


def test_one_broken_fixture_does_not_stop_the_others(replay, write_fixture) -> None:
    bad = write_fixture("workspace: [", "bad.yaml")
    good = write_fixture(GOOD, "good.yaml")

    result = replay(bad, good)

    assert result.exit_code == 1
    assert "1 passed, 1 failed" in result.output


def test_missing_caps_option_is_a_usage_error(replay, write_fixture) -> None:
    from click.testing import CliRunner

    from capgate.proxy.cli.main import main

    result = CliRunner().invoke(main, ["replay", str(write_fixture(GOOD))])

    assert result.exit_code == 2


def test_invalid_caps_file_fails(replay, write_fixture, tmp_path) -> None:
    caps = tmp_path / "caps.yaml"
    caps.write_text("version: 1\ncapabilities: []\nroles: {reader: {capabilities: [nope]}}\n")

    result = replay(write_fixture(GOOD), caps=caps)

    assert result.exit_code == 1
