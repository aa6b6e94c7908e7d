"""What every handler of one `capgate serve` process shares: the stores and the settings."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import Request

from capgate.broker.oauth import Endpoints
from capgate.broker.oidc import OidcLogin
from capgate.broker.stores import Stores
from capgate.broker.verify import Verifier
from capgate.caps import CapsConfig, CapsError, load_caps

SESSION_COOKIE = "capgate_session"


@dataclass
class CapsFiles:
    """The `--caps` files, re-read when one changes on disk (the proxies reload them too)."""

    paths: tuple[Path, ...]
    _loaded: dict[Path, tuple[float, CapsConfig | None]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def configs(self) -> list[CapsConfig]:
        out = []
        with self._lock:
            for path in self.paths:
                try:
                    mtime = path.stat().st_mtime
                except OSError:
                    continue
                cached = self._loaded.get(path)
                if cached is None or cached[0] != mtime:
                    try:
                        config: CapsConfig | None = load_caps(path)
                    except CapsError:
                        config = None  # an invalid file contributes no roles until fixed
                    cached = (mtime, config)
                    self._loaded[path] = cached
                if cached[1] is not None:
                    out.append(cached[1])
        return out


@dataclass
class ServerContext:
    stores: Stores
    public_url: str
    caps: CapsFiles
    endpoints: Endpoints
    verifier: Verifier
    max_body: int = 1 << 20
    org: str = "default"  # the org single sign-on signs people in to
    oidc: OidcLogin | None = None

    @property
    def secure_cookies(self) -> bool:
        return urlsplit(self.public_url).scheme == "https"

    @property
    def redirect_uri(self) -> str:
        return self.public_url.rstrip("/") + "/oauth/callback"


def context(request: Request) -> ServerContext:
    return request.app.state.capgate
