"""`--ttl DURATION` values: `Ns`, `Nm`, `Nh` or `Nd`, at least one second."""

from __future__ import annotations

import re

import click

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"([0-9]{1,9})([smhd])")


def parse_duration(text: str) -> int:
    """Seconds in `text`; ValueError naming the expected form otherwise."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"{text!r} is not a duration: expected Ns, Nm, Nh or Nd, e.g. 30m")
    seconds = int(found.group(1)) * _UNITS[found.group(2)]
    if seconds < 1:
        raise ValueError("a duration must be at least 1s")
    return seconds


class Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


ttl_option = click.option(
    "--ttl",
    "ttl_s",
    type=Duration(),
    default=None,
    help="The workspace's lease (Ns, Nm, Nh or Nd; default: no expiry).",
)
