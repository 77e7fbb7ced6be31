"""API fuzzing: schemathesis generates requests from the running service's ``/openapi.json``
(valid ones and invalid ones) for every operation; none may answer 5xx.

Bounded: a small array, a small pulse budget cap (so a fuzzed /program or job is short), a fixed
number of examples per operation and mode, a timeout per request and a time budget for the whole
run. Deterministic (``derandomize``) so that CI runs the same requests every time;
``MEMPROG_FUZZ_EXAMPLES`` and ``MEMPROG_FUZZ_SEED`` widen or vary it by hand.
"""

from __future__ import annotations

import os
import time

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from service.launch import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

EXAMPLES = int(os.environ.get("MEMPROG_FUZZ_EXAMPLES", "40"))
SEED = os.environ.get("MEMPROG_FUZZ_SEED")
BUDGET = 240.0  # s for the whole run
REQUEST_TIMEOUT = 30.0  # s


def test_fuzzing_the_api_finds_no_server_error(tmp_path):
    env = {
        "MEMPROG_BACKEND": "sim",
        "MEMPROG_SIM__ROWS": "6",
        "MEMPROG_SIM__COLS": "6",
        "MEMPROG_SIM__SEED": "1",
        "MEMPROG_DATABASE": str(tmp_path / "fuzz.db"),
        "MEMPROG_PROGRAMMING__MAX_PULSES_CAP": "30",
    }
    failures: list[str] = []
    calls = 0
    started = time.monotonic()
    with ServerProcess(env, log_path=tmp_path / "server.log") as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 15  # every route is in the schema, so every route is fuzzed

        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    database=None,
                    derandomize=SEED is None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=mode))
                def fuzz(case) -> None:
                    nonlocal calls
                    if time.monotonic() - started > BUDGET:
                        return
                    calls += 1
                    asked = (
                        f"{case.method} {case.formatted_path} query={case.query} "
                        f"body={str(case.body)[:300]}"
                    )
                    try:
                        response = case.call(base_url=server.url, timeout=REQUEST_TIMEOUT)
                    except requests.RequestException as exc:  # e.g. a stream that broke off
                        failures.append(f"{asked} -> {type(exc).__name__}: {exc}")
                        return
                    if response.status_code >= 500:
                        failures.append(
                            f"{asked} -> {response.status_code} {response.text[:300]}"
                        )

                if SEED is not None:
                    fuzz = seed(int(SEED))(fuzz)
                try:
                    fuzz()
                except Unsatisfiable:
                    # an operation without parameters or body has no invalid variant
                    assert mode is GenerationMode.NEGATIVE, operation.label
        # random ids rarely name a real job or run: visit every one the fuzzing created
        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT) as http:
            jobs = http.get("/api/v1/jobs", params={"limit": 1000}).json()["jobs"]
            runs = http.get("/api/v1/runs", params={"limit": 1000}).json()["runs"]
            for path in [f"/api/v1/runs/{run['id']}?trace=true" for run in runs] + [
                f"/api/v1/export?run_id={run['id']}" for run in runs[:20]
            ]:
                calls += 1
                if (status := http.get(path).status_code) >= 500:
                    failures.append(f"GET {path} -> {status}")
            for job in jobs:
                for method, path in (("POST", "abort"), ("GET", "events"), ("GET", "")):
                    url = f"/api/v1/jobs/{job['id']}/{path}".rstrip("/")
                    calls += 1
                    if (status := http.request(method, url).status_code) >= 500:
                        failures.append(f"{method} {url} -> {status}")
        log = (tmp_path / "server.log").read_text(errors="replace")
    elapsed = time.monotonic() - started
    assert not failures, "\n".join(failures[:20])
    assert elapsed < BUDGET, f"the fuzzing run took {elapsed:.0f} s: not every example ran"
    assert calls >= len(operations) * 2 * 5  # it did fuzz
    assert "Traceback" not in log, log[-3000:]
