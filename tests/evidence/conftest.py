"""Fixtures for the decision-log-as-evidence tests: an initialised home, decision rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from capgate.broker.home import Home, init_home
from capgate.broker.stores import Stores
from capgate.broker.types import PolicyDecision

ORG = "acme"


def decision(i: int, org_id: str | None, workspace_id: str | None = "ws_1") -> PolicyDecision:
    return PolicyDecision(
        at=1_700_000_000 + i,  # an int: the writer must hash the float the store returns
        org_id=org_id,
        workspace_id=workspace_id,
        capability="github-api",
        decision="allow",
        reason=None,
        method="GET",
        scheme="https",
        host="api.github.com",
        port=443,
        path=f"/repos/{i}",
        transforms_applied=("auth:github",),
        transforms_failed={"header:X-A": "cel_error"},
        auth_failures={"jira": "auth_unavailable"},
        upstream_status=200,
        duration_ms=1.5,
    )


@pytest.fixture
def home(tmp_path: Path) -> Home:
    root = tmp_path / "home"
    init_home(root)
    Stores.open(Home(root)).close()
    return Home(root)
