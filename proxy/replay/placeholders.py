"""Placeholders for credential and secret values in replay fixtures, both ways.

A fixture never spells a value where it expects one: it writes a placeholder, which
`TestValues.render` turns into the fixture's test value, and `TestValues.mask` turns
every known form of a value back into its placeholder (for diffs, and for recording).

    {{credential:NAME}}         the credential's value (for OAuth kinds: the access token)
    {{secret:NAME}}             the secret's value
    {{basic:NAME}}              base64("username:value") of a Basic-auth credential
    {{credential_b64:NAME}}     standard base64 of the credential's value
    {{secret_b64:NAME}}         standard base64 of the secret's value

Masking also recognises the URL-safe base64 and percent-encoded forms (written back as the
plain placeholder of that form), so that no form of a value survives into a diff.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

PLACEHOLDER = re.compile(r"\{\{\s*([a-z_0-9]+)\s*:\s*([^{}\s]+)\s*\}\}")
KINDS = ("credential", "secret", "basic", "credential_b64", "secret_b64")


def placeholder(kind: str, name: str) -> str:
    return "{{" + kind + ":" + name + "}}"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def basic_pair(username: str, value: str) -> str:
    return b64(f"{username}:{value}")


@dataclass(frozen=True)
class Named:
    """One value a fixture declares: `kind` is `credential` or `secret`."""

    kind: str
    name: str
    value: str
    basic_username: str | None = None  # set for Basic-auth credentials


def forms(named: Named) -> dict[str, str]:
    """Placeholder → rendered value, for every placeholder form of one value."""
    out = {
        placeholder(named.kind, named.name): named.value,
        placeholder(f"{named.kind}_b64", named.name): b64(named.value),
    }
    if named.basic_username is not None:
        out[placeholder("basic", named.name)] = basic_pair(named.basic_username, named.value)
    return out


class TestValues:
    """The values of one fixture (or one recorded flow), for rendering and masking."""

    __test__ = False  # not a pytest class

    def __init__(self, values: Iterable[Named]) -> None:
        self.rendered: dict[str, str] = {}
        masks: dict[str, str] = {}
        for named in values:
            for token, value in forms(named).items():
                self.rendered[token] = value
                for variant in _variants(value):
                    masks.setdefault(variant, token)
                masks[value] = token  # the exact form wins over a variant of another
        self._masks = {v: t for v, t in masks.items() if v}
        ordered = sorted(self._masks, key=len, reverse=True)
        self._regex = re.compile("|".join(re.escape(v) for v in ordered)) if ordered else None

    def known(self, token: str) -> bool:
        return token in self.rendered

    def render(self, text: str) -> str:
        """Placeholders replaced by their test values; unknown placeholders stay as they are."""
        return PLACEHOLDER.sub(lambda m: self.rendered.get(_canonical(m), m.group(0)), text)

    def render_value(self, value: Any) -> Any:
        """`render` applied to every string inside a JSON-like value (keys included)."""
        if isinstance(value, str):
            return self.render(value)
        if isinstance(value, list):
            return [self.render_value(v) for v in value]
        if isinstance(value, dict):
            return {self.render(k): self.render_value(v) for k, v in value.items()}
        return value

    def mask(self, text: str) -> str:
        """Every known value (any form) replaced by its placeholder."""
        if self._regex is None or not text:
            return text
        return self._regex.sub(lambda m: self._masks[m.group(0)], text)

    def mask_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, list):
            return [self.mask_value(v) for v in value]
        if isinstance(value, dict):
            return {self.mask(k): self.mask_value(v) for k, v in value.items()}
        return value


def _canonical(match: re.Match[str]) -> str:
    return placeholder(match.group(1), match.group(2))


def _variants(value: str) -> set[str]:
    """Other spellings of a value that can appear on the wire."""
    raw = value.encode()
    return {
        base64.urlsafe_b64encode(raw).decode("ascii"),
        base64.b64encode(raw).decode("ascii").rstrip("="),
        quote(value, safe=""),
        quote_plus(value, safe=""),
    } - {""}


def placeholders_in(text: str) -> list[tuple[str, str]]:
    """(kind, name) of every placeholder in a text."""
    return [(m.group(1), m.group(2)) for m in PLACEHOLDER.finditer(text)]


def strings_in(value: Any) -> Iterable[str]:
    """Every string inside a JSON-like value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from strings_in(item)
