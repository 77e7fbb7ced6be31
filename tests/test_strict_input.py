"""Issue 9, points 8 and 9(a): request bodies are strict, read voltages have a lower bound.

Loose JSON used to be coerced into physical quantities and indices (``"voltage": true`` fired
+1.0 V, ``"cells": [[true, false]]`` pulsed cell (1, 0), ``"voltage": "-0.4"`` was accepted), and a
read at 1e-30 V was accepted (every reading 0 S). Each is now a 422 naming the field, with nothing
fired and nothing recorded. Real app, real Crossbar, real SQLite; the VISA bench over the SCPI
emulators on real sockets.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from pydantic import ValidationError

from drivers.base import LimitError, Limits, check_read, stricter

API = "/api/v1"
TARGET = {"row": 0, "col": 0, "conductance": 3e-4}
PULSE = {"cells": [[0, 0]], "voltage": -0.45, "width": 1e-7}


def ledger(settings) -> dict[str, int]:
    """Operations and jobs stored so far."""
    with sqlite3.connect(settings.database) as conn:
        found = dict(conn.execute("SELECT kind, COUNT(*) FROM operations GROUP BY kind"))
        (jobs,) = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
    return {"read": found.get("read", 0), "pulse": found.get("pulse", 0), "jobs": jobs}


NOTHING = {"read": 0, "pulse": 0, "jobs": 0}


# ------------------------------------------------------------------------ point 8: strict types


def program(**change) -> dict:
    return {"targets": [TARGET], "max_pulses": 5, "strategy": "ispp", **change}


LOOSE = [
    # bool or string where a number of volts / seconds is expected
    ("/pulse", {**PULSE, "voltage": True}, ["body", "voltage"]),
    ("/pulse", {**PULSE, "voltage": [True]}, ["body", "voltage"]),
    ("/pulse", {**PULSE, "voltage": "-0.4"}, ["body", "voltage"]),
    ("/pulse", {**PULSE, "voltage": ["-0.4"]}, ["body", "voltage"]),
    ("/pulse", {**PULSE, "width": True}, ["body", "width"]),
    ("/pulse", {**PULSE, "width": "1e-7"}, ["body", "width"]),
    ("/pulse", {**PULSE, "read_after": True, "v_read": True}, ["body", "v_read"]),
    ("/pulse", {**PULSE, "read_after": True, "v_read": "0.2"}, ["body", "v_read"]),
    # bool, float or string where an index is expected
    ("/pulse", {**PULSE, "cells": [[True, False]]}, ["body", "cells", 0, 0]),
    ("/pulse", {**PULSE, "cells": [[1.0, 0]]}, ["body", "cells", 0, 0]),
    ("/pulse", {**PULSE, "cells": [[0, "1"]]}, ["body", "cells", 0, 1]),
    # loose booleans
    ("/pulse", {**PULSE, "read_after": 1}, ["body", "read_after"]),
    ("/pulse", {**PULSE, "read_after": "yes"}, ["body", "read_after"]),
    ("/read", {"cells": [[True, False]]}, ["body", "cells", 0, 0]),
    ("/read", {"cells": [[0.0, 1]]}, ["body", "cells", 0, 0]),
    ("/read", {"all": 1}, ["body", "all"]),
    ("/read", {"all": "true"}, ["body", "all"]),
    ("/read", {"cells": [[0, 0]], "v_read": True}, ["body", "v_read"]),
    ("/read", {"cells": [[0, 0]], "v_read": "0.2"}, ["body", "v_read"]),
    ("/program", program(targets=[{**TARGET, "row": True}]), ["body", "targets", 0, "row"]),
    ("/program", program(targets=[{**TARGET, "row": 1.0}]), ["body", "targets", 0, "row"]),
    ("/program", program(targets=[{**TARGET, "col": "0"}]), ["body", "targets", 0, "col"]),
    ("/program", program(targets=[{**TARGET, "conductance": "3e-4"}]),
     ["body", "targets", 0, "conductance"]),
    ("/program", program(targets=[{**TARGET, "conductance": True}]),
     ["body", "targets", 0, "conductance"]),
    ("/program", program(tolerance="0.02"), ["body", "tolerance"]),
    ("/program", program(tolerance=True), ["body", "tolerance"]),
    ("/program", program(max_pulses=5.0), ["body", "max_pulses"]),
    ("/program", program(max_pulses="5"), ["body", "max_pulses"]),
    ("/program", program(max_pulses=True), ["body", "max_pulses"]),
    ("/program", program(verify="false"), ["body", "verify"]),
    ("/program", program(verify=0), ["body", "verify"]),
    ("/program", program(trace=1), ["body", "trace"]),
    ("/program", program(v_read=True), ["body", "v_read"]),
    ("/jobs", program(targets=[{**TARGET, "row": True}]), ["body", "targets", 0, "row"]),
    ("/jobs", program(targets=[{**TARGET, "conductance": "3e-4"}]),
     ["body", "targets", 0, "conductance"]),
    ("/jobs", program(max_pulses=5.0), ["body", "max_pulses"]),
    ("/jobs", program(verify=1), ["body", "verify"]),
    ("/jobs", program(v_read="0.2"), ["body", "v_read"]),
]


@pytest.mark.parametrize(("path", "body", "loc"), LOOSE)
def test_loose_types_are_422_naming_the_field_and_fire_nothing(api, sim_settings, path, body, loc):
    response = api.post(f"{API}{path}", json=body)
    assert response.status_code == 422, response.text
    details = response.json()["detail"]
    # a union (number or list of numbers) names the member too: ['body', 'voltage', 'float']
    assert any(d["loc"][: len(loc)] == loc for d in details), details
    assert ledger(sim_settings) == NOTHING


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # JSON has no separate float type: an integral number of volts is a number of volts
        ("/pulse", {**PULSE, "voltage": 1}),
        ("/pulse", {"cells": [[0, 0], [0, 1]], "voltage": [0, 1], "width": 1e-7}),
        ("/program", program(targets=[{**TARGET, "row": 1, "col": 2}], max_pulses=5)),
    ],
)
def test_integral_numbers_stay_accepted(api, path, body):
    response = api.post(f"{API}{path}", json=body)
    assert response.status_code == 200, response.text


def test_an_integral_voltage_fires_as_given(api, sim_settings):
    body = api.post(f"{API}/pulse", json={**PULSE, "voltage": 1, "read_after": False}).json()
    assert body["pulses"] == [{"row": 0, "col": 0, "voltage": 1.0, "width": 1e-7}]
    assert ledger(sim_settings) == {"read": 0, "pulse": 1, "jobs": 0}


# ------------------------------------------------------------------ point 9(a): v_read_min


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/read", {"cells": [[0, 0]], "v_read": 1e-30}),
        ("/read", {"cells": [[0, 0]], "v_read": -0.01}),
        ("/read", {"all": True, "v_read": 0.0499}),
        ("/pulse", {**PULSE, "read_after": True, "v_read": 1e-30}),
        ("/program", program(v_read=1e-30)),
        ("/program", program(v_read=-0.04)),
        ("/jobs", program(v_read=1e-30)),
    ],
)
def test_a_read_voltage_below_v_read_min_is_422_with_the_limit(api, sim_settings, path, body):
    response = api.post(f"{API}{path}", json=body)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "v_read"] and error["type"] == "limit"
    assert error["ctx"] == {"limit": 0.05}
    assert "v_read_min" in error["msg"] and "0.05 V" in error["msg"]
    assert ledger(sim_settings) == NOTHING


def test_a_read_at_v_read_min_is_accepted(api):
    for v in (0.05, -0.05):
        (reading,) = api.post(
            f"{API}/read", json={"cells": [[0, 0]], "v_read": v}
        ).json()["readings"]
        assert reading["v_read"] == v and reading["conductance"] > 0


def test_array_states_v_read_min_and_the_schema_states_the_read_range(api):
    assert api.get(f"{API}/array").json()["limits"]["v_read_min"] == 0.05
    components = api.get("/openapi.json").json()["components"]["schemas"]
    assert "V" in components["LimitsModel"]["properties"]["v_read_min"]["description"]
    for model in ("ReadRequest", "PulseRequest", "ProgramRequest", "JobRequest"):
        text = components[model]["properties"]["v_read"]["description"]
        assert "v_read_min" in text and "v_read_max" in text and "V" in text, (model, text)


def test_check_read_and_stricter_limits():
    limits = Limits()
    assert limits.v_read_min == 0.05
    with pytest.raises(LimitError) as info:
        check_read(limits, 1e-30)
    assert (info.value.field, info.value.limit) == ("v_read", 0.05)
    check_read(limits, -0.05)
    # the stricter combination takes the larger minimum
    both = stricter(Limits(v_read_min=0.1), Limits(v_read_min=0.02))
    assert both.v_read_min == 0.1
    assert stricter(Limits(), Limits(v_read_min=0.08)).v_read_min == 0.08


def test_settings_carry_v_read_min_and_refuse_a_default_read_below_it(monkeypatch):
    from service.config import Settings

    assert Settings().limits.to_limits().v_read_min == 0.05
    monkeypatch.setenv("MEMPROG_LIMITS__V_READ_MIN", "0.1")
    assert Settings().limits.to_limits().v_read_min == 0.1
    monkeypatch.setenv("MEMPROG_PROGRAMMING__V_READ", "0.08")
    with pytest.raises(ValidationError, match="v_read_min"):
        Settings()
    monkeypatch.setenv("MEMPROG_PROGRAMMING__V_READ", "0.2")
    for bad in ("0", "-0.1", "nan", "0.35"):  # 0.35 > v_read_max 0.3
        monkeypatch.setenv("MEMPROG_LIMITS__V_READ_MIN", bad)
        with pytest.raises(ValidationError, match="v_read_min"):
            Settings()


def _bench(**limits):
    from drivers.visa.bench import parse_bench

    any_socket = "TCPIP0::127.0.0.1::0::SOCKET"
    return parse_bench({
        "smu": {"resource": any_socket, "timeout": 2.0},
        "pulser": {"resource": any_socket, "timeout": 2.0},
        "limits": {"width_min": 1e-9, **limits},
        "emulator": {"timing": False, "variability": "ideal"},
    })


def test_bench_limits_carry_v_read_min():
    assert _bench().limits.to_limits().v_read_min == 0.05
    assert _bench(v_read_min=0.1).limits.to_limits().v_read_min == 0.1
    with pytest.raises(ValidationError, match="v_read_min"):
        _bench(v_read_min=0.31)  # above v_read_max 0.3
    with pytest.raises(ValidationError, match="v_read_min"):
        _bench(v_read_min=0.0)


@pytest.mark.timeout(60)
def test_the_visa_bench_refuses_a_read_below_the_stricter_minimum_before_any_io(tmp_path):
    from drivers.visa import open_backend
    from drivers.visa.emulators import EmulatorRunner

    with EmulatorRunner(_bench(v_read_min=0.02)) as emu:
        path = tmp_path / "bench.toml"
        path.write_text(emu.config.to_toml())
        # the service's configured limits tighten the bench file's: the larger minimum wins
        backend = open_backend(path, limits=Limits(v_read_min=0.04))
        try:
            assert backend.describe().limits.v_read_min == 0.04
            messages = sum(i.messages for i in emu.bench.instruments().values())
            cell = (np.array([0]), np.array([0]))
            with pytest.raises(LimitError) as info:
                backend.read(*cell, v_read=0.03)
            assert (info.value.field, info.value.limit) == ("v_read", 0.04)
            assert sum(i.messages for i in emu.bench.instruments().values()) == messages
            assert backend.read(*cell, v_read=0.04).conductance[0] > 0
        finally:
            backend.close()
