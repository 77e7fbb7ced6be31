"""deploy/compose-lab.yaml (a PostgreSQL server and two stations on emulated benches) and
deploy/postgres-roles.sh (the service's database user owns only its schema), checked for real:
the role script runs against a real PostgreSQL server (tests/pg.py) and a station then logs
there as that user; the compose file names files that exist and settings that load.

The lab compose file itself is not run here: its PostgreSQL image comes from a registry this
machine cannot reach (the memprog image is built and run by tests/test_container.py; two stations
on one database run as processes in tests/test_postgres_stations.py)."""

from __future__ import annotations

import os
import subprocess
from contextlib import closing
from urllib.parse import urlsplit

import numpy as np
import psycopg
import pytest
import yaml

from drivers.base import ReadResult
from service.config import load_settings
from service.store import Storage
from tests.test_deploy import DEPLOY, cli_args, with_env


def lab() -> dict:
    return yaml.safe_load((DEPLOY / "compose-lab.yaml").read_text())


def test_the_lab_compose_file_names_what_exists_and_its_settings_load(tmp_path):
    services = lab()["services"]
    stations = {name: s for name, s in services.items() if name.startswith("station-")}
    assert len(stations) == 2 and "postgres" in services
    names = set()
    for name, station in stations.items():
        assert (DEPLOY / station["build"]["context"] / station["build"]["dockerfile"]).is_file()
        emulators = services[f"emulators-{name.removeprefix('station-')}"]
        assert station["network_mode"] == f"container:{emulators['container_name']}"
        assert station["depends_on"]["postgres"]["condition"] == "service_healthy"
        for volume in station["volumes"] + emulators["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).is_file(), volume
        serve = cli_args(station["command"])
        assert serve.command == "serve"
        assert any(p.endswith(f":{serve.port}") for p in emulators["ports"])
        env = {k: str(v) for k, v in station["environment"].items()}
        env = {k: v.replace("${MEMPROG_DB_PASSWORD:?set MEMPROG_DB_PASSWORD}", "secret")
               for k, v in env.items()}
        settings = with_env(
            {**env, "MEMPROG_BENCH_CONFIG": str(DEPLOY / "bench.toml"),
             "MEMPROG_STATE_DIR": str(tmp_path)},
            lambda: load_settings(DEPLOY / "sim.toml"),
        )
        assert settings.backend == "visa" and settings.auth.enabled
        assert str(settings.database).startswith("postgresql://memprog:secret@postgres:5432/")
        names.add(settings.station)
    assert names == {"station-a", "station-b"}
    postgres = services["postgres"]
    init = [v for v in postgres["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert init and (DEPLOY / init[0].split(":")[0]).is_file()


@pytest.fixture
def lab_database(postgres_server) -> str:
    """A new database with deploy/postgres-roles.sh run in it, as the postgres image would."""
    admin = urlsplit(postgres_server.new_database())
    env = {**os.environ, "PGHOST": admin.hostname, "PGPORT": str(admin.port),
           "POSTGRES_USER": "postgres", "POSTGRES_DB": admin.path.lstrip("/"),
           "MEMPROG_DB_PASSWORD": "test-password"}
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:  # roles are cluster-wide
        conn.execute("DROP ROLE IF EXISTS memprog_read")
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'memprog'").fetchone()
        if exists:
            conn.execute("DROP OWNED BY memprog")
            conn.execute("DROP ROLE memprog")
    done = subprocess.run(["sh", str(DEPLOY / "postgres-roles.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return admin._replace(netloc=f"memprog:test-password@{admin.hostname}:{admin.port}").geturl()


def test_the_service_user_owns_its_schema_and_nothing_else(lab_database, tmp_path):
    with closing(Storage(lab_database, "simulated", station="station-a",
                         state_dir=tmp_path)) as storage:
        storage.record_read(ReadResult(rows=np.array([0]), cols=np.array([0]),
                                       conductance=np.array([1e-4]), current=np.array([2e-5]),
                                       v_read=0.2, compliance=np.array([False])))
        storage.commit_durable()
    with psycopg.connect(lab_database) as conn:
        tables = conn.execute(
            "SELECT table_schema, tableowner FROM information_schema.tables t JOIN pg_tables p "
            "ON p.schemaname = t.table_schema AND p.tablename = t.table_name "
            "WHERE table_name = 'operations'").fetchall()
        assert tables == [("memprog", "memprog")]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.elsewhere (x int)")
    with psycopg.connect(lab_database, autocommit=True) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("CREATE DATABASE another")
