"""A secret value that cannot be printed by accident.

`repr()`, `str()` and f-strings show `[REDACTED]`; the plaintext comes out only through
`reveal()` / `reveal_bytes()`, which makes every use of it easy to find in review.
"""

from __future__ import annotations

import hmac

REDACTED = "[REDACTED]"


class SecretValue:
    """An immutable secret string whose printable forms are `[REDACTED]`."""

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str | bytes) -> None:
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if not isinstance(value, str):
            raise TypeError("SecretValue holds a str or UTF-8 bytes")
        object.__setattr__(self, "_value", value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("SecretValue is immutable")

    def reveal(self) -> str:
        """The plaintext. Call it only where the value goes onto the wire or into the vault."""
        return self._value

    def reveal_bytes(self) -> bytes:
        return self._value.encode("utf-8")

    def __repr__(self) -> str:
        return f"SecretValue({REDACTED})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        return hmac.compare_digest(self.reveal_bytes(), other.reveal_bytes())

    def __hash__(self) -> int:
        return hash((SecretValue, self._value))

    def __reduce__(self) -> tuple[type, tuple[str]]:
        # Pickling is needed for multiprocessing in tests; it keeps the value, never prints it.
        return (SecretValue, (self._value,))
