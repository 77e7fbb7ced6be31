"""``memprog db migrate-to postgresql://…``: a station's SQLite history moved into a PostgreSQL
store, idempotent and verified.

What is copied: runs (with their per-cell results), jobs, calibrations, operations, device
memory, model activations and API keys (by hash: a key already there is kept). Ids are the
server's (the stations share its sequences): each copied run, job and calibration is mapped in
``import_ids``, each batch of operations in ``imports`` (source id range → new id range), and the
references between them (an operation's run, a job's run, a calibration's job) follow the map.

Invariants:

- idempotent and resumable: a row is copied once — runs, jobs and calibrations by their
  mapping, operations above the highest source id already imported, each batch committed with
  its bookkeeping in one transaction; a second run copies only what is new;
- verified: per table, the number of rows and a SHA-256 over the rows in source order (every
  column but the ids, with references given as *source* ids) computed on both sides must agree;
- the source is upgraded to this memprog's schema and recovered first, under its lock, as a
  service start would (runs and jobs it left running are ``interrupted``), and held locked while
  it is copied: no service writes to it meanwhile. A station still beating on the server (its
  heartbeat younger than three intervals) is refused: stop it before moving its history.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.store import schema
from service.store.database import PostgresDatabase, SqliteDatabase
from service.store.storage import Storage

BATCH = 20_000
"""Operations per COPY batch (one transaction each)."""

MAPPED = {  # table → (columns copied besides id, reference column → referenced table)
    "runs": (tuple(c for c in schema.RUN_COLUMNS if c != "id"), {}),
    "jobs": (tuple(c for c in schema.JOB_COLUMNS if c != "id"), {"run_id": "runs"}),
    "calibrations": (tuple(c for c in schema.CALIBRATION_COLUMNS if c != "id"),
                     {"job_id": "jobs"}),
}
OPERATIONS = tuple(c for c in schema.OPERATION_COLUMNS if c != "id")
RUN_RESULTS = ("run_id", "idx", "row", "col", "start", "target", "final", "pulses", "converged",
               "stopped")
DEVICE_MEMORY = ("station", "key", "row", "col", "value", "updated", "run_id")
ACTIVATIONS = ("time", "station", "model", "fingerprint", "reason")
KEYS = ("name", "scope", "hint", "hash", "created", "revoked")


class MigrationRefused(RuntimeError):
    """The migration cannot start (a station still running, a bad target); says why."""


@dataclass
class TableReport:
    table: str
    source_rows: int = 0
    copied: int = 0
    target_rows: int = 0
    source_sha256: str = ""
    target_sha256: str = ""

    @property
    def equal(self) -> bool:
        return (self.source_rows == self.target_rows
                and self.source_sha256 == self.target_sha256)


@dataclass
class MigrationReport:
    source: str
    target: str
    station: str
    tables: list[TableReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def verified(self) -> bool:
        return all(t.equal for t in self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "station": self.station,
                "verified": self.verified, "seconds": round(self.seconds, 3),
                "tables": [{**vars(t), "equal": t.equal} for t in self.tables]}


class _Digest:
    """Row count and SHA-256 of rows fed in order (floats by repr: exact)."""

    def __init__(self) -> None:
        self.rows = 0
        self.sha = hashlib.sha256()

    def add(self, row: Iterable[object]) -> None:
        self.rows += 1
        self.sha.update(repr(tuple(row)).encode())
        self.sha.update(b"\n")


def migrate_to(source: str | Path, url: str, station: str,
               progress: Callable[[str], None] | None = None) -> MigrationReport:
    """Copy the SQLite log at ``source`` (station ``station``'s) into the PostgreSQL store at
    ``url`` and verify it (see the module); the report. :class:`MigrationRefused` when it
    cannot start."""
    say = progress or (lambda _: None)
    started = time.monotonic()
    target = PostgresDatabase(url, station)
    conn = target.side_writer()
    try:
        target.migrate(conn)
        _refuse_a_live_station(conn, station)
        # Upgraded, recovered and locked as a service start would; held until the copy ends.
        src = SqliteDatabase(source, station)
        holder = Storage(src)
        try:
            report = MigrationReport(str(src.path), target.describe(), station)
            ids: dict[str, dict[int, int]] = {}
            copied: dict[str, int] = {}
            for table in ("runs", "jobs", "calibrations"):
                ids[table], copied[table] = _copy_mapped(src, conn, station, table, ids)
                say(f"{table}: {copied[table]} copied, {len(ids[table])} in all")
            copied["operations"] = _copy_operations(src, conn, station, ids["runs"], say)
            copied.update(_copy_small(src, conn, ids["runs"]))
            say("verifying")
            report.tables = _verify(src, conn, station, ids, copied)
        finally:
            holder.close()
    finally:
        conn.close()
    report.seconds = time.monotonic() - started
    return report


def _refuse_a_live_station(conn: Any, station: str) -> None:
    row = conn.execute("SELECT heartbeat, health, host, pid FROM stations WHERE name = ?",
                       (station,)).fetchone()
    conn.rollback()
    if row is None:
        return
    import json

    interval = float((json.loads(row[1]) if row[1] else {}).get("heartbeat_s") or 5.0)
    age = time.time() - float(row[0])
    if age < 3 * interval:
        raise MigrationRefused(
            f"station {station!r} is running on this database (pid {row[3]} on {row[2]}, last "
            f"heartbeat {age:.1f} s ago): stop it before moving its SQLite history"
        )


def _source_rows(src: SqliteDatabase, sql: str, args: tuple = ()) -> Iterator[tuple]:
    with src.reading() as conn:
        cur = conn.execute(sql, args)
        while rows := cur.fetchmany(BATCH):
            yield from (tuple(r) for r in rows)


def _copy_mapped(src: SqliteDatabase, conn: Any, station: str, table: str,
                 ids: dict[str, dict[int, int]]) -> tuple[dict[int, int], int]:
    """Copy the rows of ``table`` not mapped yet; the whole map (source id → new id) and the
    number copied now."""
    columns, refs = MAPPED[table]
    mapping = {int(a): int(b) for a, b in conn.execute(
        "SELECT source_id, new_id FROM import_ids WHERE station = ? AND source_table = ?",
        (station, table)).fetchall()}
    marks = ", ".join("?" * len(columns))
    n_new = 0
    for row in _source_rows(src, f"SELECT id, {', '.join(columns)} FROM {table} ORDER BY id"):
        source_id, values = int(row[0]), list(row[1:])
        if source_id in mapping:
            continue
        for column, other in refs.items():
            i = columns.index(column)
            if values[i] is not None:
                values[i] = ids[other][int(values[i])]
        (new_id,) = conn.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) RETURNING id",
            values).fetchone()
        conn.execute("INSERT INTO import_ids (station, source_table, source_id, new_id) "
                     "VALUES (?, ?, ?, ?)", (station, table, source_id, new_id))
        mapping[source_id] = int(new_id)
        n_new += 1
    conn.commit()
    return mapping, n_new


def _copy_operations(src: SqliteDatabase, conn: Any, station: str, runs: dict[int, int],
                     say: Callable[[str], None]) -> int:
    """Copy the operations above the last one imported, a batch per transaction (COPY); the
    number copied now."""
    from service.store.postgres import copy_rows

    (done,) = conn.execute(
        "SELECT COALESCE(MAX(source_last), 0) FROM imports WHERE station = ? "
        "AND source_table = 'operations'", (station,)).fetchone()
    conn.rollback()
    run_at = OPERATIONS.index("run_id")
    copied = 0
    batch: list[tuple] = []

    def flush() -> None:
        nonlocal copied
        (before,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM operations").fetchone()
        copy_rows(conn, "operations", OPERATIONS, (row[1:] for row in batch))
        (first, last) = conn.execute(
            "SELECT MIN(id), MAX(id) FROM operations WHERE id > ? AND station = ANY(?)",
            (before, list({row[1 + OPERATIONS.index("station")] for row in batch}))).fetchone()
        conn.execute(
            "INSERT INTO imports (station, source_table, source_first, source_last, new_first, "
            "new_last, rows, imported) VALUES (?, 'operations', ?, ?, ?, ?, ?, ?)",
            (station, batch[0][0], batch[-1][0], first, last, len(batch), time.time()))
        conn.commit()
        copied += len(batch)
        say(f"operations: {copied} copied")
        batch.clear()

    for row in _source_rows(src, f"SELECT id, {', '.join(OPERATIONS)} FROM operations "
                                 "WHERE id > ? ORDER BY id", (done,)):
        values = list(row)
        if values[1 + run_at] is not None:
            values[1 + run_at] = runs[int(values[1 + run_at])]
        batch.append(tuple(values))
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    return copied


def _copy_small(src: SqliteDatabase, conn: Any, runs: dict[int, int]) -> dict[str, int]:
    """Run results, device memory, model activations and keys: keyed by content, copied with
    ON CONFLICT DO NOTHING (a second run adds nothing); rows copied now, per table."""
    def count(table: str) -> int:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    before = {t: count(t) for t in ("run_results", "device_memory")}
    def mapped(rows: Iterable[tuple], at: int) -> Iterator[list]:
        for row in rows:
            values = list(row)
            if values[at] is not None:
                values[at] = runs[int(values[at])]
            yield values

    conn.executemany(
        f"INSERT INTO run_results ({', '.join(RUN_RESULTS)}) VALUES "
        f"({', '.join('?' * len(RUN_RESULTS))}) ON CONFLICT (run_id, idx) DO NOTHING",
        mapped(_source_rows(src, f"SELECT {', '.join(RUN_RESULTS)} FROM run_results "
                                 "ORDER BY run_id, idx"), 0))
    conn.executemany(
        f"INSERT INTO device_memory ({', '.join(DEVICE_MEMORY)}) VALUES "
        f"({', '.join('?' * len(DEVICE_MEMORY))}) ON CONFLICT (station, key, row, col) DO UPDATE "
        "SET value = excluded.value, updated = excluded.updated, run_id = excluded.run_id "
        "WHERE excluded.updated > device_memory.updated",
        mapped(_source_rows(src, f"SELECT {', '.join(DEVICE_MEMORY)} FROM device_memory "
                                 "ORDER BY station, key, row, col"), 6))
    conn.executemany(
        f"INSERT INTO api_keys ({', '.join(KEYS)}) VALUES ({', '.join('?' * len(KEYS))}) "
        "ON CONFLICT (hash) DO NOTHING",
        _source_rows(src, f"SELECT {', '.join(KEYS)} FROM api_keys ORDER BY id"))
    existing = {tuple(r) for r in conn.execute(
        f"SELECT {', '.join(ACTIVATIONS)} FROM model_activations").fetchall()}
    conn.executemany(
        f"INSERT INTO model_activations ({', '.join(ACTIVATIONS)}) VALUES "
        f"({', '.join('?' * len(ACTIVATIONS))})",
        [r for r in _source_rows(src, f"SELECT {', '.join(ACTIVATIONS)} FROM model_activations "
                                      "ORDER BY id") if r not in existing])
    after = {t: count(t) - n for t, n in before.items()}
    conn.commit()
    return after


def _verify(src: SqliteDatabase, conn: Any, station: str, ids: dict[str, dict[int, int]],
            copied: dict[str, int]) -> list[TableReport]:
    """Counts and checksums of every copied table, on both sides (see the module)."""
    reports = []
    back = {table: {new: old for old, new in m.items()} for table, m in ids.items()}
    for table in ("runs", "jobs", "calibrations"):
        columns, refs = MAPPED[table]
        source, target = _Digest(), _Digest()
        for row in _source_rows(src, f"SELECT {', '.join(columns)} FROM {table} ORDER BY id"):
            source.add(row)
        order = sorted(ids[table].items())  # by source id
        wanted = [new for _, new in order]
        got: dict[int, tuple] = {}
        for start in range(0, len(wanted), 1000):
            chunk = wanted[start:start + 1000]
            for row in conn.execute(
                    f"SELECT id, {', '.join(columns)} FROM {table} WHERE id = ANY(?)",
                    (chunk,)).fetchall():
                got[int(row[0])] = tuple(row[1:])
        for new in wanted:
            if new not in got:
                continue
            values = list(got[new])
            for column, other in refs.items():
                i = columns.index(column)
                if values[i] is not None:
                    values[i] = back[other][int(values[i])]
            target.add(values)
        reports.append(_report(table, source, target, copied[table]))
    conn.rollback()

    # operations: the imported id ranges, in order, with runs given back as source ids
    source, target = _Digest(), _Digest()
    run_at = OPERATIONS.index("run_id")
    for row in _source_rows(src, f"SELECT {', '.join(OPERATIONS)} FROM operations ORDER BY id"):
        source.add(row)
    ranges = conn.execute(
        "SELECT new_first, new_last FROM imports WHERE station = ? AND source_table = "
        "'operations' ORDER BY source_first", (station,)).fetchall()
    stations = [r[0] for r in _source_rows(src, "SELECT DISTINCT station FROM operations")]
    for first, last in ranges:
        cur = conn.raw.cursor(name=f"verify_{first}")
        cur.execute(f"SELECT {', '.join(OPERATIONS)} FROM operations WHERE id BETWEEN %s AND %s "
                    "AND station = ANY(%s) ORDER BY id", (first, last, stations))
        while rows := cur.fetchmany(BATCH):
            for row in rows:
                values = list(row)
                if values[run_at] is not None:
                    values[run_at] = back["runs"][int(values[run_at])]
                target.add(values)
        cur.close()
    conn.rollback()
    reports.append(_report("operations", source, target, copied["operations"]))

    small: tuple[tuple[str, tuple[str, ...], str, int], ...] = (
        ("run_results", RUN_RESULTS, "run_id, idx", 0),
        ("device_memory", DEVICE_MEMORY, "station, key, row, col", 6),
    )
    for table, columns, sort, ref in small:
        source, target = _Digest(), _Digest()
        source_rows = list(_source_rows(src, f"SELECT {', '.join(columns)} FROM {table} "
                                             f"ORDER BY {sort}"))
        for row in source_rows:
            source.add(row)
        new_runs = list(ids["runs"].values())
        where = "run_id = ANY(?)" if table == "run_results" else \
            "station = ANY(?) AND (run_id IS NULL OR run_id = ANY(?))"
        args: tuple = (new_runs,) if table == "run_results" else (
            list({r[0] for r in source_rows}) or [station], new_runs)
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE {where}",
                            args).fetchall()
        conn.rollback()
        mapped_rows = []
        for row in rows:
            values = list(row)
            if values[ref] is not None:
                values[ref] = back["runs"][int(values[ref])]
            mapped_rows.append(tuple(values))
        for row in sorted(mapped_rows, key=lambda r: tuple(
                (x is None, x) for x in (r[:2] if table == "run_results" else r[:4]))):
            target.add(row)
        reports.append(_report(table, source, target, copied.get(table, 0)))
    return reports


def _report(table: str, source: _Digest, target: _Digest, copied: int) -> TableReport:
    return TableReport(table, source.rows, copied, target.rows, source.sha.hexdigest(),
                       target.sha.hexdigest())
