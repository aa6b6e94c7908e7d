"""Response scrubbing: values echoed back by an upstream become `[REDACTED:<name>]`, in
every standard encoding an upstream would echo them in (`echo_forms`).

`Scrubber` replaces a fixed set of byte patterns in one buffer (`scrub`) or in a stream of
chunks (`stream`): between chunks it keeps back the last `len(longest pattern) - 1` bytes,
so a value split across two chunks is still caught. `StreamDecoder` undoes a
Content-Encoding incrementally so that compressed streams can be scrubbed too.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import zlib
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from urllib.parse import quote_from_bytes

import brotli
import zstandard

from capgate.broker.types import MIN_TRIPWIRE_LENGTH, LeakPattern

logger = logging.getLogger("capgate.scrub")


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
    """One regex matching any of `values` (the longest wins at a position), the longest
    length, and every proper prefix (for chunk carry-over).

    The regex is a trie (`ab(?:c|d)`), not a flat alternation: with every echo form of
    every value of an activation there are hundreds of literals, and a flat alternation
    tries each of them at every position of a body; a trie fails after a byte or two."""
    ordered = sorted(set(values), key=len, reverse=True)
    regex: re.Pattern[bytes] | None = None
    if ordered:
        try:
            regex = re.compile(_trie_pattern(ordered))
        except (RecursionError, re.error):  # pathological sets: the flat alternation
            regex = re.compile(b"|".join(re.escape(v) for v in ordered))
    return regex, max(map(len, ordered), default=0), proper_prefixes(ordered)


_END = -1  # trie key marking the end of a literal


def _trie_pattern(literals: Iterable[bytes]) -> bytes:
    trie: dict[int, Any] = {}
    for literal in literals:
        node = trie
        for byte in literal:
            node = node.setdefault(byte, {})
        node[_END] = {}
    return _emit(trie)


def _emit(node: dict[int, Any]) -> bytes:
    out = b""
    while True:  # a chain of single children is a plain run of bytes, no recursion
        keys = [k for k in node if k != _END]
        if len(keys) == 1 and _END not in node:
            out += re.escape(bytes([keys[0]]))
            node = node[keys[0]]
            continue
        break
    keys = sorted(k for k in node if k != _END)
    if not keys:
        return out
    branches = [re.escape(bytes([k])) + _emit(node[k]) for k in keys]
    group = branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"
    if _END in node:  # greedy: the longer literal is tried first
        group = (b"(?:" + group + b")?") if len(branches) == 1 else group + b"?"
    return out + group


_PERCENT = re.compile(r"%[0-9A-F]{2}")


def echo_forms(value: bytes) -> frozenset[bytes]:
    r"""The forms in which an upstream would echo `value`: as is; percent-encoded the
    ways URL encoders do (`quote`, `quote_plus`, `/` kept or not, upper or lower hex: a
    query value goes on the wire encoded); JSON-escaped the ways JSON encoders do
    (`json.dumps` with and without ensure_ascii, `\/` as PHP writes it, Go's `\u003c`
    for `<>&`, every non-alphanumeric or every character as `\u00XX`, either hex case).

    A finite set of standard encodings: an upstream that transforms a value some other
    way (reversed, split over fields) is not caught. The property test in
    tests/proxy/test_scrub_forms.py draws from the same encoders."""
    forms = {value}
    for safe in ("", "/"):
        quoted = quote_from_bytes(value, safe=safe)
        for form in (quoted, quoted.replace("%20", "+")):
            forms.add(form.encode("ascii"))
            forms.add(_PERCENT.sub(lambda m: m.group(0).lower(), form).encode("ascii"))
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return frozenset(forms)
    for ensure_ascii in (True, False):
        escaped = json.dumps(text, ensure_ascii=ensure_ascii)[1:-1]
        forms.add(escaped.encode("utf-8", "surrogatepass"))
        forms.add(escaped.replace("/", "\\/").encode("utf-8", "surrogatepass"))
        html_safe = escaped.replace("<", "\\u003c").replace(">", "\\u003e")
        forms.add(html_safe.replace("&", "\\u0026").encode("utf-8", "surrogatepass"))
    for every in (False, True):
        for hexfmt in ("\\u{:04x}", "\\u{:04X}"):
            escaped = "".join(
                hexfmt.format(ord(c)) if (every or not c.isalnum()) and ord(c) < 0x10000 else c
                for c in text
            )
            forms.add(escaped.encode("utf-8", "surrogatepass"))
    return frozenset(form for form in forms if form)


class Scrubber:
    """Replaces every pattern's bytes with its marker; longest pattern wins at a position."""

    def __init__(self, patterns: Iterable[LeakPattern]) -> None:
        by_value: dict[bytes, bytes] = {}
        for pattern in patterns:
            if pattern.value:
                for form in echo_forms(pattern.value):
                    by_value.setdefault(form, marker(pattern.label))
        self._markers = by_value
        self._regex, self.max_len, self._prefixes = compile_literals(by_value)

    def __bool__(self) -> bool:
        return self._regex is not None

    def finds(self, data: bytes) -> bool:
        """Whether `data` holds any pattern (one search; cheaper than `scrub`)."""
        return self._regex is not None and self._regex.search(data) is not None

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
def activation_scrub(patterns: tuple[LeakPattern, ...]) -> tuple[LeakPattern, ...]:
    """The scrub patterns of an activation: every form of every value it holds, but
    only values long enough not to occur by chance (MIN_TRIPWIRE_LENGTH): a short value
    is still scrubbed from the responses of requests it was injected into."""
    return tuple(p for p in patterns if len(p.value) >= MIN_TRIPWIRE_LENGTH)


@functools.lru_cache(maxsize=256)
def scrubber_for(patterns: tuple[LeakPattern, ...]) -> Scrubber:
    """A compiled Scrubber per distinct pattern set: the set changes only when the
    activation or the matched capability does, not per request. `Sessions` clears this
    cache whenever the broker's generation moves, so no deleted value lingers in it."""
    return Scrubber(patterns)


def for_mitmproxy(
    process: Callable[[bytes], bytes], on_error: Callable[[], None] | None = None
) -> Callable[[bytes], list[bytes]]:
    """Adapt a chunk function to mitmproxy's `stream`: an empty chunk on the wire ends a
    chunked body, so "nothing yet" must be an empty list, never b""."""

    broken = False

    def stream(chunk: bytes) -> list[bytes]:
        nonlocal broken
        if broken:
            return []
        try:
            out = process(chunk)
        except Exception as exc:
            # Fail closed: a chunk capgate could not check is not passed on, nor anything
            # after it (the body ends short; the agent sees a truncated answer).
            broken = True
            logger.error(
                "internal error in a body stream (%s); the rest is dropped", type(exc).__name__
            )
            if on_error is not None:
                on_error()
            return []
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
