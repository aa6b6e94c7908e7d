"""caps.yaml hot reload: a changed file is validated and swapped in atomically.

An invalid file is logged with every problem (file:line:col: message) and the last good
configuration keeps serving. Checks are throttled to one `stat` per interval, so calling
`poll()` on every request costs nothing measurable.

A change is applied only once the file is stable: its bytes and its stat (mtime, size,
inode) unchanged across two reads SETTLE_S apart, and unchanged again after compiling.
An editor that writes in two steps is caught between them and the half-written file is
never applied; the next poll tries again. In the proxy (`background=True`) the reads and
the compile run in a thread of their own and the swap happens on the event loop, so a
caps file of thousands of capabilities never stalls requests while it compiles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from capgate.broker import metrics
from capgate.caps import CapsConfig, CapsError, Problem, load_caps
from capgate.caps.files import MAX_CAPS_BYTES, FileRefused, read_config_text

logger = logging.getLogger("capgate.reload")

SETTLE_S = 0.25  # a changed file must read the same twice this far apart to be applied

Stamp = tuple[int, int, int]


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
        *,
        settle: float = SETTLE_S,
        background: bool = False,
    ) -> None:
        self.path = path
        self.interval = interval
        self.settle = settle
        self.background = background
        self._loader = loader
        self._stamp = _stamp(path)
        preloaded = _take_preloaded(path, self._stamp) if loader is load_caps else None
        # CapsError here: refuse to start on a bad file
        self.config = preloaded if preloaded is not None else loader(path)
        self.version = 1
        self._checked = time.monotonic()
        self._compiling: threading.Thread | None = None
        self._unstable_logged: Stamp | None = None

    def poll(self, force: bool = False) -> bool:
        """Reload when the file changed; True when a new configuration was swapped in.

        In background mode (inside a running event loop) a change is compiled in a
        thread and swapped in later on the loop; this call then returns False at once.
        """
        now = time.monotonic()
        if not force and now - self._checked < self.interval:
            return False
        self._checked = now
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        if stamp is None:
            self._stamp = stamp
            logger.error(
                "%s: cannot read caps file; keeping the last good configuration", self.path
            )
            metrics.CAPS_RELOADS.labels("rejected").inc()
            return False
        loop = _running_loop() if self.background else None
        if loop is None:
            return self._apply(*self._compile())
        if self._compiling is None or not self._compiling.is_alive():
            self._compiling = threading.Thread(
                target=self._compile_then_apply, args=(loop,), name="capgate-caps", daemon=True
            )
            self._compiling.start()
        return False

    def _compile_then_apply(self, loop: asyncio.AbstractEventLoop) -> None:
        result = self._compile()
        with contextlib.suppress(RuntimeError):  # RuntimeError: the loop closed meanwhile
            loop.call_soon_threadsafe(self._apply, *result)

    def _compile(self) -> tuple[Stamp | None, CapsConfig | CapsError | None]:
        """(stamp, result) of the file as it is now; result None: not stable yet."""
        try:
            first = read_config_text(self.path, MAX_CAPS_BYTES)
            before = _stamp(self.path)
            time.sleep(self.settle)
            second = read_config_text(self.path, MAX_CAPS_BYTES)
        except FileRefused as exc:
            stamp = _stamp(self.path)
            return stamp, CapsError([_problem(self.path, str(exc))])
        if first != second or before != _stamp(self.path):
            return before, None
        try:
            config: CapsConfig | CapsError = self._loader(self.path)
        except CapsError as exc:
            config = exc
        if _stamp(self.path) != before:
            return before, None  # changed while compiling: what was compiled may be a mix
        return before, config

    def _apply(self, stamp: Stamp | None, result: CapsConfig | CapsError | None) -> bool:
        if result is None:
            if self._unstable_logged != stamp:
                self._unstable_logged = stamp
                logger.info("%s: still being written; not applied yet", self.path)
            self._checked = 0.0  # look again on the next poll
            return False
        self._stamp = stamp
        if isinstance(result, CapsError):
            logger.error("%s: invalid, keeping the last good configuration:", self.path)
            for problem in result.problems:
                logger.error("  %s", problem)
            metrics.CAPS_RELOADS.labels("rejected").inc()
            return False
        self.config = result  # one reference swap: a request sees old or new, never a mix
        self.version += 1
        metrics.CAPS_RELOADS.labels("ok").inc()
        logger.info("%s: reloaded (%d capabilities)", self.path, len(result.capabilities))
        return True


def _problem(path: Path, message: str) -> Problem:
    return Problem(str(path), 1, 1, message)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
