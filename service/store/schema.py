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
    "station",
    "energy",
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
    "station",
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
    "station",
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
    "station",
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


# No index on the station columns: an SQLite file is one station's (its lock), so every row
# matches and an index would only add to every write (PostgreSQL, shared, has them).
STATION_TABLES = """
CREATE TABLE device_memory_by_station (
    station TEXT NOT NULL,            -- the station whose device it is (MEMPROG_STATION)
    key TEXT NOT NULL,
    row INTEGER NOT NULL,
    col INTEGER NOT NULL,
    value REAL NOT NULL,
    updated REAL NOT NULL,            -- Unix time, s
    run_id INTEGER REFERENCES runs(id),
    PRIMARY KEY (station, key, row, col)
);
CREATE TABLE IF NOT EXISTS stations (  -- each service's heartbeat (service/stations.py)
    name TEXT PRIMARY KEY,
    backend TEXT,                     -- simulated | hardware
    instruments TEXT,                 -- JSON: the instruments' identities
    started REAL,                     -- Unix time, s
    heartbeat REAL NOT NULL,          -- Unix time, s: the last beat
    running_job INTEGER,
    health TEXT,                      -- JSON: the station's /health
    version TEXT,
    host TEXT,
    pid INTEGER,
    listen TEXT
);
CREATE TABLE IF NOT EXISTS key_uses (  -- which station accepted which key, how often
    key_id INTEGER NOT NULL REFERENCES api_keys(id),
    station TEXT NOT NULL,
    first_used REAL NOT NULL,         -- Unix time, s
    last_used REAL NOT NULL,          -- Unix time, s
    uses INTEGER NOT NULL,
    PRIMARY KEY (key_id, station)
);
CREATE TABLE IF NOT EXISTS model_activations (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,               -- Unix time, s
    station TEXT NOT NULL,
    model TEXT NOT NULL,              -- the model file made active
    fingerprint TEXT,
    reason TEXT NOT NULL              -- calibration <id> | activate (API) | start
);
"""


def _stations(conn: sqlite3.Connection, station: str) -> None:
    """Version 5: station identity. Every operation, run, job and calibration names the
    station that made it (the rows already there: ``station``, the one migrating); device
    memory is per station (a new primary key: the table is rebuilt); heartbeats, key uses and
    model activations get tables of their own."""
    # Ended jobs and runs never change (their triggers skip any update): lifted for this
    # one step, made again by the 0.1.0 script (IF NOT EXISTS) right after.
    conn.execute("DROP TRIGGER IF EXISTS jobs_end_is_final")
    conn.execute("DROP TRIGGER IF EXISTS runs_end_is_final")
    for table in ("operations", "runs", "jobs", "calibrations"):
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if "station" not in columns:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN station TEXT")
        conn.execute(f"UPDATE {table} SET station = ? WHERE station IS NULL", (station,))
    conn.executescript(RELEASE_0_1)
    # A step cut short before its version was recorded runs again: start its rebuild afresh.
    conn.execute("DROP TABLE IF EXISTS device_memory_by_station")
    conn.executescript(STATION_TABLES)
    conn.execute(
        "INSERT INTO device_memory_by_station (station, key, row, col, value, updated, run_id) "
        "SELECT ?, key, row, col, value, updated, run_id FROM device_memory",
        (station,),
    )
    conn.execute("DROP TABLE device_memory")
    conn.execute("ALTER TABLE device_memory_by_station RENAME TO device_memory")


def _pulse_energy(conn: sqlite3.Connection, station: str) -> None:
    """Version 6: the energy a pulse delivered to its device (J; simulated, or estimated from
    the reads around it on a bench; NULL for reads and for pulses recorded before)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(operations)")}
    if "energy" not in columns:
        conn.execute("ALTER TABLE operations ADD COLUMN energy REAL")


LAYERS = """
CREATE TABLE IF NOT EXISTS layers (   -- weight matrices held in the array (service/layers.py)
    station TEXT NOT NULL,            -- the station whose array holds it
    name TEXT NOT NULL,
    created REAL NOT NULL,            -- Unix time, s
    rows INTEGER NOT NULL,            -- inputs (word lines)
    outputs INTEGER NOT NULL,         -- outputs (pairs of bit lines)
    origin_row INTEGER NOT NULL,      -- the tile's first cell
    origin_col INTEGER NOT NULL,
    mapping TEXT NOT NULL,            -- JSON: kind, g_min and g_max (S), low_power, scale (S/unit)
    weights TEXT NOT NULL,            -- JSON: rows x outputs
    job_id INTEGER REFERENCES jobs(id), -- the job that programs it
    PRIMARY KEY (station, name)
);
"""


def _layers(conn: sqlite3.Connection, station: str) -> None:
    """Version 7: weight matrices held in the array (layers)."""
    conn.executescript(LAYERS)


def _with_station(step: Callable[[sqlite3.Connection], None]) -> Callable:
    return lambda conn, station: step(conn)


STEPS: tuple[Callable[[sqlite3.Connection, str], None], ...] = (
    _with_station(_release_0_1),
    _with_station(_journal_applied),
    _with_station(_api_keys),
    _with_station(_calibrations),
    _stations,
    _pulse_energy,
    _layers,
)
"""Migration steps in order: ``STEPS[n - 1]`` brings version n - 1 to n."""

VERSION = len(STEPS)
"""The schema version this code writes."""


def migrate(conn: sqlite3.Connection, station: str) -> int:
    """Bring the database of ``conn`` to :data:`VERSION`; the version it was at. A database of
    a newer memprog is refused (its schema is not known here). ``station``: the station that
    the rows written before version 5 belong to."""
    (found,) = conn.execute("PRAGMA user_version").fetchone()
    if found > VERSION:
        raise RuntimeError(
            f"database schema version {found} is newer than this memprog's ({VERSION})"
        )
    for version in range(found + 1, VERSION + 1):
        STEPS[version - 1](conn, station)
        conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    return int(found)
