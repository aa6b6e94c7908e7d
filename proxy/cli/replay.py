"""`capgate replay FIXTURE... --caps CAPS.yaml [--json]`: fixtures through the real addon.

Exit codes: 0 every fixture passed, 1 a fixture failed, could not be loaded, or the caps
file is invalid, 2 usage. The output never holds a credential or secret value: actual
values are masked back into their placeholders before they are shown.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click

from capgate.caps import CapsConfig, CapsError, Problem, load_caps

from ..replay.expectations import Mismatch, compare
from ..replay.fixtures import FixtureError, load_fixture
from ..replay.harness import Harness


@dataclass(frozen=True)
class FixtureResult:
    file: str
    mismatches: tuple[Mismatch, ...] = ()
    errors: tuple[str, ...] = ()  # the fixture could not be loaded or run
    description: str = ""

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.errors

    def as_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "ok": self.ok,
            "errors": list(self.errors),
            "mismatches": [m.as_json() for m in self.mismatches],
        }


@dataclass
class Report:
    results: list[FixtureResult] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.results)

    def as_json(self) -> dict[str, object]:
        return {
            "fixtures": [r.as_json() for r in self.results],
            "passed": len(self.results) - self.failed,
            "failed": self.failed,
        }


async def replay_files(paths: Sequence[Path], caps_path: Path, config: CapsConfig) -> Report:
    """Load and run each fixture; one fixture's failure never stops the others."""
    harness = Harness(caps_path)
    report = Report()
    for path in paths:
        report.results.append(await _replay_one(harness, path, config))
    return report


async def _replay_one(harness: Harness, path: Path, config: CapsConfig) -> FixtureResult:
    try:
        fixture = load_fixture(path)
    except FixtureError as exc:
        return FixtureResult(str(path), errors=tuple(str(p) for p in exc.problems))
    if fixture.workspace.role not in config.roles:
        problem = Problem(
            str(path),
            fixture.workspace.line,
            1,
            f"workspace.role: the caps file defines no role '{fixture.workspace.role}'",
        )
        return FixtureResult(str(path), errors=(str(problem),))
    try:
        outcome = await harness.run(fixture)
    except Exception as exc:  # an addon bug: report it, masked, and go on
        message = fixture.values.mask(f"{type(exc).__name__}: {exc}")
        return FixtureResult(str(path), errors=(f"{path}: replay raised {message}",))
    return FixtureResult(
        str(path), tuple(compare(fixture, outcome)), description=fixture.description
    )


def _print_text(report: Report) -> None:
    for result in report.results:
        click.echo(f"{'PASS' if result.ok else 'FAIL'} {result.file}")
        for error in result.errors:
            click.echo(f"  {error}")
        for mismatch in result.mismatches:
            click.echo("  " + str(mismatch).replace("\n", "\n  "))
    passed = len(report.results) - report.failed
    click.echo(f"{passed} passed, {report.failed} failed")


def _load_caps_or_exit(caps_path: Path, as_json: bool) -> CapsConfig:
    try:
        return load_caps(caps_path)
    except CapsError as exc:
        problems = [str(p) for p in exc.problems]
        if as_json:
            click.echo(
                json.dumps({"fixtures": [], "passed": 0, "failed": 0, "caps_errors": problems})
            )
        else:
            for problem in problems:
                click.echo(problem, err=True)
            click.echo(f"error: {caps_path} is not a valid caps file", err=True)
        raise click.exceptions.Exit(1) from None


@click.command("replay")
@click.argument(
    "fixtures",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--caps",
    "caps_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The caps.yaml file the fixtures are checked against.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
def replay_command(fixtures: tuple[Path, ...], caps_path: Path, as_json: bool) -> None:
    """Run recorded requests through the addon offline and diff them against expectations.

    \b
    Example:
      capgate replay examples/github/fixtures/*.yaml --caps examples/github/caps.yaml
    """
    config = _load_caps_or_exit(caps_path, as_json)
    # Tripwire warnings name labels only; replay reports through its own output instead.
    logging.getLogger("capgate").setLevel(logging.ERROR)
    report = asyncio.run(replay_files(fixtures, caps_path, config))
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
    else:
        _print_text(report)
    if report.failed:
        raise click.exceptions.Exit(1)


def register(main: click.Group) -> None:
    main.add_command(replay_command)
