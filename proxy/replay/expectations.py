"""Comparing what a replay observed with what a fixture expects.

Expected values are rendered (placeholders → the fixture's test values) and compared with
what the addon actually did. What is shown is never a value: expected values are shown as
written, actual values with every known value masked back into its placeholder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from .fixtures import Check, Fixture
from .harness import Outcome
from .placeholders import TestValues

SHOW_MAX = 300  # characters of an actual body shown in a diff


@dataclass(frozen=True)
class Mismatch:
    path: str  # e.g. request.headers.Authorization, response.body.error.message
    expected: str
    actual: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.path}{where}\n    expected: {self.expected}\n    actual:   {self.actual}"

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "line": self.line,
            "expected": self.expected,
            "actual": self.actual,
        }


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()


def compare(fixture: Fixture, outcome: Outcome) -> list[Mismatch]:
    comparer = _Comparer(fixture.values, outcome)
    if len(outcome.decisions) != 1:
        comparer.out.append(
            Mismatch("policy_decision", "exactly one row", f"{len(outcome.decisions)} rows")
        )
    for check in fixture.checks:
        comparer.check(check)
    return comparer.out


class _Comparer:
    def __init__(self, values: TestValues, outcome: Outcome) -> None:
        self.values = values
        self.outcome = outcome
        self.row = outcome.decisions[-1] if outcome.decisions else None
        self.out: list[Mismatch] = []

    def show(self, value: Any) -> str:
        if value is ABSENT:
            return "(absent)"
        text = json.dumps(self.values.mask_value(value), ensure_ascii=False)
        return text if len(text) <= SHOW_MAX else text[:SHOW_MAX] + "…"

    def miss(self, check: Check, path: str, expected: Any, actual: Any) -> None:
        self.out.append(Mismatch(path, self.show(expected), self.show(actual), check.line))

    def check(self, check: Check) -> None:
        head, _, rest = check.path.partition(".")
        if head in ("request", "response") and check.mode != "sent":
            message = self.outcome.sent if head == "request" else self.outcome.response
            if message is None:  # a request never sent is reported once, by its `sent` check
                if head == "response":
                    self.out.append(
                        Mismatch(
                            check.path,
                            self.show(check.expected),
                            "(no response: the flow was killed)",
                            check.line,
                        )
                    )
                return
            self.check_message(check, message, rest)
        elif check.mode == "sent":
            if self.outcome.sent is None:
                actual = "killed" if self.outcome.killed else "answered by the proxy"
                self.out.append(Mismatch("request", "sent upstream", actual, check.line))
        else:
            self.equal(check, check.path, self.row_field(rest or head))

    def row_field(self, name: str) -> Any:
        if self.row is None:
            return ABSENT
        value = getattr(self.row, name)
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, Mapping):
            return dict(value)
        return value

    def equal(self, check: Check, path: str, actual: Any) -> None:
        expected = self.values.render_value(check.expected)
        if expected != actual:
            self.miss(check, path, check.expected, actual)

    def check_message(self, check: Check, message: Any, field: str) -> None:
        if field in ("method", "url", "status"):
            self.equal(check, check.path, getattr(message, field))
        elif field == "body":
            self.body(check, message.body)
        elif check.mode == "absent":
            name = field.partition(".")[2]
            if name in message.headers:
                self.miss(check, check.path, ABSENT, _header(message.headers, name))
        else:
            name = field.partition(".")[2]
            actual = _header(message.headers, name)
            expected = self.values.render_value(check.expected)
            if isinstance(expected, list) and actual is not ABSENT:
                actual = message.headers.get_all(name)
            if isinstance(expected, (int, float)):
                expected = str(expected)
            if expected != actual:
                self.miss(check, check.path, check.expected, actual)

    def body(self, check: Check, body: bytes) -> None:
        text = body.decode("utf-8", "replace")
        expected = check.expected
        if isinstance(expected, str):
            if self.values.render(expected) != text:
                self.miss(check, check.path, expected, text)
            return
        try:
            document = json.loads(text)
        except ValueError:
            self.miss(check, check.path, expected, f"(not JSON) {text}")
            return
        self.subset(check, check.path, expected, document)

    def subset(self, check: Check, path: str, expected: Any, actual: Any) -> None:
        """Every key of an expected mapping must match; lists match item by item."""
        if isinstance(expected, dict) and isinstance(actual, dict):
            for key, item in expected.items():
                sub = f"{path}.{key}"
                if key not in actual:
                    self.miss(check, sub, item, ABSENT)
                else:
                    self.subset(check, sub, item, actual[key])
        elif isinstance(expected, list) and isinstance(actual, list):
            if len(expected) != len(actual):
                self.miss(check, path, expected, actual)
                return
            for index, (item, got) in enumerate(zip(expected, actual, strict=True)):
                self.subset(check, f"{path}[{index}]", item, got)
        elif self.values.render_value(expected) != actual:
            self.miss(check, path, expected, actual)


def _header(headers: http.Headers, name: str) -> Any:
    values = headers.get_all(name)
    return ", ".join(values) if values else ABSENT
