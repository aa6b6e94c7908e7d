"""`create_app`: the control plane's ASGI app (FastAPI), one listener for everything.

`/v1/...` the JSON API (api.py), `/openapi.json`, `/healthz`, `/metrics` (Prometheus),
`/login/<token>`, `/logout`, `/oauth/callback` (web.py) and the console's pages
(console/, included last). Handlers share one `ServerContext` (the stores of the home,
opened once per process; every request re-reads what it needs, so changes made by the CLI
or another server are seen on the next request).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.routing import Route

from capgate.broker.oauth import Endpoints
from capgate.broker.oidc import OidcLogin
from capgate.broker.stores import Stores
from capgate.broker.verify import Verifier

from . import errors
from .api import router as api_router
from .console import router as console_router
from .context import CapsFiles, ServerContext
from .middleware import Guard
from .web import router as web_router

MAX_BODY = 1 << 20  # 1 MiB: caps files, values and keys are far smaller
# How `capgate serve` (proxy/cli/serve.py, which does not import this package) hands its
# settings to `app_from_settings`, the factory uvicorn imports by name.
SETTINGS_ENV = "CAPGATE_SERVE_SETTINGS"
APP_FACTORY = "capgate.proxy.server.app:app_from_settings"


def app_from_settings() -> FastAPI:
    """The app `capgate serve` runs: settings from CAPGATE_SERVE_SETTINGS (a JSON object
    with `home`, `public_url`, `caps_files`); provider overrides from the environment."""
    settings = json.loads(os.environ[SETTINGS_ENV])
    oidc = None
    if settings.get("oidc"):
        config = settings["oidc"]
        secret = None
        if config.get("client_secret_file"):
            secret = Path(config["client_secret_file"]).read_text().strip() or None
        oidc = OidcLogin(config["issuer"], config["client_id"], secret)
    return create_app(
        Path(settings["home"]),
        public_url=settings["public_url"],
        caps_files=[Path(p) for p in settings.get("caps_files", [])],
        org=settings.get("org", "default"),
        oidc=oidc,
    )


def create_app(
    home: Path | Stores,
    *,
    public_url: str = "http://127.0.0.1:8400",
    caps_files: Sequence[Path] = (),
    endpoints: Endpoints | None = None,
    max_body: int = MAX_BODY,
    verify_overrides: Mapping[str, str] | None = None,
    org: str = "default",
    oidc: OidcLogin | None = None,
) -> FastAPI:
    """The app for one home; `home` may be opened Stores (the caller then closes them)."""
    owned = not isinstance(home, Stores)
    stores = Stores.open(home) if not isinstance(home, Stores) else home
    endpoints = endpoints if endpoints is not None else Endpoints.from_env()
    ctx = ServerContext(
        stores=stores,
        public_url=public_url.rstrip("/"),
        caps=CapsFiles(tuple(Path(p) for p in caps_files)),
        endpoints=endpoints,
        verifier=Verifier(stores, endpoints, verify_overrides),
        max_body=max_body,
        org=org,
        oidc=oidc,
    )
    app = FastAPI(
        title="capgate control plane",
        version="1",
        description="Credentials, secrets, users, API keys, workspaces, roles, decisions.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.capgate = ctx
    errors.install(app)
    app.include_router(web_router)
    app.include_router(api_router)
    _mount_metrics(app)
    # The console (issue 15) owns its pages: included last, so API paths win.
    app.include_router(console_router)
    app.add_middleware(Guard, max_body=max_body)
    if owned:
        app.router.on_shutdown.append(stores.close)
    return app


class _Asgi:
    """An ASGI app as a route endpoint (Starlette wraps plain functions as handlers)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _mount_metrics(app: FastAPI) -> None:
    """`/metrics` in Prometheus text format: prometheus_client's ASGI app on the default
    registry (issue 17 adds the metrics), at exactly `/metrics` (a mount would redirect)."""
    from prometheus_client import make_asgi_app

    app.router.routes.append(Route("/metrics", _Asgi(make_asgi_app()), methods=["GET"]))
