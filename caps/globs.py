"""Path globs of caps.yaml: `*` inside one segment, `**` across segments.

A glob is matched against the request path without its query string. A segment that is
exactly `**` stands for zero or more whole segments, so `/repos/**` matches `/repos`,
`/repos/` and `/repos/a/b`. `*` matches any run of characters except `/`, so `/user/*`
matches `/user/x` and `/user/` but not `/user/x/y`. Everything else is literal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

_FORBIDDEN = {"?": "a query", "#": "a fragment"}


class Glob:
    """A compiled path glob, matched in time linear in the path's length.

    A regular expression for `/a*b*c` backtracks (Python's `re` has no linear-time
    engine): one 150 KB path segment held the single event loop for seconds. Here the
    glob's segments are run as a set of states over the path's segments (`**` stays or
    moves on, so there is no backtracking across segments), and inside a segment the
    `*`-separated pieces are found left to right with `str.find`, each once: greedy
    leftmost placement is exact for globs whose only wildcard is `*`.
    """

    __slots__ = ("_base", "_literal", "_segments", "_subtree", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._segments: tuple[str | tuple[str, ...], ...] = tuple(
            segment if segment == "**" else tuple(segment.split("*"))
            for segment in text.split("/")[1:]
        )
        # Fast paths for the common shapes, exact by construction: a glob without `*`
        # matches only itself; `/a/b/**` (no other `*`) matches `/a/b` and what is under
        # it. Any other glob must at least start with its segments before the first `*`.
        self._literal = "*" not in text
        head, _, rest = text.partition("*")
        self._base = head.rpartition("/")[0]  # the whole segments before the first `*`
        self._subtree = rest == "*" and head.endswith("/")

    def __repr__(self) -> str:
        return f"Glob({self.text!r})"

    def match(self, path: str) -> bool:
        if self._literal:
            return path == self.text
        base = self._base
        if not path.startswith(base) or (len(path) > len(base) and path[len(base)] != "/"):
            return path == "" and self._segments == ("**",)
        if self._subtree:
            return path.startswith("/") or not base
        return self._match_segments(path)

    def _match_segments(self, path: str) -> bool:
        if not path.startswith("/"):
            return path == "" and self._segments == ("**",)
        segments = self._segments
        count = len(segments)
        states = self._closure({0})
        for part in path.split("/")[1:]:
            moved: set[int] = set()
            for index in states:
                if index == count:
                    continue
                glob = segments[index]
                if glob == "**":
                    moved.add(index)
                elif _segment_matches(glob, part):  # type: ignore[arg-type]
                    moved.add(index + 1)
            if not moved:
                return False
            states = self._closure(moved)
        return count in states

    def _closure(self, states: set[int]) -> set[int]:
        """`**` matches zero segments too: a state before one also stands after it."""
        todo = list(states)
        while todo:
            index = todo.pop()
            starred = index < len(self._segments) and self._segments[index] == "**"
            if starred and index + 1 not in states:
                states.add(index + 1)
                todo.append(index + 1)
        return states


def _segment_matches(pieces: tuple[str, ...], segment: str) -> bool:
    """Whether `segment` (no `/`) matches a segment glob split at its `*`s."""
    if len(pieces) == 1:
        return segment == pieces[0]
    first, last = pieces[0], pieces[-1]
    if len(segment) < len(first) + len(last):
        return False
    if not (segment.startswith(first) and segment.endswith(last)):
        return False
    position, end = len(first), len(segment) - len(last)
    for piece in pieces[1:-1]:
        found = segment.find(piece, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return True


@lru_cache(maxsize=4096)
def compile_glob(glob: str) -> Glob:
    """The compiled path glob; ValueError says what is wrong."""
    _check_glob(glob)
    return Glob(glob)


def _check_glob(glob: str) -> None:
    if not glob.startswith("/"):
        raise ValueError(f"bad path glob {glob!r}: a path glob starts with '/'")
    for char, what in _FORBIDDEN.items():
        if char in glob:
            raise ValueError(
                f"bad path glob {glob!r}: {char!r} is not allowed (paths are matched "
                f"without {what})"
            )
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in glob):
        raise ValueError(f"bad path glob {glob!r}: whitespace and control characters")
    for segment in glob.split("/"):
        if "**" in segment and segment != "**":
            raise ValueError(f"bad path glob {glob!r}: '**' must be a whole path segment")


def has_dot_segment(path: str) -> bool:
    """Whether a path holds a `.` or `..` segment, also percent-encoded, with `\\` or
    with `;params`.

    Servers resolve these after routing, so `/repos/../admin` would escape a glob on
    `/repos/**`; the matcher therefore lets such a path match only capabilities that do
    not restrict the path.
    """
    if "." not in path and "%" not in path:
        return False
    decoded = unquote(unquote(path)).replace("\\", "/")
    # `..;x` is `..` to servers that drop path parameters (Tomcat, Spring, Jetty).
    return any(segment.partition(";")[0] in (".", "..") for segment in decoded.split("/"))


_ENCODED_SLASH = re.compile(r"%(?:2f|5c)", re.IGNORECASE)


def decode_slashes(path: str) -> str:
    """The path with percent-encoded slashes and backslashes as `/`."""
    return _ENCODED_SLASH.sub("/", path) if "%" in path else path


@dataclass(frozen=True, slots=True)
class PathFacts:
    """What every capability's path check needs to know about one path, found once."""

    dotted: bool  # holds a `.`/`..` segment (also encoded): only path-free capabilities
    slashed: str  # the path with %2F / %5C decoded, as an upstream may route it

    @classmethod
    def of(cls, path: str) -> PathFacts:
        return cls(has_dot_segment(path), decode_slashes(path))
