"""Access control: API keys with scopes (read < program < admin), stored hashed; `memprog keys`;
the service refuses to serve beyond loopback without authentication."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import time

import pytest

from service.auth import exposure_problem, is_loopback
from service.cli import main
from service.key_cache import KEY_REFRESH_S
from service.launch import free_port, memprog_command
from service.store.keys import KeyStore

API = "/api/v1"

PULSE = {"cells": [[0, 0]], "voltage": -0.45, "width": 1e-7}
PROGRAM = {"targets": [{"row": 1, "col": 1, "conductance": 200e-6}], "max_pulses": 5,
           "strategy": "ispp"}
JOB = {"targets": [{"row": 2, "col": 2, "conductance": 200e-6}], "max_pulses": 5,
       "strategy": "ispp"}


@pytest.fixture
def secured(sim_settings, client_for):
    """The app with authentication on, and a key of each scope."""
    from service.app import create_app

    settings = type(sim_settings)(**{**sim_settings.model_dump(), "auth": {"enabled": True}})
    assert settings.auth.enabled
    keys = KeyStore(settings.database, create=True)  # before the service made it
    made = {scope: keys.create(f"{scope}-user", scope)[1] for scope in ("read", "program", "admin")}
    with client_for(create_app(settings)) as client:
        yield client, made, keys


def auth(key: str, scheme: str = "ApiKey") -> dict[str, str]:
    return {"Authorization": f"{scheme} {key}"}


def calls(client, headers: dict[str, str]) -> dict[str, int]:
    """Status of each kind of request with ``headers``."""
    job = client.post(f"{API}/jobs", json=JOB, headers=headers)
    return {
        "health": client.get(f"{API}/health", headers=headers).status_code,
        "array": client.get(f"{API}/array", headers=headers).status_code,
        "read": client.post(f"{API}/read", json={"cells": [[0, 0]]}, headers=headers).status_code,
        "runs": client.get(f"{API}/runs", headers=headers).status_code,
        "export": client.get(f"{API}/export", headers=headers).status_code,
        "jobs": client.get(f"{API}/jobs", headers=headers).status_code,
        "metrics": client.get("/metrics", headers=headers).status_code,
        "predictor": client.get(f"{API}/predictor", headers=headers).status_code,
        "pulse": client.post(f"{API}/pulse", json=PULSE, headers=headers).status_code,
        "program": client.post(f"{API}/program", json=PROGRAM, headers=headers).status_code,
        "job": job.status_code,
        "abort": client.post(f"{API}/jobs/1/abort", headers=headers).status_code,
        "reload": client.post(f"{API}/predictor/reload", headers=headers).status_code,
    }


READS = ("array", "read", "runs", "export", "jobs", "metrics", "predictor")


def test_without_a_key_only_health_answers(secured):
    client, _, _ = secured
    status = calls(client, {})
    assert status.pop("health") == 200
    assert set(status.values()) == {401}
    response = client.post(f"{API}/pulse", json=PULSE)
    assert "ApiKey" in response.headers["www-authenticate"]
    assert "ApiKey <key>" in response.json()["detail"]
    assert client.post(f"{API}/emergency-stop").status_code == 401
    assert client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize(
    "header",
    ["ApiKey mp_not-a-key", "Bearer mp_not-a-key", "Basic dXNlcjpwYXNz", "ApiKey", "mp_xyz"],
)
def test_an_unknown_or_malformed_key_is_401(secured, header):
    client, _, _ = secured
    response = client.post(f"{API}/read", json={"cells": [[0, 0]]},
                           headers={"Authorization": header})
    assert response.status_code == 401


def test_a_read_key_reads_but_may_not_pulse_or_program(secured, sim_settings):
    client, made, _ = secured
    status = calls(client, auth(made["read"]))
    assert {name: status[name] for name in READS} == dict.fromkeys(READS, 200)
    for name in ("pulse", "program", "job", "abort", "reload"):
        assert status[name] == 403, name
    refused = client.post(f"{API}/pulse", json=PULSE, headers=auth(made["read"]))
    assert "scope 'program'" in refused.json()["detail"]
    # nothing was fired or queued by the refused requests
    with sqlite3.connect(sim_settings.database) as conn:
        kinds = dict(conn.execute("SELECT kind, COUNT(*) FROM operations GROUP BY kind"))
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (0,)
    assert kinds == {"read": 1}
    # Bearer works as well as ApiKey, and any valid key may stop the bench
    assert client.get(f"{API}/array", headers=auth(made["read"], "Bearer")).status_code == 200
    assert client.post(f"{API}/emergency-stop", headers=auth(made["read"])).status_code == 200


def test_a_program_key_programs_and_an_admin_key_does_everything(secured):
    client, made, _ = secured
    status = calls(client, auth(made["program"], "Bearer"))
    assert status["pulse"] == status["program"] == 200
    assert status["job"] == 202 and status["abort"] in (200, 409)  # job 1 may be done already
    assert status["reload"] == 403
    assert {name: status[name] for name in READS} == dict.fromkeys(READS, 200)
    job = client.get(f"{API}/jobs/1", headers=auth(made["read"])).json()
    assert job["submitted_by"] == "program-user"

    admin = calls(client, auth(made["admin"]))
    assert admin["reload"] == 200 and admin["pulse"] == 200 and admin["job"] == 202


def test_a_revoked_key_is_refused_within_the_key_refresh(secured, sim_settings, capsys):
    client, made, keys = secured
    headers = auth(made["program"])
    assert client.post(f"{API}/pulse", json=PULSE, headers=headers).status_code == 200
    key_id = next(k["id"] for k in keys.list() if k["name"] == "program-user")
    assert main(["keys", "revoke", str(key_id), "--database", str(sim_settings.database)]) == 0
    revoked = time.monotonic()
    # keys are cached in memory (the request path never waits on the database): a revoked
    # key works for at most one reload of the cache, then never again
    while client.post(f"{API}/read", json={"cells": [[0, 0]]},
                      headers=headers).status_code == 200:
        assert time.monotonic() - revoked < KEY_REFRESH_S + 2.0, "the revoked key still works"
        time.sleep(0.05)
    assert client.post(f"{API}/pulse", json=PULSE, headers=headers).status_code == 401
    assert main(["keys", "revoke", str(key_id), "--database", str(sim_settings.database)]) == 1


def test_auth_off_leaves_everything_open(api):
    status = calls(api, {})
    assert status["pulse"] == status["program"] == status["reload"] == 200
    assert status["job"] == 202


def test_keys_cli_prints_a_key_once_and_stores_only_its_hash(tmp_path, capsys):
    database = tmp_path / "keys.db"
    assert main(["keys", "create", "--create", "--scope", "program", "--name", "alice",
                 "--database", str(database)]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("mp_") and len(key) > 40
    assert "shown only now" in out.err
    principal = KeyStore(database).verify(key)
    assert (principal.name, principal.scope) == ("alice", "program")

    with sqlite3.connect(database) as conn:
        stored = conn.execute("SELECT name, scope, hash FROM api_keys").fetchall()
        dump = "\n".join(conn.iterdump())
    assert stored == [("alice", "program", hashlib.sha256(key.encode()).hexdigest())]
    assert key not in dump

    assert main(["keys", "list", "--database", str(database)]) == 0
    listing = capsys.readouterr().out
    assert "alice" in listing and "program" in listing and key not in listing
    with pytest.raises(SystemExit):
        main(["keys", "create", "--scope", "root", "--name", "x", "--database", str(database)])


def test_exposure_rules():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.3.2.1") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert not is_loopback("lab-pc.example.org")
    assert exposure_problem(False, "127.0.0.1") is None
    assert exposure_problem(True, "0.0.0.0") is None
    assert "MEMPROG_AUTH__ENABLED" in exposure_problem(False, "0.0.0.0")


def test_serve_refuses_a_public_address_without_auth(tmp_path):
    """Checked before anything is opened or bound: the command exits non-zero at once."""
    port = free_port()
    result = subprocess.run(
        [*memprog_command(), "serve", "--host", "0.0.0.0", "--port", str(port)],
        env={"PATH": "/usr/bin:/bin", "MEMPROG_DATABASE": str(tmp_path / "never.db")},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to serve on 0.0.0.0 without authentication" in result.stderr
    assert not (tmp_path / "never.db").exists()


@pytest.mark.slow
def test_a_lab_script_with_keys_against_a_secured_server(tmp_path):
    """End to end: keys made by the CLI, `memprog serve` with auth on, the client with a key."""
    from service.client import MemprogClient, MemprogError
    from service.launch import ServerProcess

    database = tmp_path / "secured.db"

    def make_key(scope: str, name: str) -> str:
        result = subprocess.run(
            [*memprog_command(), "keys", "create", "--create", "--scope", scope, "--name", name,
             "--database", str(database)],
            capture_output=True, text=True, timeout=60, check=True,
        )
        return result.stdout.strip()

    reader, operator = make_key("read", "viewer"), make_key("program", "alice")
    env = {"MEMPROG_DATABASE": str(database), "MEMPROG_AUTH__ENABLED": "true",
           "MEMPROG_SIM__ROWS": "8", "MEMPROG_SIM__COLS": "8"}
    with ServerProcess(env, log_path=tmp_path / "server.log") as server, \
            MemprogClient(server.url, api_key=operator, timeout=60) as lab, \
            MemprogClient(server.url, api_key=reader, timeout=60) as viewer, \
            MemprogClient(server.url, timeout=60) as anonymous:
        job = lab.submit_job([(r, c, 250e-6) for r in range(8) for c in range(8)],
                             strategy="ispp", tolerance=0.02, max_pulses=100)
        assert job.submitted_by == "alice"
        progress = list(viewer.job_events(job.id, timeout=60))
        assert progress[-1].status == "completed" and progress[-1].cells_done == 64
        assert viewer.wait_job(job.id, timeout=60) == progress[-1]
        assert [j.id for j in viewer.jobs().jobs] == [job.id]
        assert viewer.read([(0, 0)]).readings[0].conductance > 0

        with pytest.raises(MemprogError) as refused:
            viewer.pulse([(0, 0)], voltage=-0.45, width=1e-7)
        assert refused.value.status_code == 403
        with pytest.raises(MemprogError) as refused:
            viewer.submit_job([(0, 0, 250e-6)])
        assert refused.value.status_code == 403
        with pytest.raises(MemprogError) as refused:
            anonymous.read([(0, 0)])
        assert refused.value.status_code == 401
        assert anonymous.health().status == "ok"  # open, for liveness probes

        long = lab.submit_job([(r, c, 250e-6) for r in range(8) for c in range(8)],
                              strategy="fixed", tolerance=1e-4, max_pulses=1000)
        stopped = viewer.emergency_stop()  # any valid key may stop the bench
        assert stopped.stopped and stopped.aborted_jobs == [long.id]
        assert lab.wait_job(long.id, timeout=30).status == "aborted"
        with pytest.raises(MemprogError) as ended:
            lab.abort_job(long.id)
        assert ended.value.status_code == 409
