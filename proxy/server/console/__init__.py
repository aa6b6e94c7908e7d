"""The web console (issue 15): server-rendered HTML pages on top of the JSON API.

`router` is included by `capgate.proxy.server.app.create_app`, after the API and the root
paths (sign-in, single sign-on and the OAuth callback are web.py's).
"""

from __future__ import annotations

from .pages import router

__all__ = ["router"]
