"""The web console (issue 15): server-rendered HTML pages on top of the JSON API.

`router` is included by `capgate.proxy.server.app.create_app`: the pages (pages.py) and
single sign-on (sso.py, active when `install_sso` was given OIDC settings).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from . import pages, sso
from .sso import OidcSettings, Sso

router = APIRouter(include_in_schema=False)
router.include_router(sso.router)
router.include_router(pages.router)


def install_sso(app: Any, settings: OidcSettings | None, public_url: str) -> None:
    """Offer single sign-on with this OpenID Connect provider (None: links only)."""
    app.state.capgate_oidc = Sso(settings, public_url) if settings is not None else None


__all__ = ["OidcSettings", "install_sso", "router"]
