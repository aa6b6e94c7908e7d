"""The shape of an OAuth `client_id` per provider, checked before anything is written.

Google's OAuth clients are `<project number>-<id>.apps.googleusercontent.com`; Microsoft
Entra application (client) ids are GUIDs. A pasted secret, a URL or a tenant id in the
client_id field is caught here, beside the field, instead of at the first consent.
Providers without a fixed format accept any non-empty single-line value.
"""

from __future__ import annotations

import re

_FORMATS: dict[str, tuple[re.Pattern[str], str]] = {
    "google": (
        re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.apps\.googleusercontent\.com$"),
        "a Google OAuth client id ends in .apps.googleusercontent.com",
    ),
    "microsoft": (
        re.compile(
            r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
        ),
        "a Microsoft application (client) id is a GUID like 00000000-0000-0000-0000-000000000000",
    ),
}


def client_id_problem(provider: str, client_id: str) -> str | None:
    """Why `client_id` cannot be `provider`'s OAuth client id, or None when it can."""
    if not client_id or any(ch in client_id for ch in "\r\n\0") or len(client_id) > 256:
        return "must be a non-empty single-line value"
    found = _FORMATS.get(provider)
    if found is not None and not found[0].match(client_id):
        return found[1]
    return None
