"""GET /metrics: Prometheus exposition of pulses, reads, runs, convergence, latencies, queue."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

API = "/api/v1"


def scrape(client) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_what_was_fired_and_how_requests_went(api):
    before = scrape(api)
    assert before[("memprog_pulses_total", ())] == 0
    assert before[("memprog_backend_up", ())] == 1
    assert before[("memprog_queue_depth", ())] == 0

    api.post(f"{API}/read", json={"cells": [[0, 0], [0, 1], [0, 2]]})
    api.post(f"{API}/pulse", json={"cells": [[1, 0], [1, 1]], "voltage": -0.45, "width": 1e-7,
                                   "read_after": True})
    run = api.post(f"{API}/program", json={
        "targets": [{"row": 2, "col": c, "conductance": 250e-6} for c in range(4)],
        "tolerance": 0.02, "max_pulses": 100, "strategy": "ispp",
    }).json()
    assert api.post(f"{API}/pulse", json={"cells": [[0, 0]], "voltage": -5,
                                          "width": 1e-7}).status_code == 422
    assert api.get(f"{API}/runs/{run['run_id']}").status_code == 200
    assert api.get(f"{API}/runs/424242").status_code == 404
    assert api.get("/no/such/path").status_code == 404
    job = api.post(f"{API}/jobs", json={
        "targets": [{"row": 3, "col": 0, "conductance": 250e-6}], "tolerance": 1e-4,
        "max_pulses": 3, "strategy": "fixed",
    }).json()
    deadline = time.monotonic() + 30
    while api.get(f"{API}/jobs/{job['id']}").json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.02)

    m = scrape(api)
    assert m[("memprog_pulses_total", ())] == 2 + run["total_pulses"] + 3
    assert m[("memprog_reads_total", ())] == 3 + 2 + run["reads"] + (1 + 3)
    ispp = (("outcome", "done"), ("strategy", "ispp"))
    fixed = (("outcome", "done"), ("strategy", "fixed"))
    assert m[("memprog_runs_total", ispp)] == 1 and m[("memprog_runs_total", fixed)] == 1
    assert m[("memprog_cells_programmed_total", (("strategy", "ispp"),))] == 4
    assert m[("memprog_cells_converged_total", (("strategy", "ispp"),))] == run["converged"]
    assert m[("memprog_pulses_per_cell_count", (("strategy", "ispp"),))] == 4
    assert m[("memprog_pulses_per_cell_sum", (("strategy", "ispp"),))] == run["total_pulses"]
    assert m[("memprog_jobs", (("status", "completed"),))] == 1
    assert m[("memprog_jobs", (("status", "running"),))] == 0

    def requests(method: str, route: str, status: int) -> float:
        labels = (("method", method), ("route", route), ("status", str(status)))
        return m.get(("memprog_http_request_duration_seconds_count", labels), 0)

    assert requests("POST", "/api/v1/pulse", 200) == 1
    assert requests("POST", "/api/v1/pulse", 422) == 1
    assert requests("POST", "/api/v1/program", 200) == 1
    assert requests("GET", "/api/v1/runs/{run_id}", 200) == 1  # the template, not the id
    assert requests("GET", "/api/v1/runs/{run_id}", 404) == 1
    assert requests("GET", "unmatched", 404) == 1
    assert requests("POST", "/api/v1/jobs", 202) == 1
    assert requests("GET", "/metrics", 200) == 1  # the first scrape
    latency = ("memprog_http_request_duration_seconds_sum",
               (("method", "POST"), ("route", "/api/v1/program"), ("status", "200")))
    assert 0 < m[latency] < 60
