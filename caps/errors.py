"""The error values of caps/: load problems with positions, and body-edit failures."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a caps.yaml file, at a 1-based line and column."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class CapsError(Exception):
    """A caps.yaml file could not be loaded; `.problems` lists every problem found.

    This is the only exception the loader lets escape.
    """

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems: tuple[Problem, ...] = tuple(sorted(set(problems)))
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in caps file"
        super().__init__("\n".join([head, *(str(p) for p in self.problems)]))


class BodyEditError(Exception):
    """A JSON-pointer edit could not be applied; `.reason` is a short code.

    Codes: `body_path_not_found`, `body_not_container`, `body_index_invalid`,
    `body_not_array`, `body_root_remove`. The message never holds document content.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
