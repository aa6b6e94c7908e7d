"""The tripwire finds credential and secret values, raw or encoded, anywhere in a request."""

from __future__ import annotations

import base64
from urllib.parse import quote, quote_plus

from capgate.broker.secretvalue import SecretValue
from capgate.broker.types import leak_patterns
from capgate.proxy.addon.tripwire import Tripwire

VALUE = "tenant-secret-0123456789"
TRIPWIRE = Tripwire(leak_patterns("secret:tenant-id", SecretValue(VALUE)))


def _head(target: str = "/", headers: dict[str, str] | None = None, host: str = "api.test"):
    fields = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return TRIPWIRE.find_in_head(host, target, fields)


def test_finds_raw_and_percent_encoded_values_in_urls() -> None:
    assert _head(f"/a?x={VALUE}") == "secret:tenant-id"
    assert _head("/a/" + quote(VALUE, safe="")) == "secret:tenant-id"
    assert _head("/a?x=" + quote_plus(VALUE + " x")) == "secret:tenant-id"
    assert _head("/a?x=harmless") is None


def test_finds_values_in_the_host() -> None:
    assert _head(host=f"{VALUE}.evil.test") == "secret:tenant-id"


def test_finds_raw_base64_and_basic_wrapped_values_in_headers() -> None:
    b64 = base64.b64encode(VALUE.encode()).decode()
    basic = "Basic " + base64.b64encode(f"user:{VALUE}".encode()).decode()
    assert _head(headers={"X-A": f"pre {VALUE} post"}) == "secret:tenant-id"
    assert _head(headers={"X-A": b64}) == "secret:tenant-id"
    assert _head(headers={"X-A": quote(VALUE, safe="")}) == "secret:tenant-id"
    assert _head(headers={"Authorization": basic}) == "secret:tenant-id"
    assert _head(headers={"Authorization": "Basic !!notbase64"}) is None
    assert _head(headers={"Accept": "*/*", "User-Agent": "agent/1"}) is None


def test_finds_values_in_header_names() -> None:
    assert _head(headers={f"X-{VALUE}": "1"}) == "secret:tenant-id"


def test_finds_values_in_form_bodies() -> None:
    assert TRIPWIRE.find_in_body(b"a=" + quote(VALUE).encode()) == "secret:tenant-id"


def test_short_values_are_not_tripwires() -> None:
    assert not Tripwire(leak_patterns("secret:pin", SecretValue("abc")))


def test_streamed_bodies_report_and_mask_a_value_split_across_chunks() -> None:
    hits: list[str] = []
    stream = TRIPWIRE.stream(hits.append)
    data = b"prefix " + VALUE.encode() + b" suffix"
    out = b"".join(stream(c) for c in [data[:10], data[10:20], data[20:], b""])
    assert hits == ["secret:tenant-id"]
    assert VALUE.encode() not in out and len(out) == len(data)
