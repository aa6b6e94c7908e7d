"""Errors the broker raises for conditions a user can act on.

Each carries a plain message (never a value, never bytes) and the CLI exit code that
ARCHITECTURE.md assigns to it: 2 for bad input, 1 for a conflict with stored state.
"""

from __future__ import annotations

from .providers import FieldError

__all__ = [
    "CapgateError",
    "Conflict",
    "Exists",
    "FieldError",
    "Forbidden",
    "InvalidInput",
    "KeyFileError",
    "NotFound",
    "NotInitialized",
    "Unauthenticated",
    "VaultError",
]


class CapgateError(Exception):
    """Base of every expected broker failure; `str(error)` is safe to show a user."""

    exit_code = 1


class NotInitialized(CapgateError):
    """The home has no key file or stores yet."""


class KeyFileError(CapgateError):
    """The key-encryption key file is missing, unreadable, malformed or too permissive."""


class VaultError(CapgateError):
    """A vault entry could not be decrypted (wrong key, tampered or swapped ciphertext)."""


class NotFound(CapgateError):
    """The named thing does not exist in this org."""


class Conflict(CapgateError):
    """The request contradicts stored state (already exists, override rule, stale value)."""


class Exists(Conflict):
    """The thing to create exists already (a name is taken)."""


class Forbidden(CapgateError):
    """The caller's role does not allow this action (the control plane's policy)."""


class Unauthenticated(CapgateError):
    """No valid API key or console session (unknown, revoked or expired)."""


class InvalidInput(CapgateError):
    """Input rejected before anything was written; `.errors` names every bad field."""

    exit_code = 2

    def __init__(self, errors: list[FieldError] | tuple[FieldError, ...]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(str(e) for e in self.errors))
