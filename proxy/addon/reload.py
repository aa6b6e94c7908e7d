"""caps.yaml hot reload: a changed file is validated and swapped in atomically.

An invalid file is logged with every problem (file:line:col: message) and the last good
configuration keeps serving. Checks are throttled to one `stat` per interval, so calling
`poll()` on every request costs nothing measurable.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from capgate.broker import metrics
from capgate.caps import CapsConfig, CapsError, load_caps

logger = logging.getLogger("capgate.reload")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


# Start-up validates the file before mitmproxy starts (`preload`); the watcher the addon
# builds in `configure` then reuses that result instead of compiling the file again.
_preloaded: dict[Path, tuple[tuple[int, int, int] | None, CapsConfig]] = {}


def preload(path: Path) -> CapsConfig:
    """Load and validate `path` (CapsError when invalid), for the watcher to reuse."""
    stamp = _stamp(path)
    config = load_caps(path)
    _preloaded[path.resolve()] = (stamp, config)
    return config


def _take_preloaded(path: Path, stamp: tuple[int, int, int] | None) -> CapsConfig | None:
    found = _preloaded.pop(path.resolve(), None)
    if found is None or stamp is None or found[0] != stamp:
        return None  # the file changed since: compile it afresh
    return found[1]


class CapsWatcher:
    """The current configuration of one caps.yaml file; `version` moves on each swap."""

    def __init__(
        self,
        path: Path,
        interval: float = 1.0,
        loader: Callable[[Path], CapsConfig] = load_caps,
    ) -> None:
        self.path = path
        self.interval = interval
        self._loader = loader
        self._stamp = _stamp(path)
        preloaded = _take_preloaded(path, self._stamp) if loader is load_caps else None
        # CapsError here: refuse to start on a bad file
        self.config = preloaded if preloaded is not None else loader(path)
        self.version = 1
        self._checked = time.monotonic()

    def poll(self, force: bool = False) -> bool:
        """Reload when the file changed; True when a new configuration was swapped in."""
        now = time.monotonic()
        if not force and now - self._checked < self.interval:
            return False
        self._checked = now
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        if stamp is None:
            logger.error(
                "%s: cannot read caps file; keeping the last good configuration", self.path
            )
            metrics.CAPS_RELOADS.labels("rejected").inc()
            return False
        try:
            config = self._loader(self.path)
        except CapsError as exc:
            logger.error("%s: invalid, keeping the last good configuration:", self.path)
            for problem in exc.problems:
                logger.error("  %s", problem)
            metrics.CAPS_RELOADS.labels("rejected").inc()
            return False
        self.config = config  # one reference swap: a request sees old or new, never a mix
        self.version += 1
        metrics.CAPS_RELOADS.labels("ok").inc()
        logger.info("%s: reloaded (%d capabilities)", self.path, len(config.capabilities))
        return True
