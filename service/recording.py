"""Fire pulses and record them, including what a failing bench fired before it failed.

Every pulse that reached a device must be in the operation log, also when the batch it belongs
to fails half-way: a bench fires a batch cell by cell, and the error says how many went out
(:class:`drivers.base.BackendError` ``completed`` / ``uncertain``).
"""

from __future__ import annotations

import numpy as np

from drivers.base import Backend, BackendError
from service.storage import Storage

UNCERTAIN = "uncertain: the trigger went out but no clean confirmation came back"


def pulse_and_record(
    backend: Backend,
    storage: Storage,
    rows: np.ndarray,
    cols: np.ndarray,
    voltage: np.ndarray,
    width: np.ndarray,
    run_id: int | None = None,
) -> None:
    """``backend.pulse`` then ``storage.record_pulse``; on failure, record the fired part.

    A pulse that may have been fired (``uncertain``) is recorded with the note
    :data:`UNCERTAIN`: a pulse the log cannot rule out is kept, flagged, rather than dropped.
    """
    rows, cols = np.asarray(rows), np.asarray(cols)
    voltage = np.broadcast_to(np.asarray(voltage, dtype=float), rows.shape)
    width = np.broadcast_to(np.asarray(width, dtype=float), rows.shape)
    try:
        backend.pulse(rows, cols, voltage, width)
    except BackendError as exc:
        done = min(int(exc.completed), rows.size)
        if done:
            storage.record_pulse(rows[:done], cols[:done], voltage[:done], width[:done], run_id)
        if exc.uncertain and done < rows.size:
            maybe = slice(done, done + 1)
            storage.record_pulse(rows[maybe], cols[maybe], voltage[maybe], width[maybe], run_id,
                                 note=UNCERTAIN)
        raise
    storage.record_pulse(rows, cols, voltage, width, run_id)
