"""The REST API in process (real app, real Crossbar, real SQLite): contract and bad input."""

from __future__ import annotations

import csv
import io
import sqlite3

import pytest

from drivers.base import BackendUnavailable
from drivers.sim import SimBackend

API = "/api/v1"


def counts(settings) -> dict[str, int]:
    with sqlite3.connect(settings.database) as conn:
        found = dict(conn.execute("SELECT kind, COUNT(*) FROM operations GROUP BY kind"))
    return {"read": found.get("read", 0), "pulse": found.get("pulse", 0)}


def problem(response, status=422) -> dict:
    assert response.status_code == status, response.text
    return response.json()["detail"][0]


def test_health_names_the_simulated_backend(api):
    body = api.get(f"{API}/health").json()
    assert body["status"] == "ok"
    assert body["backend"] == "simulated"
    assert "JART" in body["instruments"]["array"]
    assert "predictor" in body  # null until a predictor model is loaded


def test_array_gives_geometry_limits_and_strategies(api):
    body = api.get(f"{API}/array").json()
    assert (body["rows"], body["cols"], body["kind"]) == (16, 16, "simulated")
    assert body["limits"] == {
        "v_set_max": 0.9, "v_reset_max": 1.3, "width_min": 1e-9, "width_max": 0.1,
        "v_read_min": 0.05, "v_read_max": 0.3, "compliance": 1e-3,
    }
    assert {"fixed", "ispp"} <= set(body["strategies"])
    assert body["default_strategy"] in body["strategies"]


def test_read_cells_and_all_are_recorded(api, sim_settings):
    one = api.post(f"{API}/read", json={"cells": [[0, 0], [15, 15]], "v_read": 0.1}).json()
    assert [(r["row"], r["col"]) for r in one["readings"]] == [(0, 0), (15, 15)]
    assert all(r["v_read"] == 0.1 and 90e-6 < r["conductance"] < 100e-6 for r in one["readings"])
    assert all(r["current"] == pytest.approx(r["conductance"] * 0.1) for r in one["readings"])
    everything = api.post(f"{API}/read", json={"all": True}).json()["readings"]
    assert len(everything) == 256 and len({(r["row"], r["col"]) for r in everything}) == 256
    assert counts(sim_settings) == {"read": 258, "pulse": 0}


def test_pulse_fires_per_cell_values_and_reads_after(api, sim_settings):
    body = api.post(
        f"{API}/pulse",
        json={"cells": [[1, 1], [1, 2]], "voltage": [-0.6, 1.0], "width": 1e-5, "read_after": True},
    ).json()
    assert body["pulses"] == [
        {"row": 1, "col": 1, "voltage": -0.6, "width": 1e-5},
        {"row": 1, "col": 2, "voltage": 1.0, "width": 1e-5},
    ]
    g = [r["conductance"] for r in body["readings"]]
    assert g[0] > 400e-6 and g[1] < 100e-6  # SET went up, RESET of a fresh cell stays low
    assert counts(sim_settings) == {"read": 2, "pulse": 2}


@pytest.mark.parametrize(
    ("body", "loc", "limit"),
    [
        ({"cells": [[0, 0]], "voltage": -0.95, "width": 1e-6}, ["body", "voltage"], 0.9),
        ({"cells": [[0, 0]], "voltage": 1.31, "width": 1e-6}, ["body", "voltage"], 1.3),
        ({"cells": [[0, 0]], "voltage": -0.5, "width": 0.5}, ["body", "width"], 0.1),
        ({"cells": [[0, 0]], "voltage": -0.5, "width": 1e-10}, ["body", "width"], 1e-9),
        # one bad pulse among good ones rejects the whole request
        ({"cells": [[0, 0], [0, 1]], "voltage": [-0.5, -2.0], "width": 1e-6},
         ["body", "voltage"], 0.9),
    ],
)
def test_pulse_beyond_limits_is_422_and_fires_and_records_nothing(
    api, sim_settings, body, loc, limit
):
    before = api.post(f"{API}/read", json={"all": True}).json()["readings"]
    error = problem(api.post(f"{API}/pulse", json=body))
    assert error["loc"] == loc and error["type"] == "limit"
    assert error["ctx"]["limit"] == limit and str(limit) in error["msg"]
    assert counts(sim_settings) == {"read": 256, "pulse": 0}
    after = api.post(f"{API}/read", json={"all": True}).json()["readings"]
    assert after == [{**r} for r in before]  # the array did not change


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/read", {"cells": [[0, 16]]}, ["body", "cells", 0]),
        ("/read", {"cells": [[3, 3], [16, 0]]}, ["body", "cells", 1]),
        ("/read", {"cells": [[0, -1]]}, ["body", "cells", 0, 1]),
        ("/read", {"cells": [[0, 0]], "v_read": 0.5}, ["body", "v_read"]),
        ("/read", {}, ["body"]),
        ("/read", {"cells": []}, ["body", "cells"]),
        ("/read", {"cells": [[0, 0]], "all": True}, ["body"]),
        ("/pulse", {"cells": [[99, 0]], "voltage": -0.5, "width": 1e-6}, ["body", "cells", 0]),
        ("/pulse", {"cells": [[1, 1], [1, 1]], "voltage": -0.5, "width": 1e-6},
         ["body", "cells", 1]),
        ("/pulse", {"cells": [[0, 0], [0, 1]], "voltage": [-0.5], "width": 1e-6},
         ["body", "voltage"]),
        ("/pulse", {"cells": [], "voltage": -0.5, "width": 1e-6}, ["body", "cells"]),
        ("/pulse", {"cells": [[0, 0]], "voltag": -0.5, "width": 1e-6}, ["body", "voltage"]),
        ("/program", {"targets": []}, ["body", "targets"]),
        ("/program", {"targets": [{"row": 0, "col": 0, "conductance": 3e-4}], "tolerance": 0},
         ["body", "tolerance"]),
        ("/program", {"targets": [{"row": 0, "col": 0, "conductance": 3e-4}], "tolerance": -0.1},
         ["body", "tolerance"]),
        ("/program", {"targets": [{"row": 0, "col": 20, "conductance": 3e-4}]},
         ["body", "targets", 0]),
        ("/program", {"targets": [{"row": 0, "col": 0, "conductance": 0}]},
         ["body", "targets", 0, "conductance"]),
        ("/program", {"targets": [{"row": 0, "col": 0, "conductance": 3e-4},
                                  {"row": 0, "col": 1, "conductance": 6e-3}]},
         ["body", "targets", 1, "conductance"]),
        ("/program", {"targets": [{"row": 0, "col": 0, "conductance": 3e-4}], "strategy": "x"},
         ["body", "strategy"]),
        ("/program", {"targets": [{"row": 0, "col": 0, "conductance": 3e-4}],
                      "max_pulses": 5000}, ["body", "max_pulses"]),
        ("/program", {"targets": [{"row": 0, "col": 0, "conductance": 3e-4}], "max_pulses": 0},
         ["body", "max_pulses"]),
        ("/program", {"targets": [{"row": 2, "col": 2, "conductance": 3e-4},
                                  {"row": 2, "col": 2, "conductance": 2e-4}]},
         ["body", "targets", 1]),
    ],
)
def test_bad_input_is_4xx_naming_the_field_and_records_nothing(api, sim_settings, path, body, loc):
    response = api.post(f"{API}{path}", json=body)
    details = response.json()["detail"]
    assert response.status_code == 422, response.text
    assert any(d["loc"] == loc for d in details), details
    assert counts(sim_settings) == {"read": 0, "pulse": 0}


def test_malformed_json_is_422(api, sim_settings):
    response = api.post(
        f"{API}/program", content=b'{"targets": [', headers={"content-type": "application/json"}
    )
    error = problem(response)
    assert error["type"] == "json_invalid" and error["loc"][0] == "body"
    assert counts(sim_settings) == {"read": 0, "pulse": 0}


def test_program_verify_and_one_shot(api, sim_settings):
    targets = [{"row": 2, "col": c, "conductance": g} for c, g in enumerate([150e-6, 300e-6])]
    run = api.post(
        f"{API}/program",
        json={"targets": targets, "max_pulses": 100, "trace": True, "strategy": "ispp"},
    ).json()
    assert run["strategy"] == "ispp" and run["converged"] == 2
    for result, target in zip(run["results"], targets, strict=True):
        assert result["converged"] and abs(result["final"] - result["target"]) <= 0.02 * target[
            "conductance"]
        assert len(result["trace"]) == result["pulses"] > 0
        assert result["trace"][-1]["conductance"] == result["final"]
    shot = api.post(
        f"{API}/program",
        json={"targets": [{"row": 3, "col": 0, "conductance": 2e-4}], "verify": False,
              "strategy": "ispp"},
    ).json()
    only = shot["results"][0]
    assert (only["final"], only["converged"], only["trace"]) == (None, None, None)
    assert only["pulses"] == 1
    assert shot["reads"] == 1 and shot["total_pulses"] == 1
    assert counts(sim_settings) == {
        "read": run["reads"] + 1, "pulse": run["total_pulses"] + 1
    }


def test_runs_history_and_export(api, sim_settings):
    targets = [{"row": 4, "col": c, "conductance": 250e-6} for c in range(4)]
    run = api.post(
        f"{API}/program", json={"targets": targets, "max_pulses": 100, "strategy": "ispp"}
    ).json()
    listed = api.get(f"{API}/runs").json()["runs"]
    assert listed[0]["id"] == run["run_id"] and listed[0]["status"] == "done"
    assert listed[0]["total_pulses"] == run["total_pulses"]
    detail = api.get(f"{API}/runs/{run['run_id']}", params={"trace": True}).json()
    assert [r["final"] for r in detail["results"]] == [r["final"] for r in run["results"]]
    assert [len(r["trace"]) for r in detail["results"]] == [r["pulses"] for r in run["results"]]
    assert api.get(f"{API}/runs/999").status_code == 404

    exported = api.get(f"{API}/export", params={"format": "csv"})
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert sum(r["kind"] == "pulse" for r in rows) == run["total_pulses"]
    assert sum(r["kind"] == "read" for r in rows) == run["reads"]
    assert all(r["run_id"] == str(run["run_id"]) and r["backend"] == "simulated" for r in rows)
    assert api.get(f"{API}/export", params={"format": "xml"}).status_code == 422


def test_openapi_documents_every_field_of_the_contract(api):
    schema = api.get("/openapi.json").json()
    ours = [
        "HealthResponse", "ArrayResponse", "LimitsModel", "ReadRequest", "Reading",
        "ReadResponse", "PulseRequest", "AppliedPulse", "PulseResponse", "Target",
        "ProgramRequest", "TraceStep", "CellResult", "ProgramResponse", "RunSummary",
        "RunList", "RunDetail", "ErrorResponse", "ErrorItem",
    ]
    components = schema["components"]["schemas"]
    undocumented = [
        f"{name}.{field}"
        for name in ours
        for field, spec in components[name]["properties"].items()
        if not spec.get("description")
    ]
    assert undocumented == []
    paths = schema["paths"]
    for path in ("health", "array", "read", "pulse", "program", "runs", "runs/{run_id}", "export"):
        assert f"{API}/{path}" in paths


class UnplugsSimBackend(SimBackend):
    """Test double: the real simulated backend whose instrument link is down for reads."""

    def read(self, rows, cols, v_read=0.2):
        raise BackendUnavailable("SMU timed out (test double)")


def test_backend_unavailable_is_503(sim_settings, client_for):
    from service.app import create_app

    def factory(settings):
        from sim_backend import Crossbar

        return UnplugsSimBackend(Crossbar(4, 4))

    with client_for(create_app(sim_settings, backend_factory=factory)) as client:
        response = client.post(f"{API}/read", json={"all": True})
        assert response.status_code == 503 and "timed out" in response.json()["detail"]
        assert client.get(f"{API}/health").json()["status"] == "ok"


def test_every_answer_follows_a_durable_commit(api, sim_settings):
    api.post(f"{API}/pulse", json={"cells": [[0, 0]], "voltage": -0.45, "width": 1e-7,
                                   "read_after": True})
    with sqlite3.connect(sim_settings.database) as conn:
        last_op = conn.execute("SELECT MAX(time) FROM operations").fetchone()[0]
        synced = conn.execute("SELECT value FROM meta WHERE key = 'durable_commit'").fetchone()
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert synced is not None and synced[0] >= last_op


class UnreachableSimBackend(SimBackend):
    """Test double: the real simulated backend behind a link that is down until `reachable`."""

    reachable = False

    def describe(self):
        if not self.reachable:
            raise BackendUnavailable("no route to bench (test double)")
        return super().describe()


def test_service_starts_without_its_bench_and_recovers(sim_settings, client_for):
    from service.app import create_app
    from sim_backend import Crossbar

    backend = UnreachableSimBackend(Crossbar(4, 4))
    with client_for(create_app(sim_settings, backend_factory=lambda s: backend)) as client:
        health = client.get(f"{API}/health").json()
        assert health["status"] == "unavailable" and "no route" in health["unavailable"]
        assert client.post(f"{API}/read", json={"all": True}).status_code == 503
        assert client.get(f"{API}/array").status_code == 503
        backend.reachable = True
        assert client.get(f"{API}/health").json()["status"] == "ok"
        assert len(client.post(f"{API}/read", json={"all": True}).json()["readings"]) == 16
    assert counts(sim_settings) == {"read": 16, "pulse": 0}


def test_a_bench_that_drops_is_reported_down_until_it_answers_again(sim_settings, client_for):
    from service.app import create_app
    from sim_backend import Crossbar

    class DropsSimBackend(UnreachableSimBackend):
        reachable = True

        def read(self, rows, cols, v_read=0.2):
            if not self.reachable:
                raise BackendUnavailable("SMU not answering (test double)")
            return super().read(rows, cols, v_read)

    def backend_up(client) -> str:
        return next(line for line in client.get("/metrics").text.splitlines()
                    if line.startswith("memprog_backend_up"))

    backend = DropsSimBackend(Crossbar(4, 4))
    with client_for(create_app(sim_settings, backend_factory=lambda s: backend)) as client:
        assert client.post(f"{API}/read", json={"all": True}).status_code == 200
        assert backend_up(client) == "memprog_backend_up 1.0"
        backend.reachable = False
        assert client.post(f"{API}/read", json={"all": True}).status_code == 503
        assert backend_up(client) == "memprog_backend_up 0.0"
        health = client.get(f"{API}/health").json()
        assert health["status"] == "unavailable" and "test double" in health["unavailable"]
        backend.reachable = True
        assert client.get(f"{API}/health").json()["status"] == "ok"
        assert backend_up(client) == "memprog_backend_up 1.0"
