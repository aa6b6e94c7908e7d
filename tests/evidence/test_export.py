"""`capgate decisions export --format jsonl|ocsf [--since T]`, and the export verified by
`capgate decisions verify --file`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capgate.broker.decisions import DecisionWriter
from capgate.broker.home import Home
from capgate.broker.stores import Stores
from tests.broker.conftest import Cli
from tests.evidence.conftest import ORG, decision


@pytest.fixture
def cli(home: Home) -> Cli:
    stores = Stores.open(home)
    org_id = stores.control.org_id(ORG, create=True)
    writer = DecisionWriter(home.control_db)
    for i in range(30):
        writer.record(decision(i, org_id))
    writer.record(decision(99, None, None))
    writer.close()
    stores.close()
    return Cli(home.root, org=ORG)


def export(cli: Cli, tmp_path: Path, *args: str) -> Path:
    result = cli("decisions", "export", *args)
    assert result.exit_code == 0, result.output
    target = tmp_path / f"export-{len(list(tmp_path.iterdir()))}.jsonl"
    target.write_text(result.stdout)
    return target


def test_jsonl_export_round_trips_through_verify(cli, tmp_path):
    path = export(cli, tmp_path, "--format", "jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["seq"] for r in rows] == list(range(1, 31))
    assert all(len(r["chain"]) == 64 for r in rows)
    assert rows[0]["path"] == "/repos/0" and rows[0]["transforms_applied"] == ["auth:github"]
    result = cli("decisions", "verify", "--file", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "verified 30 rows"


def test_ocsf_export_is_http_activity_and_round_trips_through_verify(cli, tmp_path):
    path = export(cli, tmp_path, "--format", "ocsf")
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(events) == 30
    first = events[0]
    assert (first["class_uid"], first["category_uid"], first["type_uid"]) == (6002, 4, 600203)
    assert first["http_request"]["http_method"] == "GET"
    assert first["http_request"]["url"]["hostname"] == "api.github.com"
    assert first["http_request"]["url"]["path"] == "/repos/0"
    assert first["action"] == "Allowed" and first["metadata"]["sequence"] == 1
    assert first["metadata"]["tenant_name"] == ORG
    assert first["time"] == 1_700_000_000_000
    assert first["unmapped"]["chain"] == events[0]["unmapped"]["chain"]
    result = cli("decisions", "verify", "--file", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "verified 30 rows"


@pytest.mark.parametrize("fmt", ["jsonl", "ocsf"])
def test_an_edited_export_fails_verify(cli, tmp_path, fmt):
    path = export(cli, tmp_path, "--format", fmt)
    lines = path.read_text().splitlines()
    lines[11] = lines[11].replace("/repos/11", "/repos/eleven")
    path.write_text("\n".join(lines) + "\n")
    result = cli("decisions", "verify", "--file", str(path))
    assert result.exit_code == 1
    assert "row seq 12 was changed" in result.output


def test_an_export_missing_a_line_fails_verify(cli, tmp_path):
    path = export(cli, tmp_path)
    lines = path.read_text().splitlines()
    del lines[4]
    path.write_text("\n".join(lines) + "\n")
    result = cli("decisions", "verify", "--file", str(path))
    assert result.exit_code == 1
    assert "row seq 5 was removed" in result.output


def test_an_export_since_a_time_verifies_from_its_first_row(cli, tmp_path):
    path = export(cli, tmp_path, "--since", "2023-11-14T22:13:40Z")  # at = 1_700_000_020
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["seq"] for r in rows] == list(range(21, 31))
    result = cli("decisions", "verify", "--file", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "verified 10 rows"
    assert "starts at seq 21 in this file; its link to seq 20 cannot be checked" in result.stderr


def test_export_all_orgs_includes_requests_without_a_token(cli, tmp_path):
    path = export(cli, tmp_path, "--all-orgs")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 31 and rows[0]["org_id"] is None
    assert cli("decisions", "verify", "--file", str(path)).exit_code == 0


def test_export_of_an_org_without_rows_is_empty(home):
    result = Cli(home.root, org="nobody")("decisions", "export")
    assert result.exit_code == 0 and result.stdout == ""


def test_a_bad_since_is_a_usage_error(cli):
    result = cli("decisions", "export", "--since", "yesterday")
    assert result.exit_code == 2
    assert "--since" in result.output


def test_a_file_that_is_not_an_export_fails_verify(cli, tmp_path):
    path = tmp_path / "junk.jsonl"
    path.write_text('{"hello": 1}\n')
    result = cli("decisions", "verify", "--file", str(path))
    assert result.exit_code == 1
    assert "line 1: not a capgate decision row" in result.output


def test_the_decisions_listing_still_works_and_shows_chain_fields(cli):
    result = cli("decisions", "--json", "--limit", "2")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["seq"] for r in rows] == [29, 30] and all(r["chain"] for r in rows)


def test_verify_json_reports_each_chain_and_its_head(cli, tmp_path):
    result = cli("decisions", "verify", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["verified"] is True and document["rows"] == 30
    decisions = next(c for c in document["chains"] if c["chain"] == "decisions")
    assert (decisions["rows"], decisions["first_seq"], decisions["last_seq"]) == (30, 1, 30)
    exported = [json.loads(line) for line in export(cli, tmp_path).read_text().splitlines()]
    assert decisions["last_chain"] == exported[-1]["chain"]
    assert decisions["problem"] is None


def test_verify_json_names_the_problem_and_exits_1(cli, tmp_path):
    path = export(cli, tmp_path)
    lines = path.read_text().splitlines()
    lines[2], lines[3] = lines[3], lines[2]
    path.write_text("\n".join(lines) + "\n")
    result = cli("decisions", "verify", "--file", str(path), "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["verified"] is False
    assert document["chains"][0]["problem"] == "row seq 3 was reordered"
