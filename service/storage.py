"""SQLite storage of every operation and every programming run.

One writer — the backend owner's thread — records each pulse and each read (one row per cell).
The database runs in WAL mode, so readers (``/runs``, ``/export``) never block the writer.
Two kinds of commit:

* :meth:`Storage.commit` (``synchronous=NORMAL``): in the WAL, safe from a crash of the
  process; used after every iteration of a programming run, so a crash mid-run keeps what
  was fired;
* :meth:`Storage.commit_durable` (``synchronous=FULL``): fsyncs the WAL, which holds every
  earlier commit too, so nothing is lost even to a power cut. The backend owner calls it after
  every job, before the request is answered. One fsync per request instead of one per
  iteration: under disk contention an fsync costs milliseconds, more than a simulated pulse.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np

from drivers.base import ReadResult

SCHEMA = """
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

JOB_INTERRUPTED = (
    "the service stopped (crash or restart) while this job was queued or running; "
    "it was not resumed, and every operation it recorded is kept"
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


@dataclass(frozen=True)
class RunParams:
    strategy: str
    tolerance: float
    max_pulses: int
    verify: bool
    v_read: float
    n_targets: int


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a database written by an older memprog up to the current schema (additive only)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(operations)")}
    if "note" not in columns:
        conn.execute("ALTER TABLE operations ADD COLUMN note TEXT")


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level="DEFERRED")
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


class Storage:
    """The operation log. Write methods belong to one thread (the backend owner's)."""

    def __init__(self, path: str | Path, backend_kind: str | None = None):
        self.path = Path(path)
        self.backend_kind = backend_kind
        """simulated | hardware: recorded with every operation (set once the backend is known)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = _connect(self.path)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.executescript(SCHEMA)
        _migrate(self._conn)
        # A run still 'running' at start-up was cut short by a crash; its operations are kept,
        # and its pulse count is what the log holds (pulses are committed as they are fired,
        # ahead of the iteration's verify read and progress).
        fired = ("(SELECT COUNT(*) FROM operations o WHERE o.run_id = {}.{} "
                 "AND o.kind = 'pulse')")
        self._conn.execute(
            "UPDATE runs SET status = 'interrupted', finished = ?, total_pulses = "
            f"{fired.format('runs', 'id')} WHERE status = 'running'",
            (time.time(),),
        )
        # Likewise a job queued or running: marked, never resumed (its operations are kept).
        self._conn.execute(
            "UPDATE jobs SET status = 'interrupted', finished = ?, error = ?, pulses = "
            f"COALESCE({fired.format('jobs', 'run_id')}, 0) "
            "WHERE status IN ('queued', 'running')",
            (time.time(), JOB_INTERRUPTED),
        )
        self._conn.commit()
        self._lock = threading.Lock()  # the owner serialises writes; this guards misuse

    def close(self) -> None:
        self.commit_durable()
        with self._lock:
            self._conn.close()

    # --- writes (backend owner thread) -------------------------------------------------------

    def record_read(self, result: ReadResult, run_id: int | None = None) -> None:
        n = len(result.rows)
        with self._lock:
            self._conn.executemany(
                "INSERT INTO operations (time, kind, row, col, voltage, width, conductance, "
                "current, compliance, run_id, backend) "
                "VALUES (?, 'read', ?, ?, ?, NULL, ?, ?, ?, ?, ?)",
                zip(
                    repeat(time.time(), n),
                    result.rows.tolist(),
                    result.cols.tolist(),
                    repeat(float(result.v_read), n),
                    np.asarray(result.conductance, dtype=float).tolist(),
                    np.asarray(result.current, dtype=float).tolist(),
                    np.asarray(result.compliance, dtype=bool).astype(int).tolist(),
                    repeat(run_id, n),
                    repeat(self.backend_kind, n),
                    strict=True,
                ),
            )

    def record_pulse(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        voltage: np.ndarray,
        width: np.ndarray,
        run_id: int | None = None,
        note: str | None = None,
    ) -> None:
        rows = np.asarray(rows)
        n = len(rows)
        with self._lock:
            self._conn.executemany(
                "INSERT INTO operations (time, kind, row, col, voltage, width, conductance, "
                "current, compliance, run_id, backend, note) "
                "VALUES (?, 'pulse', ?, ?, ?, ?, NULL, NULL, NULL, ?, ?, ?)",
                zip(
                    repeat(time.time(), n),
                    rows.tolist(),
                    np.asarray(cols).tolist(),
                    np.broadcast_to(np.asarray(voltage, dtype=float), rows.shape).tolist(),
                    np.broadcast_to(np.asarray(width, dtype=float), rows.shape).tolist(),
                    repeat(run_id, n),
                    repeat(self.backend_kind, n),
                    repeat(note, n),
                    strict=True,
                ),
            )

    def start_run(self, params: RunParams) -> int:
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO runs (started, status, strategy, tolerance, max_pulses, verify, "
                "v_read, backend, n_targets) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    params.strategy,
                    params.tolerance,
                    params.max_pulses,
                    int(params.verify),
                    params.v_read,
                    self.backend_kind,
                    params.n_targets,
                ),
            )
            self._conn.commit()
            return int(cur.lastrowid)

    def finish_run(
        self,
        run_id: int,
        *,
        rows: np.ndarray,
        cols: np.ndarray,
        start: np.ndarray,
        target: np.ndarray,
        final: np.ndarray | None,
        pulses: np.ndarray,
        converged: np.ndarray | None,
        status: str = "done",
    ) -> None:
        """The run's per-cell results; ``status`` done, or aborted (stopped early)."""
        n = len(rows)
        final_list = repeat(None, n) if final is None else np.asarray(final, float).tolist()
        conv_list = (
            repeat(None, n) if converged is None else np.asarray(converged).astype(int).tolist()
        )
        with self._lock:
            self._conn.executemany(
                "INSERT INTO run_results (run_id, idx, row, col, start, target, final, pulses, "
                "converged) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                zip(
                    repeat(run_id, n),
                    range(n),
                    np.asarray(rows).tolist(),
                    np.asarray(cols).tolist(),
                    np.asarray(start, float).tolist(),
                    np.asarray(target, float).tolist(),
                    final_list,
                    np.asarray(pulses).astype(int).tolist(),
                    conv_list,
                    strict=True,
                ),
            )
            self._conn.execute(
                "UPDATE runs SET status = ?, finished = ?, n_converged = ?, total_pulses = ? "
                "WHERE id = ?",
                (
                    status,
                    time.time(),
                    None if converged is None else int(np.count_nonzero(converged)),
                    int(np.sum(pulses)),
                    run_id,
                ),
            )

    def device_memory(self, key: str, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The values remembered under ``key`` for the cells (rows[i], cols[i]); NaN where none."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        cols = np.asarray(cols, dtype=np.int64).ravel()
        with self._lock:
            found = self._conn.execute(
                "SELECT row, col, value FROM device_memory WHERE key = ?", (key,)
            ).fetchall()
        out = np.full(rows.size, np.nan)
        if not found or rows.size == 0:
            return out
        table = np.asarray(found, dtype=float)
        width = int(max(table[:, 1].max(), cols.max())) + 1
        known = table[:, 0].astype(np.int64) * width + table[:, 1].astype(np.int64)
        order = np.argsort(known)
        known, values = known[order], table[order, 2]
        wanted = rows * width + cols
        at = np.minimum(np.searchsorted(known, wanted), known.size - 1)
        hit = known[at] == wanted
        out[hit] = values[at[hit]]
        return out

    def save_device_memory(
        self, key: str, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, run_id: int | None
    ) -> None:
        """Remember ``values`` under ``key`` for the cells (the finite ones; NaN keeps the old)."""
        values = np.asarray(values, dtype=float).ravel()
        keep = np.isfinite(values)
        now = time.time()
        with self._lock:
            self._conn.executemany(
                "INSERT OR REPLACE INTO device_memory (key, row, col, value, updated, run_id) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                zip(
                    repeat(key),
                    np.asarray(rows, dtype=np.int64).ravel()[keep].tolist(),
                    np.asarray(cols, dtype=np.int64).ravel()[keep].tolist(),
                    values[keep].tolist(),
                    repeat(now),
                    repeat(run_id),
                ),
            )

    def fail_run(self, run_id: int, error: str) -> int:
        """Mark the run failed; its pulses, as recorded (those of a broken-off batch too)."""
        with self._lock:
            (fired,) = self._conn.execute(
                "SELECT COUNT(*) FROM operations WHERE run_id = ? AND kind = 'pulse'", (run_id,)
            ).fetchone()
            self._conn.execute(
                "UPDATE runs SET status = 'failed', finished = ?, error = ?, total_pulses = ? "
                "WHERE id = ?",
                (time.time(), error, fired, run_id),
            )
        return int(fired)

    def commit(self) -> None:
        """Commit to the WAL: survives a crash of the process, not necessarily a power cut."""
        with self._lock:
            self._conn.commit()

    def commit_durable(self) -> None:
        """Commit and wait for the disk: everything recorded so far survives a power cut."""
        with self._lock:
            self._conn.commit()
            # The safety level cannot change inside a transaction, and a commit without
            # changes syncs nothing: write a marker in a FULL transaction, whose WAL fsync
            # also covers every earlier (NORMAL) commit.
            self._conn.execute("PRAGMA synchronous = FULL")
            try:
                self._conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('durable_commit', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (time.time(),),
                )
                self._conn.commit()
            finally:
                self._conn.execute("PRAGMA synchronous = NORMAL")

    def rollback(self) -> None:
        with self._lock:
            self._conn.rollback()

    # --- reads (any thread; each call opens its own read-only connection) -------------------

    def _reader(self) -> sqlite3.Connection:
        conn = _connect(self.path, readonly=True)
        conn.row_factory = sqlite3.Row
        return conn

    def list_runs(self, limit: int = 100, offset: int = 0) -> list[dict]:
        conn = self._reader()
        try:
            rows = conn.execute(
                f"SELECT {', '.join(RUN_COLUMNS)} FROM runs ORDER BY id DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        finally:
            conn.close()
        return [_run_dict(row) for row in rows]

    def get_run(self, run_id: int) -> dict | None:
        conn = self._reader()
        try:
            row = conn.execute(
                f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None:
                return None
            run = _run_dict(row)
            results = conn.execute(
                "SELECT row, col, start, target, final, pulses, converged FROM run_results "
                "WHERE run_id = ? ORDER BY idx",
                (run_id,),
            ).fetchall()
        finally:
            conn.close()
        run["results"] = [
            {
                "row": r["row"],
                "col": r["col"],
                "start": r["start"],
                "target": r["target"],
                "final": r["final"],
                "pulses": r["pulses"],
                "converged": None if r["converged"] is None else bool(r["converged"]),
            }
            for r in results
        ]
        return run

    def run_traces(self, run_id: int) -> dict[tuple[int, int], list[dict]]:
        """Per cell, each pulse of the run with the read that followed it (if any)."""
        conn = self._reader()
        try:
            ops = conn.execute(
                "SELECT kind, row, col, voltage, width, conductance FROM operations "
                "WHERE run_id = ? ORDER BY id",
                (run_id,),
            ).fetchall()
        finally:
            conn.close()
        traces: dict[tuple[int, int], list[dict]] = {}
        for op in ops:
            cell = (op["row"], op["col"])
            steps = traces.setdefault(cell, [])
            if op["kind"] == "pulse":
                steps.append({"voltage": op["voltage"], "width": op["width"], "conductance": None})
            elif steps and steps[-1]["conductance"] is None:
                steps[-1]["conductance"] = op["conductance"]
        return traces

    def iter_operations(self, run_id: int | None = None, batch: int = 5000) -> Iterator[tuple]:
        """Every operation in execution order, as tuples in :data:`OPERATION_COLUMNS` order."""
        return self._iter_operations(run_id, "id", batch)

    def _iter_operations(self, run_id: int | None, order: str, batch: int) -> Iterator[tuple]:
        conn = _connect(self.path, readonly=True)
        try:
            sql = f"SELECT {', '.join(OPERATION_COLUMNS)} FROM operations"
            args: tuple = ()
            if run_id is not None:
                sql += " WHERE run_id = ?"
                args = (run_id,)
            cur = conn.execute(f"{sql} ORDER BY {order}", args)
            while rows := cur.fetchmany(batch):
                yield from rows
        finally:
            conn.close()

    def count_operations(self) -> dict[str, int]:
        conn = _connect(self.path, readonly=True)
        try:
            counts = dict(conn.execute("SELECT kind, COUNT(*) FROM operations GROUP BY kind"))
        finally:
            conn.close()
        return {"read": counts.get("read", 0), "pulse": counts.get("pulse", 0)}

    def reads_after(self, after_id: int = 0, limit: int = 100_000) -> list[tuple]:
        """Up to ``limit`` reads with ``id > after_id`` in execution order, as tuples
        ``(id, row, col, conductance S, time Unix s)`` — a primary-key range scan, so a caller
        keeping the last id it saw (the dashboard's conductance map) reads only what is new."""
        conn = _connect(self.path, readonly=True)
        try:
            return conn.execute(
                "SELECT id, row, col, conductance, time FROM operations "
                "WHERE id > ? AND kind = 'read' ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        finally:
            conn.close()

    def last_operation_id(self) -> int:
        """The id of the newest operation, 0 when there is none."""
        conn = _connect(self.path, readonly=True)
        try:
            return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM operations").fetchone()[0])
        finally:
            conn.close()

    def iter_operations_by_cell(
        self, run_id: int | None = None, batch: int = 5000
    ) -> Iterator[tuple]:
        """Every operation (or a run's), grouped by cell — ordered by row, col, then execution
        order — as tuples in :data:`OPERATION_COLUMNS` order (the per-cell HDF5 export)."""
        return self._iter_operations(run_id, "row, col, id", batch)

    def list_all_runs(self) -> list[dict]:
        """Every run, oldest first (without per-cell results)."""
        conn = self._reader()
        try:
            rows = conn.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs ORDER BY id").fetchall()
        finally:
            conn.close()
        return [_run_dict(row) for row in rows]


    # --- jobs (service/jobs.py) --------------------------------------------------------------

    def create_job(
        self,
        *,
        strategy: str,
        tolerance: float,
        max_pulses: int,
        verify: bool,
        v_read: float,
        total_cells: int,
        submitted_by: str | None = None,
    ) -> int:
        """A new ``queued`` job, committed. Any thread: it writes through its own connection,
        which SQLite serialises with the backend owner's writes."""
        conn = self._side_writer()
        try:
            cur = conn.execute(
                "INSERT INTO jobs (created, status, strategy, tolerance, max_pulses, verify, "
                "v_read, total_cells, submitted_by) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    strategy,
                    tolerance,
                    max_pulses,
                    int(verify),
                    v_read,
                    total_cells,
                    submitted_by,
                ),
            )
            conn.commit()
            return int(cur.lastrowid)
        finally:
            conn.close()

    def update_job(self, job_id: int, **fields: object) -> None:
        """Backend owner thread: set job columns inside the current transaction (the caller
        commits, e.g. together with a programming iteration's operations)."""
        sql, args = _job_update(job_id, fields)
        with self._lock:
            self._conn.execute(sql, args)

    def update_job_if(self, job_id: int, statuses: tuple[str, ...], **fields: object) -> bool:
        """Any thread: set job columns if the job's status is one of ``statuses``, committed.
        True if it was."""
        sql, args = _job_update(job_id, fields)
        sql += f" AND status IN ({', '.join('?' * len(statuses))})"
        conn = self._side_writer()
        try:
            changed = conn.execute(sql, (*args, *statuses)).rowcount
            conn.commit()
        finally:
            conn.close()
        return changed > 0

    def get_job(self, job_id: int) -> dict | None:
        conn = self._reader()
        try:
            row = conn.execute(
                f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        finally:
            conn.close()
        return None if row is None else _job_dict(row)

    def list_jobs(self, limit: int = 100, offset: int = 0) -> list[dict]:
        """Jobs, newest first."""
        conn = self._reader()
        try:
            rows = conn.execute(
                f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs ORDER BY id DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        finally:
            conn.close()
        return [_job_dict(row) for row in rows]

    def count_jobs(self) -> dict[str, int]:
        """Jobs per status."""
        conn = _connect(self.path, readonly=True)
        try:
            return dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"))
        finally:
            conn.close()

    def _side_writer(self) -> sqlite3.Connection:
        conn = _connect(self.path)
        # The owner holds the write lock while it reads a programming iteration's cells (on a
        # bench, a large batch takes seconds): wait for it longer than the default.
        conn.execute("PRAGMA busy_timeout = 60000")
        return conn


def _job_update(job_id: int, fields: dict[str, object]) -> tuple[str, tuple]:
    unknown = set(fields) - set(JOB_COLUMNS[1:])
    if unknown:
        raise KeyError(f"not job columns: {sorted(unknown)}")
    names = list(fields)
    sql = f"UPDATE jobs SET {', '.join(f'{name} = ?' for name in names)} WHERE id = ?"
    return sql, (*(fields[name] for name in names), job_id)


def _job_dict(row: sqlite3.Row) -> dict:
    job = {name: row[name] for name in JOB_COLUMNS}
    job["verify"] = bool(job["verify"])
    return job

def _run_dict(row: sqlite3.Row) -> dict:
    run = {name: row[name] for name in RUN_COLUMNS}
    run["verify"] = bool(run["verify"])
    return run

