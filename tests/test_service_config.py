"""Settings: defaults, MEMPROG_ environment variables with __ nesting, the TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("MEMPROG_"):
            monkeypatch.delenv(name)


def test_defaults_run_on_the_simulator():
    settings = load_settings()
    assert settings.backend == "sim"
    assert settings.database == Path("memprog.db")
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8000)
    assert settings.limits.to_limits().v_set_max == 0.9


def test_environment_with_prefix_and_nesting(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMPROG_BACKEND", "sim")
    monkeypatch.setenv("MEMPROG_SIM__ROWS", "256")
    monkeypatch.setenv("MEMPROG_SIM__COLS", "128")
    monkeypatch.setenv("MEMPROG_SIM__SEED", "42")
    monkeypatch.setenv("MEMPROG_SIM__VARIABILITY", "d2d")
    monkeypatch.setenv("MEMPROG_DATABASE", str(tmp_path / "ops.db"))
    monkeypatch.setenv("MEMPROG_LIMITS__V_SET_MAX", "0.6")
    monkeypatch.setenv("MEMPROG_LIMITS__V_RESET_MAX", "1.0")
    monkeypatch.setenv("MEMPROG_LIMITS__WIDTH_MIN", "1e-8")
    monkeypatch.setenv("MEMPROG_LIMITS__WIDTH_MAX", "1e-3")
    monkeypatch.setenv("MEMPROG_LIMITS__COMPLIANCE", "5e-4")
    s = load_settings()
    assert (s.sim.rows, s.sim.cols, s.sim.seed, s.sim.variability) == (256, 128, 42, "d2d")
    assert s.database == tmp_path / "ops.db"
    limits = s.limits.to_limits()
    assert (limits.v_set_max, limits.v_reset_max) == (0.6, 1.0)
    assert (limits.width_min, limits.width_max, limits.compliance) == (1e-8, 1e-3, 5e-4)


def test_toml_file_with_environment_overriding_it(monkeypatch, tmp_path):
    config = tmp_path / "memprog.toml"
    config.write_text(
        'backend = "sim"\ndatabase = "lab.db"\n'
        '[sim]\nrows = 32\ncols = 16\nvariability = "ideal"\n'
        "[limits]\nv_set_max = 0.8\n[server]\nport = 9000\n"
    )
    s = load_settings(config)
    assert (s.sim.rows, s.sim.cols, s.sim.variability) == (32, 16, "ideal")
    assert s.limits.v_set_max == 0.8 and s.server.port == 9000
    assert s.database == Path("lab.db")
    monkeypatch.setenv("MEMPROG_SIM__ROWS", "8")
    s = load_settings(config)
    assert (s.sim.rows, s.sim.cols) == (8, 16)  # env wins, the rest of the table stays


def test_a_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MEMPROG_SIM__VARIABILITY", "wild"),
        ("MEMPROG_BACKEND", "gpib"),
        ("MEMPROG_SIM__ROWS", "0"),
        ("MEMPROG_LIMITS__V_SET_MAX", "-1"),
        ("MEMPROG_LIMITS__WIDTH_MIN", "1"),  # above width_max
    ],
)
def test_bad_values_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        load_settings()


def test_visa_needs_a_bench_config(tmp_path):
    with pytest.raises(ValidationError, match="bench_config"):
        Settings(backend="visa")
    s = Settings(backend="visa", bench_config=tmp_path / "bench.toml")
    assert s.bench_config == tmp_path / "bench.toml"


# -- found in review: values that used to be accepted and left the service unsafe or broken --


def test_an_unknown_memprog_variable_is_refused(monkeypatch):
    from service.config import load_settings

    monkeypatch.setenv("MEMPROG_LIMIT__V_SET_MAX", "0.5")  # typo: LIMIT, not LIMITS
    with pytest.raises(ValueError, match="MEMPROG_LIMIT__V_SET_MAX names no setting"):
        load_settings()
    monkeypatch.delenv("MEMPROG_LIMIT__V_SET_MAX")
    monkeypatch.setenv("MEMPROG_HEALTH_URL", "http://127.0.0.1:1/")  # not a setting: allowed
    monkeypatch.setenv("MEMPROG_LIMITS__V_SET_MAX", "0.5")
    assert load_settings().limits.v_set_max == 0.5


def test_an_empty_variable_unsets_an_optional_path(monkeypatch):
    monkeypatch.setenv("MEMPROG_SIM__STATE_FILE", "")
    monkeypatch.setenv("MEMPROG_PREDICTOR__PATH", "")
    settings = Settings()
    assert settings.sim.state_file is None and settings.predictor.path is None


@pytest.mark.parametrize(("variable", "value", "field"), [
    ("MEMPROG_LIMITS__COMPLIANCE", "inf", "compliance"),
    ("MEMPROG_LIMITS__V_SET_MAX", "nan", "v_set_max"),
    ("MEMPROG_SIM__SEED", "-1", "seed"),
    ("MEMPROG_PROGRAMMING__V_READ", "0.5", "v_read"),
    ("MEMPROG_PROGRAMMING__V_READ", "0", "v_read"),
])
def test_unsafe_or_unusable_values_are_refused(monkeypatch, variable, value, field):
    from pydantic import ValidationError

    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=field):
        Settings()
