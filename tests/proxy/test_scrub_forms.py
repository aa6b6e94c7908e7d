"""Property: for any stored value and any standard encoding an upstream would echo it in,
the scrubbed output carries neither the encoded form nor the value (issue 11, class 4).
The encoders here are written independently of `echo_forms`: the libraries' own."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capgate.broker.types import MIN_TRIPWIRE_LENGTH, LeakPattern
from capgate.proxy.addon.scrub import Scrubber


def _u_escape(every: bool, upper: bool) -> Callable[[str], str]:
    def encode(text: str) -> str:
        fmt = "\\u{:04X}" if upper else "\\u{:04x}"
        return "".join(
            fmt.format(ord(c)) if (every or not c.isalnum()) and ord(c) < 0x10000 else c
            for c in text
        )

    return encode


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


ENCODERS: dict[str, Callable[[str], str]] = {
    "raw": lambda v: v,
    "urlencode": lambda v: urllib.parse.urlencode({"k": v})[2:],  # what mitmproxy writes
    "quote": lambda v: urllib.parse.quote(v, safe=""),
    "quote_keep_slash": lambda v: urllib.parse.quote(v),
    "quote_plus": lambda v: urllib.parse.quote_plus(v),
    "quote_lower_hex": lambda v: _lower_hex(urllib.parse.quote(v, safe="")),
    "json": lambda v: json.dumps(v)[1:-1],
    "json_utf8": lambda v: json.dumps(v, ensure_ascii=False)[1:-1],
    "json_escaped_slash": lambda v: json.dumps(v)[1:-1].replace("/", "\\/"),
    "json_html_safe": lambda v: (
        json.dumps(v)[1:-1].replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    ),
    "json_u_non_alnum": _u_escape(False, False),
    "json_u_non_alnum_upper": _u_escape(False, True),
    "json_u_every": _u_escape(True, False),
    "json_u_every_upper": _u_escape(True, True),
}

values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=MIN_TRIPWIRE_LENGTH
).filter(lambda v: len(v.encode()) >= MIN_TRIPWIRE_LENGTH)
surroundings = st.binary(max_size=40)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=values,
    encoder=st.sampled_from(sorted(ENCODERS)),
    before=surroundings,
    after=surroundings,
    cut=st.integers(min_value=0, max_value=400),
)
def test_no_echo_form_of_a_stored_value_survives_the_scrubber(
    value: str, encoder: str, before: bytes, after: bytes, cut: int
) -> None:
    encoded = ENCODERS[encoder](value).encode("utf-8")
    body = before + encoded + after
    scrubber = Scrubber([LeakPattern("secret:s", value.encode())])
    whole = scrubber.scrub(body)
    assert encoded not in whole
    assert value.encode() not in whole
    # and the same when the body arrives in two chunks, split anywhere
    at = cut % (len(body) + 1)
    stream = scrubber.stream()
    streamed = stream(body[:at]) + stream(body[at:]) + stream(b"")
    assert encoded not in streamed
    assert value.encode() not in streamed
