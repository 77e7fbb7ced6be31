"""Shared fixtures of the service tests: settings for a small simulated array, an in-process app."""

from __future__ import annotations

import warnings

import pytest

from service.config import Settings


@pytest.fixture
def sim_settings(tmp_path) -> Settings:
    """A 16×16 realistic simulated array with its own SQLite file."""
    return Settings(
        backend="sim",
        database=tmp_path / "memprog.db",
        sim={"rows": 16, "cols": 16, "seed": 7, "variability": "realistic"},
    )


@pytest.fixture
def client_for():
    """Opens a TestClient on an app (use as a context manager: it runs the lifespan)."""
    with warnings.catch_warnings():
        # starlette's TestClient warns that it will move from httpx to httpx2: irrelevant here.
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient
    return TestClient


@pytest.fixture
def api(sim_settings, client_for):
    """The real app (real Crossbar, real SQLite) in process."""
    from service.app import create_app

    with client_for(create_app(sim_settings)) as client:
        yield client


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the session (tests/pg.py); Debian's postgresql package
    must be installed (``make test`` does it)."""
    from tests.pg import PostgresServer

    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A new, empty database on the session's PostgreSQL server."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request, tmp_path) -> str | object:
    """Where a storage test's log lives: an SQLite file, then a PostgreSQL database (the storage
    tests run against both stores)."""
    if request.param == "sqlite":
        return tmp_path / "store.db"
    return request.getfixturevalue("postgres_url")
