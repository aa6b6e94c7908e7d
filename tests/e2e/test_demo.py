"""`make demo` runs the main job end to end; CI runs it through this test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"


def test_demo_runs_end_to_end_and_shows_no_stored_value():
    done = subprocess.run(
        [sys.executable, str(DEMO)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ok: calls came out authenticated" in done.stdout
    assert "Bearer [REDACTED:demo-github]" in done.stdout  # the echo the agent saw, scrubbed
    assert "deny     no_capability  DELETE" in done.stdout
