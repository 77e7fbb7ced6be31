"""The database schema as an ordered list of migration steps, keyed by ``PRAGMA user_version``.

Step N brings a database at version N-1 to version N; :func:`migrate` runs the steps a database
has not had, in order, each once, and records the version. A new database runs them all. A
database written by memprog 0.1.0 (version 0, its tables already there) gets step 1 - written
``IF NOT EXISTS`` and additive, so it changes nothing that is there - and the later ones.

A new table or column is a new step appended to :data:`STEPS`; a step never changes once
released. With :mod:`service.store.db`, the only SQLite-specific place of the store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

RELEASE_0_1 = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,            -- Unix time, s
    finished REAL,                    -- Unix time, s; NULL while running
    status TEXT NOT NULL,             -- running | done | failed | interrupted | aborted
    strategy TEXT NOT NULL,
    tolerance REAL NOT NULL,          -- relative to the target
    max_pulses INTEGER NOT NULL,
    verify INTEGER NOT NULL,
    v_read REAL NOT NULL,             -- V
    backend TEXT NOT NULL,            -- simulated | hardware
    n_targets INTEGER NOT NULL,
    n_converged INTEGER,
    total_pulses INTEGER,
    error TEXT
);
CREATE TABLE IF NOT EXISTS run_results (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    idx INTEGER NOT NULL,
    row INTEGER NOT NULL,
    col INTEGER NOT NULL,
    start REAL NOT NULL,              -- S
    target REAL NOT NULL,             -- S
    final REAL,                       -- S; NULL without verify
    pulses INTEGER NOT NULL,
    converged INTEGER,                -- NULL without verify
    stopped TEXT,                     -- why the loop stopped the cell (untrusted reading); NULL
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS operations (
    id INTEGER PRIMARY KEY,           -- order of execution
    time REAL NOT NULL,               -- Unix time, s
    kind TEXT NOT NULL CHECK (kind IN ('read', 'pulse')),
    row INTEGER NOT NULL,
    col INTEGER NOT NULL,
    voltage REAL NOT NULL,            -- pulse amplitude or read voltage, V
    width REAL,                       -- pulse width, s; NULL for reads
    conductance REAL,                 -- read: I / V_read, S; NULL for pulses
    current REAL,                     -- read: A; NULL for pulses
    compliance INTEGER,               -- read: 1 if the compliance tripped
    run_id INTEGER REFERENCES runs(id),
    backend TEXT NOT NULL,            -- simulated | hardware
    note TEXT                         -- e.g. 'uncertain': the trigger went out, no confirmation
);
CREATE INDEX IF NOT EXISTS operations_run ON operations(run_id);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value REAL
);
CREATE TABLE IF NOT EXISTS device_memory (  -- what a strategy learned per device, across runs
    key TEXT NOT NULL,                -- what it is, e.g. predictor/<model>/<version>/<sha256>
    row INTEGER NOT NULL,
    col INTEGER NOT NULL,
    value REAL NOT NULL,              -- e.g. the device's speed latent z (dimensionless)
    updated REAL NOT NULL,            -- Unix time, s
    run_id INTEGER REFERENCES runs(id),
    PRIMARY KEY (key, row, col)
);
CREATE TABLE IF NOT EXISTS jobs (     -- background programming jobs (service/jobs.py)
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,            -- Unix time, s
    started REAL,                     -- Unix time, s; NULL while queued
    finished REAL,                    -- Unix time, s; NULL until it ends
    status TEXT NOT NULL,             -- queued|running|completed|failed|aborted|interrupted
    strategy TEXT NOT NULL,
    tolerance REAL NOT NULL,          -- relative to the target
    max_pulses INTEGER NOT NULL,
    verify INTEGER NOT NULL,
    v_read REAL NOT NULL,             -- V
    total_cells INTEGER NOT NULL,
    cells_done INTEGER NOT NULL DEFAULT 0,
    cells_converged INTEGER NOT NULL DEFAULT 0,
    pulses INTEGER NOT NULL DEFAULT 0,
    run_id INTEGER REFERENCES runs(id),
    submitted_by TEXT,                -- API key name, NULL without authentication
    error TEXT
);
-- An end is final: a job or run that ended never changes again, whoever writes (a late write
-- of a stopped loop, a second process, a hand-made UPDATE is skipped, the row kept as it is).
CREATE TRIGGER IF NOT EXISTS jobs_end_is_final BEFORE UPDATE ON jobs
WHEN OLD.status IN ('completed', 'failed', 'aborted', 'interrupted')
BEGIN SELECT RAISE(IGNORE); END;
CREATE TRIGGER IF NOT EXISTS runs_end_is_final BEFORE UPDATE ON runs
WHEN OLD.status IN ('done', 'failed', 'interrupted', 'aborted')
BEGIN SELECT RAISE(IGNORE); END;
"""


OPERATION_COLUMNS = (
    "id",
    "time",
    "kind",
    "row",
    "col",
    "voltage",
    "width",
    "conductance",
    "current",
    "compliance",
    "run_id",
    "backend",
    "note",
)

JOB_COLUMNS = (
    "id",
    "created",
    "started",
    "finished",
    "status",
    "strategy",
    "tolerance",
    "max_pulses",
    "verify",
    "v_read",
    "total_cells",
    "cells_done",
    "cells_converged",
    "pulses",
    "run_id",
    "submitted_by",
    "error",
)

CALIBRATION_COLUMNS = (
    "id",
    "created",
    "finished",
    "status",
    "job_id",
    "cells",
    "pulses_per_cell",
    "activate",
    "parent",
    "model_path",
    "activated",
    "report",
    "error",
    "submitted_by",
)

RUN_COLUMNS = (
    "id",
    "started",
    "finished",
    "status",
    "strategy",
    "tolerance",
    "max_pulses",
    "verify",
    "v_read",
    "backend",
    "n_targets",
    "n_converged",
    "total_pulses",
    "error",
)


def _release_0_1(conn: sqlite3.Connection) -> None:
    """Version 1: the schema of memprog 0.1.0; also brings an older database up to it (columns
    added since: an operation's ``note``, a cell's ``stopped``; NULL in old rows)."""
    conn.executescript(RELEASE_0_1)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(operations)")}
    if "note" not in columns:
        conn.execute("ALTER TABLE operations ADD COLUMN note TEXT")
    result_columns = {row[1] for row in conn.execute("PRAGMA table_info(run_results)")}
    if "stopped" not in result_columns:  # older runs: no cell was stopped (NULL)
        conn.execute("ALTER TABLE run_results ADD COLUMN stopped TEXT")


def _journal_applied(conn: sqlite3.Connection) -> None:
    """Version 2: the side journal's records applied so far (each once, by uid); 0.1.0 made
    this table on its first replay."""
    conn.execute("CREATE TABLE IF NOT EXISTS journal_applied (uid TEXT PRIMARY KEY, applied REAL)")


API_KEYS = """
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL CHECK (scope IN ('read', 'program', 'admin')),
    hint TEXT NOT NULL,               -- the key's first characters, to recognise it in listings
    hash TEXT NOT NULL UNIQUE,        -- SHA-256 of the key, hex
    created REAL NOT NULL,            -- Unix time, s
    revoked REAL                      -- Unix time, s; NULL while valid
);
"""


def _api_keys(conn: sqlite3.Connection) -> None:
    """Version 3: the API keys (:mod:`service.store.keys`); 0.1.0 made this table when its key
    store first opened the database."""
    conn.executescript(API_KEYS)


CALIBRATIONS = """
CREATE TABLE IF NOT EXISTS calibrations (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,            -- Unix time, s
    finished REAL,                    -- Unix time, s; NULL until it ended
    status TEXT NOT NULL,             -- pulsing | fitting | completed | failed | aborted |
                                      -- interrupted
    job_id INTEGER REFERENCES jobs(id), -- the job that fired its pulses
    cells INTEGER NOT NULL,           -- cells pulsed
    pulses_per_cell INTEGER NOT NULL,
    activate TEXT NOT NULL,           -- if_better | always | never
    parent TEXT NOT NULL,             -- fingerprint of the model it was calibrated from
    model_path TEXT,                  -- the adapted model written, NULL until then
    activated INTEGER,                -- 1 if it was made the active model
    report TEXT,                      -- JSON: records, held-out fit, correction
    error TEXT,
    submitted_by TEXT
);
"""


def _calibrations(conn: sqlite3.Connection) -> None:
    """Version 4: calibrations of the pulse predictor to this station's devices
    (:mod:`service.calibrations`)."""
    conn.executescript(CALIBRATIONS)


STEPS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _release_0_1,
    _journal_applied,
    _api_keys,
    _calibrations,
)
"""Migration steps in order: ``STEPS[n - 1]`` brings version n - 1 to n."""

VERSION = len(STEPS)
"""The schema version this code writes."""


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database of ``conn`` to :data:`VERSION`; the version it was at. A database of
    a newer memprog is refused (its schema is not known here)."""
    (found,) = conn.execute("PRAGMA user_version").fetchone()
    if found > VERSION:
        raise RuntimeError(
            f"database schema version {found} is newer than this memprog's ({VERSION})"
        )
    for version in range(found + 1, VERSION + 1):
        STEPS[version - 1](conn)
        conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    return int(found)
