"""The store: the service's database, in parts.

- :mod:`~service.store.db`: connections, the driver's errors (with ``schema``, the only
  SQLite-specific place; the other modules write portable SQL);
- :mod:`~service.store.schema`: the tables, as migration steps keyed by the schema version;
- :mod:`~service.store.dblock`: one service per database (the lock beside it);
- :mod:`~service.store.journal`: the side journal, where writes go while the database fails;
- :mod:`~service.store.base`: what the parts share (notes, :class:`LogUnavailable`, ``journaled``);
- :mod:`~service.store.operations`: the operation log (record, reserve, settle pulses; reads);
- :mod:`~service.store.runs`, :mod:`~service.store.device_memory`, :mod:`~service.store.jobs`:
  one class per table (:class:`~service.store.jobs.JobStore` for jobs);
- :mod:`~service.store.recovery`: the log's health, the journal's replay, crash recovery;
- :mod:`~service.store.reader`: the log's read queries (live, or a :class:`Snapshot`);
- :mod:`~service.store.storage`: :class:`Storage`, the facade made of the parts above.

API keys keep their own table and class (:class:`service.store.keys.KeyStore`).
"""

from service.store.base import (
    CRASHED_PENDING,
    PENDING,
    UNCERTAIN_FIRE,
    LogUnavailable,
)
from service.store.reader import LogReader, Snapshot
from service.store.schema import JOB_COLUMNS, OPERATION_COLUMNS, RUN_COLUMNS
from service.store.storage import Storage

__all__ = [
    "CRASHED_PENDING",
    "JOB_COLUMNS",
    "OPERATION_COLUMNS",
    "PENDING",
    "RUN_COLUMNS",
    "UNCERTAIN_FIRE",
    "LogReader",
    "LogUnavailable",
    "Snapshot",
    "Storage",
]
