"""Leak patterns: what the tripwire and the scrubber look for."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.broker.secretvalue import SecretValue
from capgate.broker.types import leak_patterns


def _found(patterns, data: bytes) -> bool:
    return any(p.value in data for p in patterns)


@settings(max_examples=300, deadline=None)
@given(
    secret=st.binary(min_size=12, max_size=48)
    .filter(lambda b: b"\0" not in b)
    .map(lambda b: b.hex()[:40]),
    before=st.binary(max_size=10),
    after=st.binary(max_size=10),
    urlsafe=st.booleans(),
)
def test_base64_of_any_string_holding_the_value_is_detected(secret, before, after, urlsafe):
    # given a value wrapped in arbitrary bytes and base64-encoded as a whole
    patterns = leak_patterns("secret:s", SecretValue(secret), embedded=True)
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    blob = encode(before + secret.encode() + after)
    # then one of the embedded patterns occurs in it, whatever the alignment
    assert _found(patterns, blob)


def test_hex_forms_are_detected():
    value = "tenant-secret-0123456789"
    patterns = leak_patterns("secret:s", SecretValue(value), embedded=True)
    assert _found(patterns, b"x=" + value.encode().hex().encode())
    assert _found(patterns, value.encode().hex().upper().encode())


def test_scrub_patterns_stay_whole_values():
    value = SecretValue("tenant-secret-0123456789")
    scrub = {p.value for p in leak_patterns("secret:s", value)}
    assert scrub == {
        value.reveal_bytes(),
        base64.b64encode(value.reveal_bytes()),
        base64.urlsafe_b64encode(value.reveal_bytes()),
    }


def test_unrelated_base64_is_not_flagged():
    patterns = leak_patterns("secret:s", SecretValue("tenant-secret-0123456789"), embedded=True)
    assert not _found(patterns, base64.b64encode(b"an ordinary request body, nothing secret"))
