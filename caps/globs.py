"""Path globs of caps.yaml: `*` inside one segment, `**` across segments.

A glob is matched against the request path without its query string. A segment that is
exactly `**` stands for zero or more whole segments, so `/repos/**` matches `/repos`,
`/repos/` and `/repos/a/b`. `*` matches any run of characters except `/`, so `/user/*`
matches `/user/x` and `/user/` but not `/user/x/y`. Everything else is literal.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import unquote

_FORBIDDEN = {"?": "a query", "#": "a fragment"}


@lru_cache(maxsize=4096)
def compile_glob(glob: str) -> re.Pattern[str]:
    """The anchored regular expression for a path glob; ValueError says what is wrong."""
    _check_glob(glob)
    parts = ["^"]
    for segment in glob.split("/")[1:]:
        if segment == "**":
            parts.append("(?:/.*)?")
        else:
            parts.append("/" + "[^/]*".join(re.escape(piece) for piece in segment.split("*")))
    parts.append("$")
    return re.compile("".join(parts), re.DOTALL)


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
