"""A :class:`programming.loop.Recorder` that keeps nothing but per-cell tallies: the recorder of
benchmarks and evaluations, which run the one loop on a simulated crossbar directly and want
figures (pulse widths spent per cell), not a log.

The service's recorder, which makes every operation durable, is ``service.recording.LogRecorder``.
"""

from __future__ import annotations

import numpy as np

from drivers.base import Backend, ReadResult
from programming.loop import RunParams


class TallyRecorder:
    """Counts, per targeted cell, the pulse width fired (s); records nothing durable.

    ``rows``/``cols``: the run's cells in the order of its targets (the loop's ``job.rows`` and
    ``job.cols``), on an array of ``n_cols`` columns; the tallies are in that order."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, n_cols: int):
        flat = np.asarray(rows, dtype=np.int64) * n_cols + np.asarray(cols, dtype=np.int64)
        self._n_cols = n_cols
        self._order = np.argsort(flat, kind="stable")
        self._sorted = flat[self._order]
        self.width_sum = np.zeros(flat.size)  # s, per cell
        self.runs = 0

    def _positions(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        flat = np.asarray(rows, dtype=np.int64) * self._n_cols + np.asarray(cols, dtype=np.int64)
        return self._order[np.searchsorted(self._sorted, flat)]

    def start_run(self, params: RunParams) -> int:
        self.runs += 1
        return self.runs

    def record_read(self, result: ReadResult, run_id: int | None = None) -> None:
        """Reads are counted by the loop itself (``ProgramOutcome.reads``)."""

    def fire(self, backend: Backend, rows: np.ndarray, cols: np.ndarray, voltage: np.ndarray,
             width: np.ndarray, run_id: int | None = None) -> np.ndarray | None:
        energy = backend.pulse(rows, cols, voltage, width)
        np.add.at(self.width_sum, self._positions(rows, cols), width)
        return energy

    def commit(self) -> None:
        """Nothing to make durable."""

    def record_energy(self, rows: np.ndarray, cols: np.ndarray, energy: np.ndarray,
                      run_id: int | None = None) -> None:
        """Nothing kept (the outcome has each cell's energy)."""

    def device_memory(self, key: str, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.full(np.asarray(rows).size, np.nan)  # nothing remembered across runs

    def save_device_memory(self, key: str, rows: np.ndarray, cols: np.ndarray,
                           values: np.ndarray, run_id: int | None = None) -> None:
        """Forgotten: a benchmark starts every run from what its planner was given."""

    def finish_run(self, run_id: int, **results: object) -> None:
        """Nothing kept."""

    def fail_run(self, run_id: int, error: str) -> int | None:
        return None
