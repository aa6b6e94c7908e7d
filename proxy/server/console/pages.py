"""Placeholder console pages; issue 15 replaces this module with the real console."""

from __future__ import annotations

import html

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from ..auth import session_principal

router = APIRouter(include_in_schema=False)


@router.get("/credentials")
async def credentials_page(request: Request) -> HTMLResponse:
    signed_in = await session_principal(request)
    if signed_in is None:
        return HTMLResponse(
            "<!doctype html><title>capgate</title><p>Sign in with a link from "
            "<code>capgate console-link</code>.</p>",
            status_code=401,
        )
    csrf = html.escape(signed_in.csrf_token or "")
    user = html.escape(signed_in.user)
    return HTMLResponse(
        f'<!doctype html><html><head><meta name="csrf-token" content="{csrf}">'
        f"<title>capgate</title></head><body><p>Signed in as {user}.</p></body></html>"
    )
