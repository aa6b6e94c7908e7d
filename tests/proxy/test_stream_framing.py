"""Streamed bodies never emit an empty chunk mid-body.

mitmproxy sends whatever a `stream` callable returns as one HTTP/1.1 chunk, and an empty
chunk is the end-of-body marker: a `b""` returned while capgate holds bytes back (a
possible secret prefix, a gzip header) would cut the response short, or end a request
body early and let the rest be read as a new request (smuggling). These tests drive the
exact callables the addon installs.
"""

from __future__ import annotations

import gzip
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.broker.secretvalue import SecretValue
from capgate.broker.types import leak_patterns
from capgate.proxy.addon.scrub import Scrubber, for_mitmproxy, scrubbing_stream
from capgate.proxy.addon.tripwire import Tripwire

SECRET = "sk-live-0123456789abcdef"
PATTERNS = leak_patterns("credential:openai", SecretValue(SECRET))


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def _drive(stream, chunks: list[bytes]) -> list[bytes]:
    emitted: list[bytes] = []
    for chunk in chunks:
        emitted.extend(stream(chunk))
    emitted.extend(stream(b""))  # end of body
    return emitted


bodies = st.lists(
    st.sampled_from([b"data: ", SECRET.encode(), SECRET.encode()[:5], b"\n\n", b"x" * 7]),
    min_size=1,
    max_size=12,
).map(b"".join)


@settings(max_examples=150, deadline=None)
@given(body=bodies, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20))
def test_scrubbing_stream_never_emits_an_empty_chunk(body, cuts):
    stream = for_mitmproxy(scrubbing_stream(Scrubber(PATTERNS)))
    emitted = _drive(stream, _chunks(body, cuts))
    assert b"" not in emitted
    assert SECRET.encode() not in b"".join(emitted)


@settings(max_examples=100, deadline=None)
@given(body=bodies, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20))
def test_gzip_scrubbing_stream_never_emits_an_empty_chunk(body, cuts):
    compressed = gzip.compress(body)
    stream = for_mitmproxy(scrubbing_stream(Scrubber(PATTERNS), "gzip"))
    emitted = _drive(stream, _chunks(compressed, [1, *cuts]))  # header-only first chunk too
    assert b"" not in emitted
    assert b"".join(emitted) == Scrubber(PATTERNS).scrub(body)


@settings(max_examples=100, deadline=None)
@given(body=bodies, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20))
def test_tripwire_request_stream_never_emits_an_empty_chunk(body, cuts):
    hits: list[str] = []
    stream = for_mitmproxy(Tripwire(PATTERNS).stream(hits.append))
    emitted = _drive(stream, _chunks(body, cuts))
    assert b"" not in emitted
    assert len(b"".join(emitted)) == len(body)  # masked in place, framing unchanged
    assert (SECRET.encode() in body) == bool(hits)
