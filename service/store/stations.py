"""The ``stations`` table: each service's heartbeat (:class:`StationStore`, a part of
:class:`service.store.Storage`), and the ``model_activations`` table: which model each station
made active, when and why.

Invariants:

- a station writes only its own row (its name is the key), through a connection of its own, never
  inside the owner's transactions: a heartbeat never waits for a programming iteration;
- a heartbeat the database cannot take fails the log like any other write (the station then
  fires nothing until it is back: :mod:`service.store.recovery`), and is simply the next one's to
  make: heartbeats are not journaled.
"""

from __future__ import annotations

import json
import time

from service.store import db
from service.store.base import LogParts, LogUnavailable, log

STATION_COLUMNS = ("name", "backend", "instruments", "started", "heartbeat", "running_job",
                   "health", "version", "host", "pid", "listen")


class StationStore(LogParts):
    """Heartbeats and model activations. Mixed into :class:`~service.store.Storage`."""

    def beat(self, **fields: object) -> None:
        """Write this station's heartbeat (``instruments`` and ``health`` as dicts: stored as
        JSON), committed. :class:`LogUnavailable` when the database cannot take it (the log is
        failed then)."""
        row = {name: fields.get(name) for name in STATION_COLUMNS}
        row["name"] = self.station
        row["heartbeat"] = time.time()
        for name in ("instruments", "health"):
            if isinstance(row[name], dict):
                row[name] = json.dumps(row[name])
        names = list(row)
        self._side_write(
            f"INSERT INTO stations ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
            "ON CONFLICT (name) DO UPDATE SET "
            + ", ".join(f"{n} = excluded.{n}" for n in names[1:]),
            tuple(row.values()),
            "no heartbeat",
        )

    def list_stations(self) -> list[dict]:
        """Every station that ever beat, by name."""
        with self.db.reading() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(STATION_COLUMNS)} FROM stations ORDER BY name").fetchall()
        out = []
        for row in rows:
            item = dict(zip(STATION_COLUMNS, row, strict=True))
            for name in ("instruments", "health"):
                item[name] = json.loads(item[name]) if item[name] else None
            out.append(item)
        return out

    def record_activation(self, model: str, fingerprint: str | None, reason: str) -> None:
        """This station made ``model`` its active pulse predictor (why: ``reason``)."""
        self._side_write(
            "INSERT INTO model_activations (time, station, model, fingerprint, reason) "
            "VALUES (?, ?, ?, ?, ?)",
            (time.time(), self.station, model, fingerprint, reason),
            "the activation was not recorded",
        )

    def list_activations(self, station: str | None = None, limit: int = 100) -> list[dict]:
        """Model activations, newest first; of ``station`` if given."""
        where, args = ("WHERE station = ? ", (station,)) if station is not None else ("", ())
        names = ("id", "time", "station", "model", "fingerprint", "reason")
        with self.db.reading() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(names)} FROM model_activations {where}ORDER BY id DESC "
                "LIMIT ?", (*args, limit)).fetchall()
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _side_write(self, sql: str, args: tuple, consequence: str) -> None:
        """One statement on a connection of its own, committed; a database that fails it fails
        the log (and raises :class:`LogUnavailable`)."""
        try:
            conn = self.db.side_writer()
            try:
                conn.execute(sql, args)
                conn.commit()
            finally:
                conn.close()
        except db.Error as exc:
            if not db.is_fault(exc):
                raise
            with self._lock:
                if self.failure is None:
                    self.failure = f"database write failed: {exc}"
                    log.error("operation log failed: %s", self.failure)
            raise LogUnavailable(f"log unavailable, {consequence}: {exc}") from exc
