"""Response scrubbing: whole bodies, chunked streams with carry-over, compressed streams."""

from __future__ import annotations

import gzip
import zlib

import brotli
from hypothesis import given
from hypothesis import strategies as st

from capgate.broker.types import LeakPattern
from capgate.proxy.addon.scrub import Scrubber, for_mitmproxy, marker, scrubbing_stream

VALUE = b"ghp_SECRETvalue0123456789"
PATTERNS = [LeakPattern("credential:github", VALUE), LeakPattern("github", b"Z2hwX1NFQ1JFVA==")]


def _run(stream, chunks: list[bytes]) -> bytes:
    return b"".join(stream(c) for c in [*chunks, b""])


def test_marker_names_the_credential_not_its_kind() -> None:
    assert marker("credential:github") == b"[REDACTED:github]"
    assert marker("secret:tenant-id") == b"[REDACTED:tenant-id]"


def test_whole_body_is_scrubbed() -> None:
    assert Scrubber(PATTERNS).scrub(b"a " + VALUE + b" b") == b"a [REDACTED:github] b"


@given(st.binary(max_size=200), st.binary(max_size=200), st.lists(st.integers(0, 500)))
def test_any_chunking_gives_the_same_result_as_the_whole_body(
    before: bytes, after: bytes, cuts: list[int]
) -> None:
    body = before + VALUE + after + VALUE
    scrubber = Scrubber(PATTERNS)
    points = sorted({min(c, len(body)) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    assert _run(scrubber.stream(), [c for c in chunks if c]) == scrubber.scrub(body)


def test_a_chunk_that_cannot_start_a_value_is_not_held_back() -> None:
    stream = Scrubber(PATTERNS).stream()
    assert stream(b"data: {}\n\n") == b"data: {}\n\n"


def test_mitmproxy_adapter_never_emits_an_empty_chunk() -> None:
    stream = for_mitmproxy(Scrubber(PATTERNS).stream())
    assert stream(VALUE[:5]) == []
    assert stream(VALUE[5:]) == [b"[REDACTED:github]"]


def test_compressed_streams_are_decoded_then_scrubbed() -> None:
    body = b"x" * 1000 + VALUE + b"y" * 1000
    for encoding, data in [
        ("gzip", gzip.compress(body)),
        ("deflate", zlib.compress(body)),
        ("br", brotli.compress(body)),
    ]:
        stream = scrubbing_stream(Scrubber(PATTERNS), encoding)
        chunks = [data[i : i + 7] for i in range(0, len(data), 7)]
        out = _run(stream, chunks)
        assert VALUE not in out and b"[REDACTED:github]" in out, encoding


def test_corrupt_compressed_stream_ends_instead_of_leaking() -> None:
    stream = scrubbing_stream(Scrubber(PATTERNS), "gzip")
    assert _run(stream, [b"not gzip " + VALUE]) == b""
