"""Response scrubbing: injected values echoed back by an upstream become `[REDACTED:<name>]`.

`Scrubber` replaces a fixed set of byte patterns in one buffer (`scrub`) or in a stream of
chunks (`stream`): between chunks it keeps back the last `len(longest pattern) - 1` bytes,
so a value split across two chunks is still caught. `StreamDecoder` undoes a
Content-Encoding incrementally so that compressed streams can be scrubbed too.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Callable, Iterable
from typing import Protocol

import brotli
import zstandard

from capgate.broker.types import LeakPattern


def marker(label: str) -> bytes:
    """`[REDACTED:<name>]` for a pattern label such as `credential:github` or `github`."""
    kind, sep, name = label.partition(":")
    if sep and kind in ("credential", "secret"):
        label = name
    return b"[REDACTED:" + label.encode("utf-8", "replace") + b"]"


def proper_prefixes(values: Iterable[bytes]) -> frozenset[bytes]:
    """Every non-empty proper prefix of every value."""
    return frozenset(v[:i] for v in values for i in range(1, len(v)))


def hold_from(data: bytes, prefixes: frozenset[bytes], keep: int) -> int:
    """Where the bytes start that must wait for the next chunk: the longest suffix of
    `data` that could still grow into a pattern. Nothing else is held back, so a stream
    whose chunks end cleanly (SSE events) is passed on without delay."""
    for start in range(max(len(data) - keep, 0), len(data)):
        if data[start:] in prefixes:
            return start
    return len(data)


def compile_literals(
    values: Iterable[bytes],
) -> tuple[re.Pattern[bytes] | None, int, frozenset[bytes]]:
    """One regex matching any of `values` (longest first, so the longest wins at a
    position), the longest length, and every proper prefix (for chunk carry-over)."""
    ordered = sorted(set(values), key=len, reverse=True)
    regex = re.compile(b"|".join(re.escape(v) for v in ordered)) if ordered else None
    return regex, max(map(len, ordered), default=0), proper_prefixes(ordered)


class Scrubber:
    """Replaces every pattern's bytes with its marker; longest pattern wins at a position."""

    def __init__(self, patterns: Iterable[LeakPattern]) -> None:
        by_value: dict[bytes, bytes] = {}
        for pattern in patterns:
            if pattern.value:
                by_value.setdefault(pattern.value, marker(pattern.label))
        self._markers = by_value
        self._regex, self.max_len, self._prefixes = compile_literals(by_value)

    def __bool__(self) -> bool:
        return self._regex is not None

    def scrub(self, data: bytes) -> bytes:
        if self._regex is None or not data:
            return data
        return self._regex.sub(lambda m: self._markers[m.group(0)], data)

    def scrub_text(self, text: str) -> str:
        if self._regex is None:
            return text
        return self.scrub(text.encode("utf-8", "surrogateescape")).decode(
            "utf-8", "surrogateescape"
        )

    def stream(self) -> Callable[[bytes], bytes]:
        """A chunk function for mitmproxy's `stream`; called with b"" at the end of the body."""
        return stream_replacer(
            self._regex, self._prefixes, self.max_len, lambda m: self._markers[m.group(0)]
        )


def stream_replacer(
    regex: re.Pattern[bytes] | None,
    prefixes: frozenset[bytes],
    max_len: int,
    replace: Callable[[re.Match[bytes]], bytes],
) -> Callable[[bytes], bytes]:
    """Replace every match of `regex` in a body that arrives in chunks (b"" ends it).

    At most `max_len - 1` bytes are carried over between chunks, and only when they could
    be the start of a pattern, so a value split across two chunks is still found.
    """
    pending = b""
    keep = max(max_len - 1, 0)

    def process(chunk: bytes) -> bytes:
        nonlocal pending
        if regex is None:
            return chunk
        data = pending + chunk
        cut = hold_from(data, prefixes, keep) if chunk else len(data)
        if cut <= 0:
            pending = data
            return b""
        out: list[bytes] = []
        position = 0
        for match in regex.finditer(data):
            # A match starting before `cut` had every candidate fully in view.
            if match.start() >= cut:
                break
            out.append(data[position : match.start()])
            out.append(replace(match))
            position = match.end()
        emit_to = max(cut, position)
        out.append(data[position:emit_to])
        pending = data[emit_to:]
        return b"".join(out)

    return process


class _Decompressor(Protocol):
    def decompress(self, data: bytes) -> bytes: ...


def _gzip() -> _Decompressor:
    return zlib.decompressobj(16 + zlib.MAX_WBITS)


class _Deflate:
    """Deflate as sent in practice: zlib-wrapped, or raw when the header is missing."""

    def __init__(self) -> None:
        self._inner: object | None = None
        self._head = b""

    def decompress(self, data: bytes) -> bytes:
        if self._inner is None:
            self._head += data
            if len(self._head) < 2 and data:
                return b""
            wbits = zlib.MAX_WBITS if (self._head[:1] == b"\x78") else -zlib.MAX_WBITS
            self._inner = zlib.decompressobj(wbits)
            data, self._head = self._head, b""
        return self._inner.decompress(data)  # type: ignore[attr-defined]


class _Brotli:
    def __init__(self) -> None:
        self._inner = brotli.Decompressor()

    def decompress(self, data: bytes) -> bytes:
        return self._inner.process(data)


def _decoder_for(encoding: str) -> _Decompressor | None:
    if encoding in ("gzip", "x-gzip"):
        return _gzip()
    if encoding == "deflate":
        return _Deflate()
    if encoding == "br":
        return _Brotli()
    if encoding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj()
    return None


def can_decode(encoding: str) -> bool:
    """Whether `StreamDecoder` handles this Content-Encoding (identity counts)."""
    encoding = encoding.strip().lower()
    return encoding in ("", "identity") or _decoder_for(encoding) is not None


class StreamDecoder:
    """Incremental decoding of one Content-Encoding; raises ValueError on corrupt data."""

    def __init__(self, encoding: str) -> None:
        encoding = encoding.strip().lower()
        self._decoder = None if encoding in ("", "identity") else _decoder_for(encoding)
        if encoding not in ("", "identity") and self._decoder is None:
            raise ValueError("unsupported content encoding")

    def decode(self, chunk: bytes) -> bytes:
        if self._decoder is None or not chunk:
            return chunk
        try:
            return self._decoder.decompress(chunk)
        except Exception as exc:  # zlib.error, brotli.error, zstd.ZstdError
            raise ValueError("corrupt compressed stream") from exc


@functools.lru_cache(maxsize=256)
def scrubber_for(patterns: tuple[LeakPattern, ...]) -> Scrubber:
    """A compiled Scrubber per distinct pattern set: the set changes only when the
    activation or the matched capability does, not per request. `Sessions` clears this
    cache whenever the broker's generation moves, so no deleted value lingers in it."""
    return Scrubber(patterns)


def for_mitmproxy(process: Callable[[bytes], bytes]) -> Callable[[bytes], list[bytes]]:
    """Adapt a chunk function to mitmproxy's `stream`: an empty chunk on the wire ends a
    chunked body, so "nothing yet" must be an empty list, never b""."""

    def stream(chunk: bytes) -> list[bytes]:
        out = process(chunk)
        return [out] if out else []

    return stream


def scrubbing_stream(scrubber: Scrubber, encoding: str = "") -> Callable[[bytes], bytes]:
    """Decode (when `encoding` is set) and scrub a streamed body, chunk by chunk."""
    decoder = StreamDecoder(encoding)
    scrub = scrubber.stream()
    broken = False

    def process(chunk: bytes) -> bytes:
        nonlocal broken
        if broken:
            return b""
        if not chunk:
            return scrub(b"")
        try:
            decoded = decoder.decode(chunk)
        except ValueError:
            # Never pass undecodable bytes on unscrubbed: the body ends here instead.
            broken = True
            return scrub(b"")
        return scrub(decoded) if decoded else b""

    return process
