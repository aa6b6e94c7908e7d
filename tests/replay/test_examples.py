"""Every example's fixtures pass under `capgate replay`, run as operators run it in CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.parent for p in (ROOT / "examples").glob("*/caps.yaml"))


def test_every_example_has_fixtures() -> None:
    assert EXAMPLES, "no examples found"
    for example in EXAMPLES:
        assert len(list((example / "fixtures").glob("*.yaml"))) >= 2, example.name


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_fixtures_replay_green(example: Path) -> None:
    fixtures = sorted(str(p) for p in (example / "fixtures").glob("*.yaml"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "capgate.proxy",
            "replay",
            *fixtures,
            "--caps",
            str(example / "caps.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(fixtures)} passed, 0 failed" in result.stdout
