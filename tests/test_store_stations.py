"""The store on both databases (SQLite file, PostgreSQL server): station identity, reservations
that interleave, recovery of a station's own work only, the lab-wide key table, snapshots.
Each test runs on both (the ``store_target`` fixture); the PostgreSQL server is real (tests/pg.py).
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest

from drivers.base import ReadResult
from programming.loop import RunParams
from service.store import (
    CRASHED_PENDING,
    PENDING,
    UNCERTAIN_FIRE,
    LogUnavailable,
    Snapshot,
    Storage,
)
from service.store.database import is_postgres
from service.store.dblock import DatabaseInUse
from service.store.keys import KeyStore
from service.store.schema import OPERATION_COLUMNS

STATION, NOTE, KIND = (OPERATION_COLUMNS.index(c) for c in ("station", "note", "kind"))
PARAMS = RunParams(strategy="ispp", tolerance=0.02, max_pulses=10, verify=True, v_read=0.2,
                   n_targets=2)


def read(rows, cols, g=1e-4) -> ReadResult:
    rows, cols = np.asarray(rows), np.asarray(cols)
    return ReadResult(rows=rows, cols=cols, conductance=np.full(rows.size, g),
                      current=np.full(rows.size, g * 0.2), v_read=0.2,
                      compliance=np.zeros(rows.size, bool))


def pulses(n: int) -> tuple:
    return (np.arange(n), np.zeros(n, int), np.full(n, -0.6), np.full(n, 1e-6))


@contextlib.contextmanager
def station_opener(target, tmp_path):
    opened: list[Storage] = []

    def open_station(name: str) -> Storage:
        storage = Storage(target, "simulated", station=name, state_dir=tmp_path / name)
        opened.append(storage)
        return storage

    try:
        yield open_station
    finally:
        for storage in opened:
            with contextlib.suppress(Exception):
                storage.close()


@pytest.fixture
def stations(store_target, tmp_path):
    """Open storages by station name on the test's database, SQLite or PostgreSQL (each its
    own state directory), closed at the end."""
    with station_opener(store_target, tmp_path) as open_station:
        yield open_station


@pytest.fixture
def pg_stations(postgres_url, tmp_path):
    """The same on PostgreSQL only: what exists only on a shared server."""
    with station_opener(postgres_url, tmp_path) as open_station:
        yield open_station


def test_every_row_carries_its_station_and_reads_filter_by_it(stations, store_target):
    a = stations("bench-a")
    run = a.start_run(PARAMS)
    first = a.reserve_pulses(*pulses(2), run_id=run)
    a.settle_pulses(first, 2, 2)
    a.record_read(read([0, 1], [0, 0]), run_id=run)
    a.commit()  # the owner's transaction ends before another connection writes (SQLite)
    job = a.create_job(strategy="ispp", tolerance=0.02, max_pulses=5, verify=True, v_read=0.2,
                       total_cells=2)
    a.save_device_memory("k", np.array([0]), np.array([0]), np.array([0.5]), run)
    a.commit_durable()
    if is_postgres(store_target):
        b = stations("bench-b")  # a second station beside it on the shared database
        b.record_read(read([5], [5]))
        b.commit_durable()
        assert b.device_memory("k", np.array([0]), np.array([0]))[0] != 0.5  # not its device
        assert [r["station"] for r in b.list_runs(station="bench-b")] == []
        assert b.count_operations("bench-b") == {"read": 1, "pulse": 0}
        assert {op[STATION] for op in b.iter_operations()} == {"bench-a", "bench-b"}
    assert a.get_job(job)["station"] == "bench-a"
    assert [r["station"] for r in a.list_runs(station="bench-a")] == ["bench-a"]
    assert a.count_operations("bench-a") == {"read": 2, "pulse": 2}
    assert {op[STATION] for op in a.iter_operations(station="bench-a")} == {"bench-a"}
    assert a.device_memory("k", np.array([0]), np.array([0]))[0] == 0.5


def test_reservations_of_two_stations_interleave_and_settle_apart(pg_stations):
    a, b = pg_stations("bench-a"), pg_stations("bench-b")
    fa = a.reserve_pulses(*pulses(3))
    fb = b.reserve_pulses(*pulses(2))
    assert a.db.kind == b.db.kind == "postgresql"
    # a: first fired, second uncertain, third never; b: both fired
    a.settle_pulses(fa, 3, 1, uncertain=True)
    b.settle_pulses(fb, 2, 2)
    a.commit_durable()
    b.commit_durable()
    notes = {st: [op[NOTE] for op in a.iter_operations(station=st)]
             for st in ("bench-a", "bench-b")}
    assert notes == {"bench-a": [None, UNCERTAIN_FIRE], "bench-b": [None, None]}


def test_a_station_recovers_only_its_own_work(stations, store_target, tmp_path):
    a = stations("bench-a")
    run = a.start_run(PARAMS)
    a.reserve_pulses(*pulses(2), run_id=run)  # reserved, never settled: a crash
    job = a.create_job(strategy="ispp", tolerance=0.02, max_pulses=5, verify=True, v_read=0.2,
                       total_cells=2)
    a.update_job_if(job, ("queued",), status="running", started=time.time())
    if is_postgres(store_target):
        # another station starting (or restarting) on the shared database leaves a's work alone
        stations("bench-b")
        assert a.get_job(job)["status"] == "running"
        assert a.get_run(run)["status"] == "running"
        assert [op[NOTE] for op in a.iter_operations()] == [PENDING, PENDING]
        # a second service of station a is refused on the server (its advisory lock)
        with pytest.raises(DatabaseInUse, match="bench-a"):
            Storage(store_target, "simulated", station="bench-a", state_dir=tmp_path / "other")
    # a restarts (its connection dropped without a word, as a crash would)
    a._conn.close()
    a._dblock.release()
    a2 = stations("bench-a")
    assert a2.get_job(job)["status"] == "interrupted"
    assert a2.get_run(run)["status"] == "interrupted"
    assert [op[NOTE] for op in a2.iter_operations()] == [CRASHED_PENDING, CRASHED_PENDING]


def test_the_key_table_is_the_labs_and_uses_are_per_station(store_target, tmp_path):
    if not is_postgres(store_target):
        KeyStore(store_target, create=True).count_valid()  # an SQLite file: made on request
    keys = KeyStore(store_target, station="bench-a")
    key_id, key = keys.create("alice", "program")
    other = KeyStore(store_target, station="bench-b")
    principal = other.verify(key)
    assert principal is not None and principal.key_id == key_id and principal.scope == "program"
    keys.record_uses("bench-a", {key_id: (1.0, 2.0, 3)})
    other.record_uses("bench-b", {key_id: (1.5, 1.5, 1)})
    keys.record_uses("bench-a", {key_id: (4.0, 5.0, 2)})
    assert [(u["station"], u["uses"], u["first_used"], u["last_used"]) for u in keys.uses()] == [
        ("bench-a", 5, 1.0, 5.0), ("bench-b", 1, 1.5, 1.5)]
    assert other.revoke(key_id) and keys.verify(key) is None


def test_a_snapshot_is_an_sqlite_copy_of_the_log(stations, tmp_path):
    a = stations("bench-a")
    run = a.start_run(PARAMS)
    a.record_read(read([0, 1], [0, 1]), run_id=run)
    a.finish_run(run, rows=np.array([0, 1]), cols=np.array([0, 1]), start=np.ones(2) * 1e-4,
                 target=np.ones(2) * 2e-4, final=np.ones(2) * 2e-4, pulses=np.array([0, 0]),
                 converged=np.array([True, True]))
    a.commit_durable()
    last = a.snapshot(tmp_path / "copy.db")
    copy = Snapshot(tmp_path / "copy.db")
    assert last == a.last_operation_id() == copy.last_operation_id()
    assert [tuple(op) for op in copy.iter_operations(station="bench-a")] == \
        [tuple(op) for op in a.iter_operations()]
    assert copy.get_run(run)["results"] == a.get_run(run)["results"]
    assert [r["id"] for r in copy.list_all_runs("bench-a")] == [run]


def test_heartbeats_and_model_activations_name_the_station(stations):
    a = stations("bench-a")
    a.beat(backend="simulated", instruments={"array": "sim"}, health={"status": "ok"},
           running_job=None, version="x", host="h", pid=1, listen="http://127.0.0.1:1")
    a.record_activation("/models/m.json", "abc", "calibration 1")
    (row,) = a.list_stations()
    assert row["name"] == "bench-a" and row["instruments"] == {"array": "sim"}
    assert row["health"] == {"status": "ok"} and row["heartbeat"] > time.time() - 60
    assert a.list_activations()[0] | {"time": 0, "id": 0} == {
        "id": 0, "time": 0, "station": "bench-a", "model": "/models/m.json",
        "fingerprint": "abc", "reason": "calibration 1"}


def test_writes_held_when_the_server_goes_away_are_replayed_once(pg_stations):
    """PostgreSQL: the log's writes are held and sent with the next message; when the
    connection is gone by then, they go to the side journal (nothing fired meanwhile) and are
    replayed, once, on the new connection."""
    a = pg_stations("bench-a")
    run = a.start_run(PARAMS)
    first = a.reserve_pulses(*pulses(2), run_id=run)
    a.settle_pulses(first, 2, 2)           # held
    a.record_read(read([0, 1], [0, 0]), run_id=run)  # held
    a._conn.raw.close()                    # the server connection drops
    a.commit()
    assert a.failure is not None and a.journal_records == 2
    with pytest.raises(LogUnavailable, match="nothing fired"):
        a.reserve_pulses(*pulses(1), run_id=run)
    assert a.recover() and a.failure is None and a.journal_records == 0
    a.commit_durable()
    ops = list(a.iter_operations(station="bench-a"))
    assert [(op[KIND], op[NOTE]) for op in ops] == [("pulse", None), ("pulse", None),
                                                ("read", None), ("read", None)]
    assert a.recover() and len(list(a.iter_operations())) == 4  # replayed once


def test_each_fired_pulse_records_the_energy_it_delivered(stations):
    a = stations("bench-a")
    first = a.reserve_pulses(*pulses(3))
    a.settle_pulses(first, 3, 1, uncertain=True, energy=np.array([1.5e-12, 2.5e-12, 3.5e-12]))
    second = a.reserve_pulses(*pulses(2))
    a.settle_pulses(second, 2, 2, energy=np.array([4e-12, np.nan]))
    a.commit_durable()
    energy = OPERATION_COLUMNS.index("energy")
    got = [(op[NOTE] is None, op[energy]) for op in a.iter_operations()]
    # the fired one has its energy; the uncertain one none (not known it was fired); a NaN is
    # stored as unknown
    assert got == [(True, 1.5e-12), (False, None), (True, 4e-12), (True, None)]


def test_energies_of_interleaved_reservations_go_to_the_right_pulses(pg_stations):
    a, b = pg_stations("bench-a"), pg_stations("bench-b")
    fa = a.reserve_pulses(*pulses(3))
    fb = b.reserve_pulses(*pulses(2))
    b.settle_pulses(fb, 2, 2, energy=np.array([20e-12, 21e-12]))
    a.settle_pulses(fa, 3, 3, energy=np.array([10e-12, 11e-12, 12e-12]))
    a.commit_durable()
    b.commit_durable()
    energy = OPERATION_COLUMNS.index("energy")
    assert [op[energy] for op in a.iter_operations(station="bench-a")] == [10e-12, 11e-12, 12e-12]
    assert [op[energy] for op in a.iter_operations(station="bench-b")] == [20e-12, 21e-12]
