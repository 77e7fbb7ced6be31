"""A database written by the released memprog 0.1.0 (``tests/fixtures/memprog-0.1.0.db``, made by
``tests/fixtures/make_release_db.py`` with the release's own code) opens with today's store: it is
upgraded step by step (``PRAGMA user_version``), loses no row, ends with the same schema as a
new database, and a second open changes nothing."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from service.store import Storage
from service.store import schema as store_schema
from service.store.keys import KeyStore

FIXTURE = Path(__file__).parent / "fixtures" / "memprog-0.1.0.db"
TABLES = ("runs", "run_results", "operations", "meta", "device_memory", "jobs", "api_keys")


def rows(db: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


def counts(db: Path) -> dict[str, int]:
    return {t: rows(db, f"SELECT COUNT(*) FROM {t}")[0][0] for t in TABLES}


def shape(db: Path) -> dict[str, object]:
    """Columns of every table (name, type, not null, default, primary key), and the names of
    the indexes and triggers."""
    with closing(sqlite3.connect(db)) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        tables = {n: [tuple(c[1:]) for c in conn.execute(f"PRAGMA table_info({n})")]
                  for n in names}
        others = sorted(conn.execute(
            "SELECT type, name FROM sqlite_master WHERE type IN ('index', 'trigger') "
            "AND name NOT LIKE 'sqlite_autoindex%'").fetchall())
    return {"tables": tables, "others": others}


def open_and_close(db: Path) -> None:
    Storage(db, backend_kind="simulated").close()
    KeyStore(db).list()  # the keys table is its own class's (made on its first use)


@pytest.fixture
def release_db(tmp_path) -> Path:
    db = tmp_path / "memprog.db"
    shutil.copy(FIXTURE, db)
    return db


def test_the_fixture_is_a_release_database():
    assert rows(FIXTURE, "PRAGMA user_version") == [(0,)]
    assert counts(FIXTURE) == {"runs": 2, "run_results": 6, "operations": 156, "meta": 2,
                               "device_memory": 4, "jobs": 2, "api_keys": 1}


def columns(db: Path, table: str) -> str:
    return ", ".join(r[1] for r in rows(db, f"PRAGMA table_info({table})"))


def test_a_release_database_is_upgraded_without_losing_a_row(release_db):
    before = counts(release_db)
    # the release's columns, read again after the upgrade (which adds a station to some)
    queries = {table: f"SELECT {columns(release_db, table)} FROM {table} ORDER BY {order}"
               for table, order in (("operations", "id"), ("runs", "id"),
                                    ("run_results", "run_id, idx"), ("jobs", "id"),
                                    ("device_memory", "row, col"), ("api_keys", "id"))}
    old = {table: rows(release_db, sql) for table, sql in queries.items()}

    Storage(release_db, backend_kind="simulated", station="bench-3").close()
    KeyStore(release_db).list()

    assert rows(release_db, "PRAGMA user_version") == [(store_schema.VERSION,)]
    assert counts(release_db) == before
    for table, sql in queries.items():
        assert rows(release_db, sql) == old[table], table
    # the rows already there are the upgrading station's
    for table in ("operations", "runs", "jobs", "device_memory"):
        assert rows(release_db, f"SELECT DISTINCT station FROM {table}") == [("bench-3",)]
    # what the release recorded reads back through today's code
    with closing(Storage(release_db, backend_kind="simulated", station="bench-3")) as storage:
        assert [r["status"] for r in storage.list_all_runs()] == ["done", "done"]
        assert [j["status"] for j in storage.list_jobs()] == ["interrupted", "completed"]
        assert storage.last_operation_id() == old["operations"][-1][0]


def test_an_upgraded_database_has_the_schema_of_a_new_one(release_db, tmp_path):
    open_and_close(release_db)
    new = tmp_path / "new.db"
    open_and_close(new)
    assert shape(release_db) == shape(new)
    assert rows(new, "PRAGMA user_version") == [(store_schema.VERSION,)]


def test_a_second_open_changes_nothing(release_db):
    open_and_close(release_db)
    first = (shape(release_db), counts(release_db),
             rows(release_db, "SELECT * FROM operations ORDER BY id"))
    open_and_close(release_db)
    assert (shape(release_db), counts(release_db),
            rows(release_db, "SELECT * FROM operations ORDER BY id")) == first


def test_a_database_of_a_newer_memprog_is_refused(release_db):
    with closing(sqlite3.connect(release_db)) as conn:
        conn.execute(f"PRAGMA user_version = {store_schema.VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        Storage(release_db, backend_kind="simulated")


def test_only_the_dialect_modules_know_which_database_it_is():
    """The tables' SQL is the same on both stores: SQLite's driver, pragmas, catalogue and
    SQLite-only statements appear in ``db.py`` and ``schema.py`` alone; PostgreSQL's driver and
    constructs in ``postgres.py`` and ``postgres_schema.py`` (and ``db.py``'s error types)."""
    store = Path(store_schema.__file__).parent
    sqlite_only = ("import sqlite3", "PRAGMA", "sqlite_master", "INSERT OR ", "REPLACE INTO",
                   "executescript")
    postgres_only = ("import psycopg", "pg_advisory", "IDENTITY", "plpgsql")
    for module in sorted(store.glob("*.py")):
        text = module.read_text()
        if module.name not in ("db.py", "schema.py"):
            assert [s for s in sqlite_only if s in text] == [], module.name
        if module.name not in ("postgres.py", "postgres_schema.py", "db.py"):
            assert [s for s in postgres_only if s in text] == [], module.name
