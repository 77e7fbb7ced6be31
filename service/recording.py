"""Fire pulses and record them: in the log before they are fired, settled after.

Every pulse that reached a device must be in the operation log, also when the batch it belongs
to fails half-way (a bench fires a batch cell by cell, and the error says how many went out:
:class:`drivers.base.BackendError` ``completed`` / ``uncertain``), and also when the database
fails. So the pulses are first *reserved* — written and committed as pending — and only then
fired; a log that cannot take them stops everything before a device sees a pulse
(:class:`service.store.LogUnavailable`, "log unavailable, nothing fired"). After the fire the
reservation is *settled*: fired, uncertain (the trigger went out, no confirmation), or removed
(not fired). A settlement the database cannot take goes to the side journal
(:mod:`service.store.journal`), and a crash between the two leaves the reservation, read as
uncertain at the next start.
"""

from __future__ import annotations

import numpy as np

from drivers.base import Backend, BackendError, LimitError, ReadResult
from programming.loop import RunParams
from service.store import UNCERTAIN_FIRE, Storage

UNCERTAIN = UNCERTAIN_FIRE
"""The note of a pulse that may have been fired (its trigger went out, no confirmation)."""


def pulse_and_record(
    backend: Backend,
    storage: Storage,
    rows: np.ndarray,
    cols: np.ndarray,
    voltage: np.ndarray,
    width: np.ndarray,
    run_id: int | None = None,
) -> np.ndarray | None:
    """Reserve the pulses in the log, fire them, settle what was fired (with the energy each
    delivered, when the backend knows it), commit; that energy (J, None if not known).

    Raises :class:`LogUnavailable` before firing when the log cannot take the pulses (nothing
    fired). A settlement the log cannot take goes to the side journal (``storage.failure`` then
    says why; the backend owner answers the request 503 after the operation)."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    voltage = np.broadcast_to(np.asarray(voltage, dtype=float), rows.shape)
    width = np.broadcast_to(np.asarray(width, dtype=float), rows.shape)
    first = storage.reserve_pulses(rows, cols, voltage, width, run_id)
    try:
        energy = backend.pulse(rows, cols, voltage, width)
    except BackendError as exc:
        storage.settle_pulses(first, rows.size, int(exc.completed), bool(exc.uncertain))
        storage.commit()
        raise
    except LimitError:  # a backend's own check, before any I/O: nothing was fired
        storage.settle_pulses(first, rows.size, 0)
        storage.commit()
        raise
    except BaseException:
        # Not a bench's report (a bug, an interrupt): what reached the devices is unknown.
        storage.settle_pulses(first, rows.size, 0, uncertain=True)
        storage.commit()
        raise
    # A log that breaks here keeps the settlement in the side journal; the caller goes on
    # (its verify read and progress are journaled too) and the next reservation refuses.
    storage.settle_pulses(first, rows.size, rows.size, energy=energy)
    storage.commit()
    return energy


class LogRecorder:
    """The programming loop's :class:`programming.loop.Recorder` on the service's operation log:
    every read and run goes to ``storage``, every pulse through :func:`pulse_and_record`."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def start_run(self, params: RunParams) -> int:
        return self.storage.start_run(params)

    def record_read(self, result: ReadResult, run_id: int | None = None) -> None:
        self.storage.record_read(result, run_id)

    def fire(self, backend: Backend, rows: np.ndarray, cols: np.ndarray, voltage: np.ndarray,
             width: np.ndarray, run_id: int | None = None) -> np.ndarray | None:
        return pulse_and_record(backend, self.storage, rows, cols, voltage, width, run_id)

    def commit(self) -> None:
        self.storage.commit()

    def record_energy(self, rows: np.ndarray, cols: np.ndarray, energy: np.ndarray,
                      run_id: int | None = None) -> None:
        self.storage.estimate_energy(rows, cols, energy, run_id)

    def device_memory(self, key: str, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.storage.device_memory(key, rows, cols)

    def save_device_memory(self, key: str, rows: np.ndarray, cols: np.ndarray,
                           values: np.ndarray, run_id: int | None = None) -> None:
        self.storage.save_device_memory(key, rows, cols, values, run_id)

    def finish_run(self, run_id: int, **results) -> None:
        self.storage.finish_run(run_id, **results)

    def fail_run(self, run_id: int, error: str) -> int | None:
        return self.storage.fail_run(run_id, error)
