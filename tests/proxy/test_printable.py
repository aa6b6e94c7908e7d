"""What the audit row and the access log keep of a request field: visible ASCII only."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.proxy.addon.flowstate import printable

_SAFE = frozenset(range(0x21, 0x7F))


def reference(text: str) -> str:
    """Every byte outside visible ASCII percent-encoded, byte by byte (the definition)."""
    data = text.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in data)


@settings(max_examples=1000)
@given(
    st.text(alphabet=st.characters(codec="utf-8"))
    | st.text(alphabet=st.sampled_from(["a", "%", " ", "\x1b", "\x7f", "é", "\udc80", "\udcff"]))
)
def test_printable_is_the_byte_wise_definition(text: str) -> None:
    assert printable(text) == reference(text)


def test_mitmproxy_surrogates_and_terminal_escapes() -> None:
    assert printable("/\udcff") == "/%FF"  # a raw 0xFF byte, kept by mitmproxy as a surrogate
    assert printable("/x\x1b[2J\x07") == "/x%1B[2J%07"
    assert printable("/a b\x7f") == "/a%20b%7F"
    assert printable("/already%20encoded") == "/already%20encoded"
