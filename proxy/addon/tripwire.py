"""The tripwire: an agent's request that carries a value it should never have seen.

The patterns are the raw and base64 forms of every credential and secret the workspace
can use (`Activation.leak_patterns`). A hit names the pattern's label, never its value.
URLs are checked raw and percent-decoded; `Basic` header values are also checked decoded,
since a value can hide inside `base64(user:value)`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Callable, Iterable
from urllib.parse import unquote, unquote_plus

from capgate.broker.types import MIN_TRIPWIRE_LENGTH, LeakPattern

from .scrub import compile_literals, stream_replacer

_BASIC = re.compile(r"^\s*basic\s+(\S+)\s*$", re.IGNORECASE)


class Tripwire:
    """Finds the first leaked value in a request; `find*` return the pattern's label."""

    def __init__(self, patterns: Iterable[LeakPattern]) -> None:
        labels: dict[bytes, str] = {}
        for pattern in patterns:
            if len(pattern.value) >= MIN_TRIPWIRE_LENGTH:
                labels.setdefault(pattern.value, pattern.label)
        self._labels = labels
        self._regex, self.max_len, self._prefixes = compile_literals(labels)

    def __bool__(self) -> bool:
        return self._regex is not None

    def find(self, data: bytes) -> str | None:
        if self._regex is None or not data:
            return None
        match = self._regex.search(data)
        return self._labels[match.group(0)] if match else None

    def _find_text(self, text: str) -> str | None:
        return self.find(text.encode("utf-8", "surrogateescape"))

    def find_in_head(
        self, host: str, target: str, header_fields: Iterable[tuple[bytes, bytes]]
    ) -> str | None:
        """Host, request target and headers (raw name/value bytes) in one pass.

        Everything is searched as one blob, then once percent-decoded (both URL forms),
        then `Basic` values decoded: a few searches per request instead of several per
        header. A pattern spanning two joined parts only makes the check stricter.
        """
        fields = list(header_fields)
        blob = b"\n".join(
            [host.encode("utf-8", "surrogateescape"), target.encode("utf-8", "surrogateescape")]
            + [name + b": " + value for name, value in fields]
        )
        if label := self.find(blob):
            return label
        if b"%" in blob or b"+" in blob:
            text = blob.decode("utf-8", "surrogateescape")
            if label := self._find_text(unquote(text)) or self._find_text(unquote_plus(text)):
                return label
        for _, value in fields:
            if value[:6].lower() == b"basic " and (label := self._find_basic(value)):
                return label
        return None

    def _find_basic(self, value: bytes) -> str | None:
        basic = _BASIC.match(value.decode("latin-1"))
        if basic is None:
            return None
        try:
            decoded = base64.b64decode(basic.group(1) + "==", validate=False)
        except (binascii.Error, ValueError):
            return None
        return self.find(decoded)

    def find_in_body(self, body: bytes) -> str | None:
        if label := self.find(body):
            return label
        if b"%" in body or b"+" in body:  # form-encoded bodies
            return self._find_text(unquote_plus(body.decode("utf-8", "surrogateescape")))
        return None

    def stream(self, on_hit: Callable[[str], None]) -> Callable[[bytes], bytes]:
        """A chunk function for a streamed request body: reports the first hit, and never
        forwards matched bytes (they are overwritten with `*`, keeping the length)."""
        hit = False

        def mask(match: re.Match[bytes]) -> bytes:
            nonlocal hit
            if not hit:
                hit = True
                on_hit(self._labels[match.group(0)])
            # Same length: a streamed body may be framed by Content-Length.
            return b"*" * (match.end() - match.start())

        return stream_replacer(self._regex, self._prefixes, self.max_len, mask)


@functools.lru_cache(maxsize=256)
def tripwire_for(patterns: tuple[LeakPattern, ...]) -> Tripwire:
    """A compiled Tripwire per activation's pattern set (cleared with `scrubber_for`)."""
    return Tripwire(patterns)
