"""The operation log's read queries (:class:`LogReader`), shared by the live
:class:`service.store.Storage` and by a :class:`Snapshot` of it (exports).

Invariants: every query runs on its own short read-only connection
(:func:`service.store.db.reading`), so a reader never blocks the writer nor holds the WAL from
being checkpointed; a long iteration over the live log reads in pages bounded by the last id at
its start (a snapshot all the same); only a :class:`Snapshot` is read in one long query.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from service.store import db
from service.store.database import Database, SqliteDatabase
from service.store.schema import OPERATION_COLUMNS, RUN_COLUMNS


class LogReader:
    """The operation log's read queries, each on its own short read-only connection to
    ``path``: shared by the live :class:`Storage` and by a :class:`Snapshot` of it."""

    db: Database

    def list_runs(self, limit: int = 100, offset: int = 0, station: str | None = None
                  ) -> list[dict]:
        """Runs, newest first; of ``station`` only if given (None: every station's)."""
        where, args = _of(station)
        with self.db.reading() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(RUN_COLUMNS)}, {_RUN_ENERGY} FROM runs{where} "
                "ORDER BY id DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        return [_run_dict(row) for row in rows]

    def get_run(self, run_id: int) -> dict | None:
        with self.db.reading() as conn:
            row = conn.execute(
                f"SELECT {', '.join(RUN_COLUMNS)}, {_RUN_ENERGY} FROM runs WHERE id = ?",
                (run_id,),
            ).fetchone()
            if row is None:
                return None
            run = _run_dict(row)
            results = conn.execute(
                "SELECT row, col, start, target, final, pulses, converged, stopped "
                "FROM run_results WHERE run_id = ? ORDER BY idx",
                (run_id,),
            ).fetchall()
            energy = {(r[0], r[1]): r[2] for r in conn.execute(
                "SELECT row, col, SUM(energy) FROM operations WHERE run_id = ? "
                "AND kind = 'pulse' GROUP BY row, col", (run_id,)).fetchall()}
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
                "energy": energy.get((r["row"], r["col"])),
            }
            for r in results
        ]
        return run

    def run_energy(self, run_id: int) -> float | None:
        """The energy the run's pulses delivered (J), None when none is known."""
        with self.db.reading() as conn:
            (energy,) = conn.execute(
                "SELECT SUM(energy) FROM operations WHERE run_id = ? AND kind = 'pulse'",
                (run_id,)).fetchone()
        return None if energy is None else float(energy)

    def run_traces(self, run_id: int) -> dict[tuple[int, int], list[dict]]:
        """Per cell, each pulse of the run with the read that followed it (if any)."""
        with self.db.reading() as conn:
            ops = conn.execute(
                "SELECT kind, row, col, voltage, width, conductance FROM operations "
                "WHERE run_id = ? ORDER BY id",
                (run_id,),
            ).fetchall()
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
        self, run_id: int | None = None, batch: int = 5000, upto_id: int | None = None,
        station: str | None = None,
    ) -> Iterator[tuple]:
        """Every operation (or a run's) up to ``upto_id`` (default: the last one now), in
        execution order, as tuples in :data:`OPERATION_COLUMNS` order.

        Read ``batch`` rows at a time (:meth:`operations_page`), each page its own short read:
        a consumer that stops half-way (a stalled client) never holds the database, so the WAL
        is checkpointed meanwhile. The bound makes it a snapshot all the same: what is written
        while it runs is not in it."""
        upto = self.last_operation_id() if upto_id is None else upto_id
        after = 0
        while page := self.operations_page(after, upto, run_id, batch, station):
            yield from page
            after = page[-1][0]

    def operations_page(
        self, after_id: int, upto_id: int, run_id: int | None = None, limit: int = 5000,
        station: str | None = None,
    ) -> list[tuple]:
        """Up to ``limit`` operations with ``after_id < id <= upto_id`` (of run ``run_id`` if
        given) in execution order, as tuples in :data:`OPERATION_COLUMNS` order: one short read
        — a primary-key range scan (by run: the run index), however large the log."""
        sql = f"SELECT {', '.join(OPERATION_COLUMNS)} FROM operations WHERE id > ? AND id <= ?"
        args: tuple = (after_id, upto_id)
        if run_id is not None:
            sql += " AND run_id = ?"
            args += (run_id,)
            if station is not None:  # the run's station: the scan stays on the run's index
                sql += " AND run_id IN (SELECT id FROM runs WHERE id = ? AND station = ?)"
                args += (run_id, station)
        elif station is not None:
            sql += " AND station = ?"
            args += (station,)
        with self.db.reading() as conn:
            return conn.execute(f"{sql} ORDER BY id LIMIT ?", (*args, limit)).fetchall()

    def _iter_operations(self, run_id: int | None, order: str, batch: int,
                         station: str | None = None) -> Iterator[tuple]:
        # One read for the whole iteration: for a :class:`Snapshot` (nobody writes to it); on
        # the live database it would keep the WAL from being checkpointed until it ends.
        with self.db.reading() as conn:
            sql = f"SELECT {', '.join(OPERATION_COLUMNS)} FROM operations"
            where, args = _of(station)
            if run_id is not None:
                where = f"{where} AND run_id = ?" if where else " WHERE run_id = ?"
                args = (*args, run_id)
            sql += where
            cur = conn.execute(f"{sql} ORDER BY {order}", args)
            while rows := cur.fetchmany(batch):
                yield from rows

    def count_operations(self, station: str | None = None) -> dict[str, int]:
        where, args = _of(station)
        with self.db.reading() as conn:
            counts = dict(conn.execute(
                f"SELECT kind, COUNT(*) FROM operations{where} GROUP BY kind", args))
        return {"read": counts.get("read", 0), "pulse": counts.get("pulse", 0)}

    def reads_after(self, after_id: int = 0, limit: int = 100_000, station: str | None = None
                    ) -> list[tuple]:
        """Up to ``limit`` reads with ``id > after_id`` in execution order, as tuples
        ``(id, row, col, conductance S, time Unix s)`` — a primary-key range scan, so a caller
        keeping the last id it saw (the dashboard's conductance map) reads only what is new."""
        with self.db.reading() as conn:
            if station is None:
                return conn.execute(
                    "SELECT id, row, col, conductance, time FROM operations "
                    "WHERE id > ? AND kind = 'read' ORDER BY id LIMIT ?",
                    (after_id, limit),
                ).fetchall()
            return conn.execute(
                "SELECT id, row, col, conductance, time FROM operations "
                "WHERE station = ? AND id > ? AND kind = 'read' ORDER BY id LIMIT ?",
                (station, after_id, limit),
            ).fetchall()

    def last_operation_id(self) -> int:
        """The id of the newest operation, 0 when there is none."""
        with self.db.reading() as conn:
            return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM operations").fetchone()[0])

    def iter_operations_by_cell(
        self, run_id: int | None = None, batch: int = 5000, station: str | None = None
    ) -> Iterator[tuple]:
        """Every operation (or a run's), grouped by cell — ordered by row, col, then execution
        order — as tuples in :data:`OPERATION_COLUMNS` order (the per-cell HDF5 export).

        One read for the whole iteration (there is no index to page by cell): call it on a
        :class:`Snapshot` (:meth:`snapshot`), never on the live log of a running service."""
        return self._iter_operations(run_id, "row, col, id", batch, station)

    def list_all_runs(self, station: str | None = None) -> list[dict]:
        """Every run (of ``station`` if given), oldest first (without per-cell results)."""
        where, args = _of(station)
        with self.db.reading() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(RUN_COLUMNS)} FROM runs{where} ORDER BY id", args
            ).fetchall()
        return [_run_dict(row) for row in rows]


class Snapshot(LogReader):
    """A copy of the log made by :meth:`Storage.snapshot`, read with the log's own read
    queries (:class:`LogReader`). Nobody writes to it, so a read may take as long as it likes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = SqliteDatabase(self.path, station="snapshot")


def _of(station: str | None) -> tuple[str, tuple]:
    """The WHERE clause that keeps ``station``'s rows (none: every station's)."""
    return (" WHERE station = ?", (station,)) if station is not None else ("", ())


_RUN_ENERGY = ("(SELECT SUM(o.energy) FROM operations o WHERE o.run_id = runs.id "
               "AND o.kind = 'pulse') AS energy")
"""The energy a run's pulses delivered (J; NULL when none is known), beside its columns."""


def _run_dict(row: db.Row) -> dict:
    run = {name: row[name] for name in RUN_COLUMNS}
    run["verify"] = bool(run["verify"])
    if "energy" in row.keys():
        run["energy"] = row["energy"]
    return run
