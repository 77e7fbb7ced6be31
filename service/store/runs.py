"""The ``runs`` and ``run_results`` tables: a programming run and each cell's outcome
(:class:`RunStore`, a part of :class:`service.store.Storage`).

Invariants:

- a run is committed before anything of it is fired (:meth:`RunStore.start_run` raises
  :class:`~service.store.base.LogUnavailable` instead when the log cannot take it);
- its end (:meth:`~RunStore.finish_run`, :meth:`~RunStore.fail_run`) joins the owner's open
  transaction and is journaled; an ended run never changes again (a trigger, ``schema.py``);
- a failed run's pulse count is what the log holds, a broken-off batch included.
"""

from __future__ import annotations

import time
from itertools import repeat

import numpy as np

from programming.loop import RunParams
from service.store import db
from service.store.base import LogParts, LogUnavailable, journaled


class RunStore(LogParts):
    """Runs and their per-cell results. Mixed into :class:`~service.store.Storage`, whose
    writer connection and log state it shares."""

    def start_run(self, params: RunParams) -> int:
        """A new run, committed. Raises :class:`LogUnavailable` (nothing fired) when the log
        cannot take it."""
        with self._lock:
            self.ensure_writable("nothing fired")
            try:
                (run_id,) = self._conn.execute(
                    "INSERT INTO runs (started, status, strategy, tolerance, max_pulses, "
                    "verify, v_read, backend, n_targets, station) "
                    "VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        time.time(),
                        params.strategy,
                        params.tolerance,
                        params.max_pulses,
                        int(params.verify),
                        params.v_read,
                        self.backend_kind,
                        params.n_targets,
                        self.station,
                    ),
                ).fetchone()
                self._conn.commit()
            except db.Error as exc:
                if not db.is_fault(exc):  # a bug (a constraint), not the log failing
                    raise
                self._broke(exc)
                raise LogUnavailable(f"log unavailable, nothing fired: {self.failure}") from exc
            self._pending.clear()
            return int(run_id)

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
            self.db.write_many(
                self._conn,
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
            self.db.write(
                self._conn,
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
