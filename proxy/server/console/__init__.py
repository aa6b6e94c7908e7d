"""The web console (issue 15): server-rendered HTML pages on top of the JSON API.

`router` is included by `capgate.proxy.server.app.create_app`; the console engineer owns
everything in this package. Until the pages exist, `/credentials` answers a placeholder.
"""

from __future__ import annotations

from .pages import router

__all__ = ["router"]
