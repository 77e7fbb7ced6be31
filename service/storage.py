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

One service per database: a :class:`Storage` holds the database's lock (:mod:`service.dblock`)
from before it creates or changes anything until :meth:`Storage.close`; a second one is refused,
naming the holder. A new database is created 0600. A job or run that ended never changes again
(triggers in :data:`SCHEMA`).
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from itertools import repeat
from pathlib import Path

import numpy as np

from drivers.base import ReadResult
from programming.loop import RunParams
from service import dblock
from service.journal import DEFAULT_SIZE as JOURNAL_SIZE
from service.journal import SideJournal, journal_path

log = logging.getLogger("memprog.storage")

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


PENDING = "pending: recorded before firing, not yet confirmed"
"""Note of a pulse reserved in the log before it is fired (:meth:`Storage.reserve_pulses`)."""

UNCERTAIN_FIRE = "uncertain: the trigger went out but no clean confirmation came back"
"""Note of a pulse whose trigger went out on a bench that then failed to confirm it."""

CRASHED_PENDING = (
    "uncertain: recorded before firing; the service stopped before the outcome was recorded"
)
"""Note of a reserved pulse found at start-up: it may or may not have been fired."""


class LogUnavailable(RuntimeError):
    """The operation log cannot take records (a full disk, a database file moved away or
    read-only): nothing new may be fired until it can. The message says what happened to the
    operation that met it."""


def _log_fault(exc: sqlite3.Error) -> bool:
    """Is ``exc`` the database failing (disk full, I/O, read-only, gone, corrupt) rather than
    a statement breaking a constraint (a bug, raised as it is)?"""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def journaled(method: Callable) -> Callable:
    """A write method of :class:`Storage` that must never be lost once something was fired.

    While the database takes writes, the call runs as usual and is remembered until the next
    commit (a commit that fails rolls the transaction back: the calls since the last commit go
    to the side journal then). While the log is failed, or when the call itself fails, the call
    goes to the side journal instead, to be replayed by :meth:`Storage.recover`.
    """
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: Storage, *args: object, **kwargs: object) -> object:
        with self._lock:
            if self._replaying:
                return method(self, *args, **kwargs)
            at = time.time()
            if self.failure is not None:
                self._divert()
                self._to_journal(name, args, kwargs, at)
                return None
            self._now = at
            try:
                result = method(self, *args, **kwargs)
            except sqlite3.Error as exc:
                if not _log_fault(exc):  # a bug (a constraint), not the log failing
                    raise
                self._broke(exc)
                self._to_journal(name, args, kwargs, at)
                return None
            finally:
                self._now = None
            self._pending.append((name, args, kwargs, at))
            return result

    return wrapper


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a database written by an older memprog up to the current schema (additive only)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(operations)")}
    if "note" not in columns:
        conn.execute("ALTER TABLE operations ADD COLUMN note TEXT")
    result_columns = {row[1] for row in conn.execute("PRAGMA table_info(run_results)")}
    if "stopped" not in result_columns:  # older runs: no cell was stopped (NULL)
        conn.execute("ALTER TABLE run_results ADD COLUMN stopped TEXT")


WAL_SIZE_LIMIT = 16 * 1024 * 1024
"""bytes: the WAL file is truncated to this size when a write restarts it after a complete
checkpoint. Auto-checkpoints keep it near 4 MiB; a reader holding one snapshot for long (a sqlite3
shell left in a transaction) lets it grow meanwhile, and without this it would never shrink."""


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level="DEFERRED")
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")  # a WAL grown large shrinks
    return conn


class LogReader:
    """The operation log's read queries, each on its own short read-only connection to
    ``path``: shared by the live :class:`Storage` and by a :class:`Snapshot` of it."""

    path: Path

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
                "SELECT row, col, start, target, final, pulses, converged, stopped "
                "FROM run_results WHERE run_id = ? ORDER BY idx",
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
                "stopped": r["stopped"],
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

    def iter_operations(
        self, run_id: int | None = None, batch: int = 5000, upto_id: int | None = None
    ) -> Iterator[tuple]:
        """Every operation (or a run's) up to ``upto_id`` (default: the last one now), in
        execution order, as tuples in :data:`OPERATION_COLUMNS` order.

        Read ``batch`` rows at a time (:meth:`operations_page`), each page its own short read:
        a consumer that stops half-way (a stalled client) never holds the database, so the WAL
        is checkpointed meanwhile. The bound makes it a snapshot all the same: what is written
        while it runs is not in it."""
        upto = self.last_operation_id() if upto_id is None else upto_id
        after = 0
        while page := self.operations_page(after, upto, run_id, batch):
            yield from page
            after = page[-1][0]

    def operations_page(
        self, after_id: int, upto_id: int, run_id: int | None = None, limit: int = 5000
    ) -> list[tuple]:
        """Up to ``limit`` operations with ``after_id < id <= upto_id`` (of run ``run_id`` if
        given) in execution order, as tuples in :data:`OPERATION_COLUMNS` order: one short read
        — a primary-key range scan (by run: the run index), however large the log."""
        sql = f"SELECT {', '.join(OPERATION_COLUMNS)} FROM operations WHERE id > ? AND id <= ?"
        args: tuple = (after_id, upto_id)
        if run_id is not None:
            sql += " AND run_id = ?"
            args += (run_id,)
        conn = _connect(self.path, readonly=True)
        try:
            return conn.execute(f"{sql} ORDER BY id LIMIT ?", (*args, limit)).fetchall()
        finally:
            conn.close()

    def _iter_operations(self, run_id: int | None, order: str, batch: int) -> Iterator[tuple]:
        # One read for the whole iteration: for a :class:`Snapshot` (nobody writes to it); on
        # the live database it would keep the WAL from being checkpointed until it ends.
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
        order — as tuples in :data:`OPERATION_COLUMNS` order (the per-cell HDF5 export).

        One read for the whole iteration (there is no index to page by cell): call it on a
        :class:`Snapshot` (:meth:`snapshot`), never on the live log of a running service."""
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


class Storage(LogReader):
    """The operation log. Write methods belong to one thread (the backend owner's)."""

    def __init__(
        self, path: str | Path, backend_kind: str | None = None, journal_size: int = JOURNAL_SIZE
    ):
        self.path = Path(path)
        self.backend_kind = backend_kind
        """simulated | hardware: recorded with every operation (set once the backend is known)."""
        self.failure: str | None = None
        """Why the log cannot take records (nothing new is fired meanwhile), None while it can."""
        self._lock = threading.RLock()  # the owner serialises writes; this guards misuse
        self._pending: list[tuple] = []  # write calls since the last commit (journaled if lost)
        self._unjournaled: list[tuple] = []  # records the journal had no room for
        self._replaying = False
        self._now: float | None = None  # a replayed record's original time
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One service per database: locked before anything in it is created or changed, so a
        # second service is refused here, naming the holder, having changed nothing.
        self._dblock = dblock.hold(self.path)
        try:
            self._start(journal_size)
        except BaseException:
            self._dblock.release()
            raise

    def _start(self, journal_size: int) -> None:
        """Open the database (a new one 0600, whatever the umask) and bring it up to date;
        under the database lock."""
        dblock.create_private(self.path)
        self._conn = _connect(self.path)
        st = os.stat(self.path)
        self._file_id = (st.st_dev, st.st_ino)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.executescript(SCHEMA)
        _migrate(self._conn)
        # What a failed log kept aside goes in first; then pulses reserved but never settled
        # (a crash between the two) are kept as uncertain.
        self._journal = SideJournal(journal_path(self.path), journal_size)
        if not self.recover():
            raise LogUnavailable(f"the operation log cannot take writes: {self.failure}")
        self._mark_crashed_pending()
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

    def close(self) -> None:
        try:
            self.commit_durable()
            with self._lock:
                if self.failure is not None:
                    self.recover()  # a last chance to move the side journal in
                self._conn.close()
                self._journal.close()
        finally:
            self._dblock.release()  # after the last write: another service may start now

    # --- writes (backend owner thread) -------------------------------------------------------

    @journaled
    def record_read(self, result: ReadResult, run_id: int | None = None) -> None:
        n = len(result.rows)
        with self._lock:
            self._conn.executemany(
                "INSERT INTO operations (time, kind, row, col, voltage, width, conductance, "
                "current, compliance, run_id, backend) "
                "VALUES (?, 'read', ?, ?, ?, NULL, ?, ?, ?, ?, ?)",
                zip(
                    repeat(self._clock(), n),
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

    @journaled
    def record_pulse(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        voltage: np.ndarray,
        width: np.ndarray,
        run_id: int | None = None,
        note: str | None = None,
    ) -> None:
        """Record pulses that were fired (tools and tests; the service reserves its pulses
        before firing them: :meth:`reserve_pulses`)."""
        with self._lock:
            self._insert_pulses(None, rows, cols, voltage, width, run_id, note)

    def _insert_pulses(
        self,
        first_id: int | None,
        rows: np.ndarray,
        cols: np.ndarray,
        voltage: np.ndarray,
        width: np.ndarray,
        run_id: int | None,
        note: str | None,
    ) -> None:
        rows = np.asarray(rows)
        n = len(rows)
        ids = repeat(None, n) if first_id is None else range(first_id, first_id + n)
        self._conn.executemany(
            "INSERT INTO operations (id, time, kind, row, col, voltage, width, conductance, "
            "current, compliance, run_id, backend, note) "
            "VALUES (?, ?, 'pulse', ?, ?, ?, ?, NULL, NULL, NULL, ?, ?, ?)",
            zip(
                ids,
                repeat(self._clock(), n),
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

    def reserve_pulses(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        voltage: np.ndarray,
        width: np.ndarray,
        run_id: int | None = None,
    ) -> int:
        """Before firing: record the pulses as :data:`PENDING` and commit, so that the log has
        taken them before anything reaches a device. The id of the first (they are
        consecutive); :meth:`settle_pulses` records what was fired.

        Raises :class:`LogUnavailable` — nothing may be fired — when the log cannot take them
        (the commit is the proof that it can: a full disk fails it)."""
        with self._lock:
            self.ensure_writable("nothing fired")
            try:
                (last,) = self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM operations"
                                             ).fetchone()
                self._now = time.time()
                self._insert_pulses(last + 1, rows, cols, voltage, width, run_id, PENDING)
                self._conn.commit()
            except sqlite3.Error as exc:
                if not _log_fault(exc):  # a bug (a constraint), not the log failing
                    raise
                self._broke(exc)
                raise LogUnavailable(
                    f"log unavailable, nothing fired: {self.failure}"
                ) from exc
            finally:
                self._now = None
            self._pending.clear()
            return int(last) + 1

    @journaled
    def settle_pulses(self, first_id: int, n: int, fired: int, uncertain: bool = False) -> None:
        """After firing the pulses reserved from ``first_id``: the first ``fired`` were fired
        (their time is now), the next one perhaps (``uncertain``, kept with a note), the rest
        were not (removed)."""
        fired = max(0, min(int(fired), n))
        maybe = 1 if uncertain and fired < n else 0
        with self._lock:
            self._conn.execute(
                "UPDATE operations SET note = NULL, time = ? WHERE id >= ? AND id < ?",
                (self._clock(), first_id, first_id + fired),
            )
            if maybe:
                self._conn.execute(
                    "UPDATE operations SET note = ?, time = ? WHERE id = ?",
                    (UNCERTAIN_FIRE, self._clock(), first_id + fired),
                )
            self._conn.execute(
                "DELETE FROM operations WHERE id >= ? AND id < ?",
                (first_id + fired + maybe, first_id + n),
            )

    def start_run(self, params: RunParams) -> int:
        """A new run, committed. Raises :class:`LogUnavailable` (nothing fired) when the log
        cannot take it."""
        with self._lock:
            self.ensure_writable("nothing fired")
            try:
                cur = self._conn.execute(
                    "INSERT INTO runs (started, status, strategy, tolerance, max_pulses, "
                    "verify, v_read, backend, n_targets) "
                    "VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?)",
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
            except sqlite3.Error as exc:
                if not _log_fault(exc):  # a bug (a constraint), not the log failing
                    raise
                self._broke(exc)
                raise LogUnavailable(f"log unavailable, nothing fired: {self.failure}") from exc
            self._pending.clear()
            assert cur.lastrowid is not None  # an INSERT names its row
            return int(cur.lastrowid)

    @journaled
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
        stopped: list[str | None] | None = None,
    ) -> None:
        """The run's per-cell results; ``status`` done, or aborted (stopped early).
        ``stopped``: per cell, why the loop stopped it (an untrusted reading), else None."""
        n = len(rows)
        stopped_list = repeat(None, n) if stopped is None else list(stopped)
        final_list = repeat(None, n) if final is None else np.asarray(final, float).tolist()
        conv_list = (
            repeat(None, n) if converged is None else np.asarray(converged).astype(int).tolist()
        )
        with self._lock:
            self._conn.executemany(
                "INSERT INTO run_results (run_id, idx, row, col, start, target, final, pulses, "
                "converged, stopped) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    stopped_list,
                    strict=True,
                ),
            )
            self._conn.execute(
                "UPDATE runs SET status = ?, finished = ?, n_converged = ?, total_pulses = ? "
                "WHERE id = ?",
                (
                    status,
                    self._clock(),
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

    @journaled
    def save_device_memory(
        self, key: str, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, run_id: int | None
    ) -> None:
        """Remember ``values`` under ``key`` for the cells (the finite ones; NaN keeps the old)."""
        values = np.asarray(values, dtype=float).ravel()
        keep = np.isfinite(values)
        now = self._clock()
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

    @journaled
    def fail_run(self, run_id: int, error: str) -> int | None:
        """Mark the run failed; its pulses, as recorded (those of a broken-off batch too).
        None when the log is failed (the end goes to the side journal)."""
        with self._lock:
            (fired,) = self._conn.execute(
                "SELECT COUNT(*) FROM operations WHERE run_id = ? AND kind = 'pulse'", (run_id,)
            ).fetchone()
            self._conn.execute(
                "UPDATE runs SET status = 'failed', finished = ?, error = ?, total_pulses = ? "
                "WHERE id = ?",
                (self._clock(), error, fired, run_id),
            )
        return int(fired)

    def commit(self) -> None:
        """Commit to the WAL: survives a crash of the process, not necessarily a power cut.
        A commit that fails (a full disk) fails the log: what it held goes to the side journal."""
        with self._lock:
            if self.failure is not None:
                self._divert()
                return
            try:
                self._conn.commit()
            except sqlite3.Error as exc:
                self._broke(exc)
                return
            self._pending.clear()

    def commit_durable(self) -> None:
        """Commit and wait for the disk: everything recorded so far survives a power cut.
        While the log is failed the side journal is already durable (each append is synced)."""
        with self._lock:
            self.commit()
            if self.failure is not None:
                return
            # The safety level cannot change inside a transaction, and a commit without
            # changes syncs nothing: write a marker in a FULL transaction, whose WAL fsync
            # also covers every earlier (NORMAL) commit.
            try:
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
            except sqlite3.Error as exc:
                self._broke(exc)

    def rollback(self) -> None:
        with self._lock:
            self._conn.rollback()
            self._pending.clear()

    # --- the log's health: failure, side journal, recovery ----------------------------------

    @property
    def journal_records(self) -> int:
        """Records waiting in the side journal to be replayed into the database."""
        return self._journal.count + len(self._unjournaled)

    def check(self) -> str | None:
        """Any thread, cheap (a stat): why the log cannot take records now, None if it can.
        A database file that was moved, deleted or replaced under the service fails it."""
        if self.failure is None:
            problem = self._file_problem()
            if problem is not None:
                with self._lock:
                    if self.failure is None:
                        self.failure = problem
                        log.error("operation log failed: %s", problem)
        return self.failure

    def ensure_writable(self, consequence: str) -> None:
        """Raise :class:`LogUnavailable` ("log unavailable, <consequence>: why") unless the log
        can take records."""
        problem = self.check()
        if problem is not None:
            raise LogUnavailable(f"log unavailable, {consequence}: {problem}")

    def recover(self) -> bool:
        """Owner thread: once the database file is back in place and takes writes, replay the
        side journal into it and clear the failure. True if the log is healthy afterwards."""
        with self._lock:
            problem = self._file_problem()
            if problem is not None:
                self.failure = self.failure or problem
                return False
            try:
                self._replay()
            except (sqlite3.Error, OSError) as exc:
                try:
                    self._conn.rollback()
                except sqlite3.Error:
                    pass
                self.failure = f"database write failed: {exc}"
                return False
            if self.failure is not None:
                log.warning("operation log recovered (was: %s)", self.failure)
            self.failure = None
            return True

    def _clock(self) -> float:
        """Now, or the original time of a write being replayed from the side journal."""
        return time.time() if self._now is None else self._now

    def _file_problem(self) -> str | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"the database file {self.path} is gone (moved or deleted while in use)"
        except OSError as exc:
            return f"the database file {self.path} cannot be checked: {exc}"
        if (st.st_dev, st.st_ino) != self._file_id:
            return f"the database file {self.path} was replaced while in use"
        return None

    def _broke(self, exc: BaseException) -> None:
        """Under the lock, after a failed write: the log is failed, the open transaction is
        rolled back and what it held goes to the side journal."""
        if self.failure is None:
            self.failure = f"database write failed: {exc}"
            log.error("operation log failed: %s", self.failure)
        try:
            self._conn.rollback()
        except sqlite3.Error:
            pass
        self._divert(rolled_back=True)

    def _divert(self, rolled_back: bool = False) -> None:
        """Under the lock, with the log failed: the writes since the last commit go to the side
        journal, and the transaction that held them is rolled back (never in both places)."""
        if not self._pending:
            return
        if not rolled_back:
            try:
                self._conn.rollback()
            except sqlite3.Error:
                pass
        pending, self._pending = self._pending, []
        for name, args, kwargs, at in pending:
            self._to_journal(name, args, kwargs, at)

    def _to_journal(self, name: str, args: tuple, kwargs: dict, at: float) -> None:
        try:
            self._journal.append(name, args, kwargs, at)
        except OSError as exc:
            # The journal itself failed (full): keep the record in memory, replayed with the
            # journal; it survives everything but a crash of the process.
            log.critical("side journal failed (%s): %s kept in memory only", exc, name)
            self._unjournaled.append((name, args, kwargs, at))

    def _replay(self) -> None:
        """Apply the side journal's records (each once: their uids are kept) in one
        transaction, then empty the journal. Also a probe: it writes even with nothing to
        replay."""
        conn = self._conn
        conn.execute(
            "CREATE TABLE IF NOT EXISTS journal_applied (uid TEXT PRIMARY KEY, applied REAL)"
        )
        records = self._journal.records()
        held = [("", at, name, args, kwargs) for name, args, kwargs, at in self._unjournaled]
        self._replaying = True
        try:
            for uid, at, name, args, kwargs in [*records, *held]:
                if uid and conn.execute(
                    "SELECT 1 FROM journal_applied WHERE uid = ?", (uid,)
                ).fetchone():
                    continue
                self._now = at
                getattr(Storage, name)(self, *args, **kwargs)
                if uid:
                    conn.execute("INSERT INTO journal_applied (uid, applied) VALUES (?, ?)",
                                 (uid, time.time()))
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('log_probe', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (time.time(),),
            )
            conn.commit()
        finally:
            self._replaying = False
            self._now = None
        if records or held:
            log.warning("replayed %d side-journal records into the database",
                        len(records) + len(held))
        self._unjournaled.clear()
        self._journal.reset()

    def _mark_crashed_pending(self) -> None:
        """At start, after the replay: pulses reserved but never settled may have been fired."""
        self._conn.execute(
            "UPDATE operations SET note = ? WHERE kind = 'pulse' AND note = ?",
            (CRASHED_PENDING, PENDING),
        )

    def snapshot(self, dest: str | Path) -> int:
        """Copies the database to ``dest`` (a new file; SQLite's online backup, in one step:
        one short read, at disk speed, which writers do not wait for) and returns the id of the
        last operation in the copy (0: none). Read the copy with :class:`Snapshot`; it holds
        everything the database does (API key hashes too): keep it private, delete it after."""
        src = _connect(self.path, readonly=True)
        try:
            dst = sqlite3.connect(dest)
            try:
                src.backup(dst)  # pages=-1: all in one step, one read transaction
                dst.execute("PRAGMA journal_mode = DELETE")  # a plain file: read-only opens
                return int(dst.execute(
                    "SELECT COALESCE(MAX(id), 0) FROM operations").fetchone()[0])
            finally:
                dst.close()
        finally:
            src.close()

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
        which SQLite serialises with the backend owner's writes. Raises :class:`LogUnavailable`
        (nothing queued) when the log cannot take it."""
        self.ensure_writable("the job was not queued")
        try:
            conn = self._side_writer()
            try:
                cur = conn.execute(
                    "INSERT INTO jobs (created, status, strategy, tolerance, max_pulses, "
                    "verify, v_read, total_cells, submitted_by) "
                    "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
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
                assert cur.lastrowid is not None  # an INSERT names its row
                return int(cur.lastrowid)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            if not _log_fault(exc):  # a bug (a constraint), not the log failing
                raise
            raise LogUnavailable(f"log unavailable, the job was not queued: {exc}") from exc

    @journaled
    def update_job(self, job_id: int, **fields: object) -> None:
        """Backend owner thread: set job columns inside the current transaction (the caller
        commits, e.g. together with a programming iteration's operations)."""
        sql, args = _job_update(job_id, fields)
        with self._lock:
            self._conn.execute(sql, args)

    def update_job_if(self, job_id: int, statuses: tuple[str, ...], **fields: object) -> bool:
        """Any thread: set job columns if the job's status is one of ``statuses``, committed.
        True if it was — or, while the log is failed, if it went to the side journal (the
        condition is then checked when it is replayed)."""
        sql, args = _job_update(job_id, fields)
        sql += f" AND status IN ({', '.join('?' * len(statuses))})"
        if self._replaying:  # on the owner thread, inside the replay's transaction
            return self._conn.execute(sql, (*args, *statuses)).rowcount > 0
        if self.check() is None:
            try:
                conn = self._side_writer()
                try:
                    changed = conn.execute(sql, (*args, *statuses)).rowcount
                    conn.commit()
                finally:
                    conn.close()
                return changed > 0
            except sqlite3.Error as exc:
                if not _log_fault(exc):  # a bug (a constraint), not the log failing
                    raise
                with self._lock:
                    if self.failure is None:
                        self.failure = f"database write failed: {exc}"
                        log.error("operation log failed: %s", self.failure)
        self._to_journal("update_job_if", (job_id, statuses), fields, time.time())
        return True

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
        # mode=rw: a database moved away while in use must never be replaced by a new file
        conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, check_same_thread=False)
        # The owner holds the write lock while it reads a programming iteration's cells (on a
        # bench, a large batch takes seconds): wait for it longer than the default.
        conn.execute("PRAGMA busy_timeout = 60000")
        return conn


class Snapshot(LogReader):
    """A copy of the log made by :meth:`Storage.snapshot`, read with the log's own read
    queries (:class:`LogReader`). Nobody writes to it, so a read may take as long as it likes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)


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

