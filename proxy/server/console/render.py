"""Rendering the console: one autoescaping Jinja2 environment, the security headers every
console response carries, and the small formatting helpers the templates use.

Every page is HTML from a template under templates/ with autoescape on for every file
(a credential or role name with `<script>` renders as text). Scripts and styles come only
from our own static route (`/static/...`): the Content-Security-Policy allows no inline
script or style and no other origin, frames are refused, and nothing is cached.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from capgate.broker.identity import Principal

_env = Environment(
    loader=PackageLoader("capgate.proxy.server.console", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

STATIC_TYPES = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}


def _load_static() -> dict[str, bytes]:
    folder = resources.files("capgate.proxy.server.console") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC_TYPES}


STATIC: dict[str, bytes] = _load_static()


def csp(form_origins: Iterable[str] = ()) -> str:
    """The console's policy. `form_origins`: where a form's redirect may go besides us
    (the providers' authorization endpoints: Connect posts, then goes there)."""
    form_action = " ".join(["'self'", *sorted(set(form_origins))])
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'; form-action {form_action}; frame-ancestors 'none'; "
        "base-uri 'none'"
    )


def secure_headers(response: Response, form_origins: Iterable[str] = ()) -> Response:
    headers = response.headers
    headers["Content-Security-Policy"] = csp(form_origins)
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
    headers.setdefault("Cache-Control", "no-store")
    return response


def origin(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def render(
    template: str,
    *,
    caller: Principal | None,
    status: int = 200,
    form_origins: Iterable[str] = (),
    section: str = "",
    **values: Any,
) -> HTMLResponse:
    body = _env.get_template(template).render(
        caller=caller,
        csrf_token=(caller.csrf_token if caller else "") or "",
        section=section,
        **values,
    )
    return secure_headers(HTMLResponse(body, status_code=status), form_origins)  # type: ignore[return-value]


# --- template helpers ---------------------------------------------------------------------


UNITS = (
    (86400 * 365, "year"),
    (86400 * 30, "month"),
    (86400, "day"),
    (3600, "hour"),
    (60, "minute"),
)


def parse_time(value: str | float | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def exact_time(value: str | float | None) -> str:
    parsed = parse_time(value)
    return parsed.strftime("%Y-%m-%d %H:%M:%S UTC") if parsed else ""


def iso_time(value: str | float | None) -> str:
    parsed = parse_time(value)
    return parsed.isoformat().replace("+00:00", "Z") if parsed else ""


def relative_time(value: str | float | None, now: datetime | None = None) -> str:
    """'just now', '5 minutes ago', 'in 3 hours', '2 days ago'."""
    parsed = parse_time(value)
    if parsed is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - parsed).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 45:
        return "just now"
    count, unit = 1, "minute"
    for size, name in UNITS:
        if seconds >= size:
            count, unit = max(1, round(seconds / size)), name
            break
    words = f"{count} {unit}{'' if count == 1 else 's'}"
    return f"in {words}" if future else f"{words} ago"


def query(path: str, params: Mapping[str, str | None]) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{path}?{urlencode(kept)}" if kept else path


_env.filters["reltime"] = relative_time
_env.filters["exacttime"] = exact_time
_env.filters["isotime"] = iso_time
_env.globals["query"] = query
