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


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """A private PostgreSQL cluster for the session (tests/pg.py), stopped by PID at the end.

    In CI (CI=true) a cluster that cannot start is a test error; elsewhere the tests that
    need it are skipped with the reason.
    """
    import os

    from tests.pg import PostgresUnavailable, PrivatePostgres

    try:
        pg = PrivatePostgres.start()
    except PostgresUnavailable as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no private PostgreSQL: {exc}")
    yield pg
    pg.stop()


@pytest.fixture
def pg_urls(postgres: object, request: pytest.FixtureRequest) -> tuple[str, str]:
    """A fresh pair of databases (control, vault) for one test."""
    import secrets

    from tests.pg import PrivatePostgres

    assert isinstance(postgres, PrivatePostgres)
    tag = secrets.token_hex(4)
    return postgres.create_database(f"control_{tag}"), postgres.create_database(f"vault_{tag}")
