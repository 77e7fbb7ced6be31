"""The ``jobs`` table: the stored side of background programming jobs (:class:`JobStore`, a
part of :class:`service.store.Storage`; the job manager, :mod:`service.jobs`, is the other side of
the same concept and reaches the table only through it).

Invariants:

- a job is queued and polled from any thread, through short connections of its own (a
  :func:`~service.store.db.side_writer`, :func:`~service.store.db.reading`), which the database
  serialises with the backend owner's writes;
- the owner updates a running job inside its iteration's transaction (journaled like the
  operations it records), so after a crash the job and the log agree;
- a conditional update (:meth:`JobStore.update_job_if`) that the failed log cannot take goes
  to the side journal, its condition checked when it is replayed;
- an ended job never changes again (a trigger, ``schema.py``).
"""

from __future__ import annotations

import time

from service.store import db
from service.store.base import LogParts, journaled, log
from service.store.schema import JOB_COLUMNS


class JobStore(LogParts):
    """Jobs: create, update (journaled on the owner thread; conditional from any thread),
    read. Mixed into :class:`~service.store.Storage`, whose log state it shares."""

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
        return self._insert_now(
            "INSERT INTO jobs (created, status, strategy, tolerance, max_pulses, verify, v_read, "
            "total_cells, submitted_by, station) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), strategy, tolerance, max_pulses, int(verify), v_read, total_cells,
             submitted_by, self.station),
            "the job was not queued",
        )

    @journaled
    def update_job(self, job_id: int, **fields: object) -> None:
        """Backend owner thread: set job columns inside the current transaction (the caller
        commits, e.g. together with a programming iteration's operations)."""
        sql, args = _job_update(job_id, fields)
        with self._lock:
            self.db.write(self._conn, sql, args)

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
                conn = self.db.side_writer()
                try:
                    changed = conn.execute(sql, (*args, *statuses)).rowcount
                    conn.commit()
                finally:
                    conn.close()
                return changed > 0
            except db.Error as exc:
                if not db.is_fault(exc):  # a bug (a constraint), not the log failing
                    raise
                with self._lock:
                    if self.failure is None:
                        self.failure = f"database write failed: {exc}"
                        log.error("operation log failed: %s", self.failure)
        self._to_journal("update_job_if", (job_id, statuses), fields, time.time())
        return True

    def get_job(self, job_id: int) -> dict | None:
        """The job ``job_id``, whichever station runs it (``station`` says which)."""
        with self.db.reading() as conn:
            row = conn.execute(
                f"SELECT {', '.join(JOB_COLUMNS)}, {_JOB_ENERGY} FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
        return None if row is None else _job_dict(row)

    def list_jobs(self, limit: int = 100, offset: int = 0, station: str | None = None
                  ) -> list[dict]:
        """Jobs, newest first; of ``station`` only if given."""
        where, args = ("WHERE station = ? ", (station,)) if station is not None else ("", ())
        with self.db.reading() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(JOB_COLUMNS)}, {_JOB_ENERGY} FROM jobs {where}"
                "ORDER BY id DESC "
                "LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        return [_job_dict(row) for row in rows]

    def count_jobs(self) -> dict[str, int]:
        """This station's jobs per status."""
        with self.db.reading() as conn:
            return {row[0]: row[1] for row in conn.execute(
                "SELECT status, COUNT(*) FROM jobs WHERE station = ? GROUP BY status",
                (self.station,))}


def _job_update(job_id: int, fields: dict[str, object]) -> tuple[str, tuple]:
    unknown = set(fields) - set(JOB_COLUMNS[1:])
    if unknown:
        raise KeyError(f"not job columns: {sorted(unknown)}")
    names = list(fields)
    sql = f"UPDATE jobs SET {', '.join(f'{name} = ?' for name in names)} WHERE id = ?"
    return sql, (*(fields[name] for name in names), job_id)


_JOB_ENERGY = ("(SELECT SUM(o.energy) FROM operations o WHERE o.run_id = jobs.run_id "
               "AND o.kind = 'pulse') AS energy")
"""The energy a job's pulses delivered (J; NULL when none is known), beside its columns."""


def _job_dict(row: db.Row) -> dict:
    job = {name: row[name] for name in JOB_COLUMNS}
    job["verify"] = bool(job["verify"])
    job["energy"] = row["energy"]
    return job
