"""Suite-wide fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

_OWNED = ("capgate", "capgate.access")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo what an in-process CLI call did to logging (`configure_logging` gives the
    capgate logger its own handler and stops propagation). Left in place, it hides later
    tests' records from caplog, and a canary assertion over caplog would pass vacuously."""
    root = logging.getLogger()
    saved_root_level = root.level  # handlers are pytest's business (per-phase capture)
    saved = {}
    for name in _OWNED:
        logger = logging.getLogger(name)
        saved[name] = (logger.level, logger.propagate, list(logger.handlers), logger.disabled)
    yield
    root.setLevel(saved_root_level)
    for name, (level, propagate, handlers, disabled) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers[:] = handlers
        logger.disabled = disabled
