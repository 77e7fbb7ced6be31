"""The dashboard in a real browser: ``memprog serve`` (uvicorn subprocess, real SQLite, simulated
array) opened in headless Debian Chromium through Playwright.

The page loads from the service itself, says SIMULATED, follows a job submitted through the API
live (server-sent events) to its end, then draws the conductance heatmap of what the job read
and the histogram of pulses per device of its run. With API keys on, it asks for a key and uses
it (also for the progress stream). A screenshot goes to ``reports/dashboard.png``.

Chromium comes from Debian (``make test`` installs it when /usr/bin/chromium is missing); the
Python package ``playwright`` drives it (no browser download).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest

from service.launch import ServerProcess, memprog_command
from tests.servers import sim_server_env

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("MEMPROG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPORTS = Path(__file__).resolve().parent.parent / "reports"
ROWS = COLS = 16
API = "/api/v1"

# Records every change of #job-progress (set before the job exists): the test can then tell
# whether the page showed the job *while it ran*, not only its end.
WATCH_PROGRESS = """
() => {
  window.__progress = [];
  const box = document.getElementById('job-progress');
  const note = () => window.__progress.push({
    id: box.dataset.jobId, status: box.dataset.status, done: Number(box.dataset.cellsDone),
    total: Number(box.dataset.totalCells), percent: Number(box.dataset.percent),
    source: box.dataset.source, text: document.getElementById('job-progress-text').textContent,
  });
  new MutationObserver(note).observe(box, {attributes: true});
}
"""

# The colour of the heatmap canvas at the centre of cell (row, col), as [r, g, b].
PIXEL = """
([row, col]) => {
  const canvas = document.getElementById('heatmap');
  const cell = Number(canvas.dataset.cellSize);
  const scale = canvas.width / parseFloat(canvas.style.width);
  const x = Math.floor((34 + (col + 0.5) * cell) * scale);
  const y = Math.floor((20 + (row + 0.5) * cell) * scale);
  return Array.from(canvas.getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3));
}
"""

# Pixels of the histogram canvas in the bar colours (converged green, others orange).
BAR_PIXELS = """
() => {
  const canvas = document.getElementById('pulse-histogram');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let bars = 0;
  for (let i = 0; i < data.length; i += 4) {
    const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
    if ((r === 46 && g === 158 && b === 91) || (r === 217 && g === 130 && b === 43)) bars++;
  }
  return bars;
}
"""

VIRIDIS_LOW = (68, 1, 84)
VIRIDIS_HIGH = (253, 231, 37)
NEVER_READ = (58, 63, 71)


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make browser` (part of `make test`) installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=60_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return sim_server_env(tmp_path / "memprog.db", rows=ROWS, cols=COLS, seed=11, **extra)


def slow_job(cells: list[tuple[int, int]]) -> dict:
    """A job of a few seconds: the fixed-pulse baseline to a tight 0.5 % band, so cells finish
    one by one over up to 400 iterations."""
    return {
        "targets": [
            {"row": r, "col": c, "conductance": 120e-6 + 1.5e-6 * (r * COLS + c)}
            for r, c in cells
        ],
        "tolerance": 0.005,
        "max_pulses": 400,
        "strategy": "fixed",
    }


def new_page(browser, errors: list[str]):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: errors.append(f"console: {msg.text}")
        if msg.type == "error" and "401" not in msg.text
        else None,
    )
    return page


def test_dashboard_follows_a_job_then_draws_heatmap_and_histogram(browser, tmp_path):
    errors: list[str] = []
    with ServerProcess(server_env(tmp_path), log_path=tmp_path / "server.log") as server, \
            httpx.Client(base_url=server.url, timeout=60) as api:
        page = new_page(browser, errors)
        page.goto(server.url + "/", wait_until="domcontentloaded")

        # the banner: simulated, with the backend's identity from /health
        page.wait_for_selector('#backend-banner[data-backend="simulated"]', timeout=15_000)
        banner = page.inner_text("#backend-banner")
        assert "SIMULATED" in banner and "HARDWARE" not in banner
        identity = api.get(f"{API}/health").json()["instruments"]["array"]
        assert identity in banner

        # before any job: an empty map of the right size (nothing was ever read)
        page.wait_for_selector('#heatmap[data-rows="16"]', timeout=15_000)
        assert page.get_attribute("#heatmap", "data-cells") == "0"
        assert page.evaluate(PIXEL, [3, 3]) == list(NEVER_READ)
        assert api.get(f"{API}/array/map").json()["cells_read"] == 0  # the page read nothing

        page.evaluate(WATCH_PROGRESS)
        cells = [(r, c) for r in range(ROWS) for c in range(COLS)]
        submitted = api.post(f"{API}/jobs", json=slow_job(cells))
        assert submitted.status_code == 202, submitted.text
        job_id = str(submitted.json()["id"])

        # the page finds the job, follows it live and shows its end
        page.wait_for_selector(
            f'#job-progress[data-job-id="{job_id}"][data-status="completed"]', timeout=90_000
        )
        job = api.get(f"{API}/jobs/{job_id}").json()
        assert job["status"] == "completed" and job["cells_done"] == job["total_cells"] == 256
        seen = [s for s in page.evaluate("window.__progress") if s["id"] == job_id]
        live = [s for s in seen if s["status"] == "running" and 0 < s["done"] < 256]
        assert live, f"the page never showed the job running part-way: {seen}"
        assert any(s["source"] == "sse" for s in live)  # through the event stream
        done = [s["done"] for s in seen]
        assert done == sorted(done)  # progress only moves forward
        assert page.get_attribute("#job-progress", "data-percent") == "100"
        assert page.get_attribute("#job-progress-bar", "aria-valuenow") == "100"
        assert "256 / 256 cells" in page.inner_text("#job-progress-text")
        assert page.inner_text("#job-status").lower() == "completed"
        row = f'#jobs-table tr[data-job-id="{job_id}"]'
        assert page.locator(row).count() == 1
        page.wait_for_function(  # the table row agrees (the list is polled once a second)
            f"document.querySelector('{row} td:nth-child(2)').textContent === 'completed'",
            timeout=10_000,
        )
        assert page.inner_text(f"{row} td:nth-child(3)") == "256/256"

        # the heatmap after the job: every cell read, coloured by its conductance
        page.wait_for_selector('#heatmap[data-cells="256"]', timeout=15_000)
        conductance = api.get(f"{API}/array/map").json()["conductance"]
        flat = [(g, r, c) for r, row in enumerate(conductance) for c, g in enumerate(row)]
        g_min, r_min, c_min = min(flat)
        g_max, r_max, c_max = max(flat)
        assert page.evaluate(PIXEL, [r_min, c_min]) == list(VIRIDIS_LOW)
        assert page.evaluate(PIXEL, [r_max, c_max]) == list(VIRIDIS_HIGH)
        assert page.inner_text("#legend-min") == f"{g_min * 1e6:.1f}"
        assert page.inner_text("#legend-max") == f"{g_max * 1e6:.1f}"

        # the histogram of the job's run: one entry per device, every pulse counted
        run = api.get(f"{API}/runs/{job['run_id']}").json()
        page.wait_for_selector(
            f'#pulse-histogram[data-run-id="{job["run_id"]}"][data-cells="256"]', timeout=15_000
        )
        total_pulses = sum(r["pulses"] for r in run["results"])
        assert total_pulses == job["pulses"] > 256
        assert page.get_attribute("#pulse-histogram", "data-total-pulses") == str(total_pulses)
        assert page.evaluate(BAR_PIXELS) > 500
        assert "256 devices" in page.inner_text("#hist-stats")

        REPORTS.mkdir(exist_ok=True)
        page.screenshot(path=str(REPORTS / "dashboard.png"), full_page=True)
        page.close()
    assert not errors, errors


def create_key(tmp_path: Path, scope: str) -> str:
    result = subprocess.run(
        [*memprog_command(), "keys", "create", "--create", "--database",
         str(tmp_path / "memprog.db"), "--scope", scope, "--name", f"dashboard-{scope}"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return result.stdout.strip()


def test_dashboard_asks_for_a_key_and_streams_progress_with_it(browser, tmp_path):
    errors: list[str] = []
    env = server_env(tmp_path, MEMPROG_AUTH__ENABLED="true")
    read_key = create_key(tmp_path, "read")
    program_key = create_key(tmp_path, "program")
    with ServerProcess(env, log_path=tmp_path / "server.log") as server, \
            httpx.Client(base_url=server.url, timeout=60) as api:
        assert api.get(f"{API}/array/map").status_code == 401
        page = new_page(browser, errors)
        page.goto(server.url + "/", wait_until="domcontentloaded")

        # health is open (the banner shows), the rest answers 401: the page asks for a key
        page.wait_for_selector('#backend-banner[data-backend="simulated"]', timeout=15_000)
        page.wait_for_selector("#auth-panel:not([hidden])", timeout=15_000)
        assert page.get_attribute("#heatmap", "data-rows") is None
        page.fill("#api-key", read_key)
        page.click("#api-key-save")
        page.wait_for_selector("#auth-panel", state="hidden", timeout=15_000)
        page.wait_for_selector('#heatmap[data-rows="16"]', timeout=15_000)
        assert page.evaluate("localStorage.getItem('memprog.apiKey')") == read_key

        # a job (submitted with a program key) is followed through the key-carrying stream
        page.evaluate(WATCH_PROGRESS)
        submitted = api.post(
            f"{API}/jobs", json=slow_job([(r, c) for r in range(4) for c in range(COLS)]),
            headers={"Authorization": f"ApiKey {program_key}"},
        )
        assert submitted.status_code == 202, submitted.text
        job_id = str(submitted.json()["id"])
        page.wait_for_selector(
            f'#job-progress[data-job-id="{job_id}"][data-status="completed"]', timeout=90_000
        )
        seen = [s for s in page.evaluate("window.__progress") if s["id"] == job_id]
        assert any(s["source"] in ("stream", "poll") for s in seen), seen
        page.wait_for_selector('#heatmap[data-cells="64"]', timeout=15_000)

        # the key is remembered: a reload does not ask again
        page.reload(wait_until="domcontentloaded")
        page.wait_for_selector('#heatmap[data-cells="64"]', timeout=15_000)
        assert page.is_hidden("#auth-panel")
        page.close()
    assert not errors, errors


def test_dashboard_says_hardware_on_a_bench(browser, tmp_path):
    """Against the emulated 2450 + 33500B + 707B bench (the visa backend): the banner says
    HARDWARE with the instruments' identities, and the page still fires nothing."""
    from tests.test_deploy import emulated_bench

    errors: list[str] = []
    with emulated_bench(tmp_path) as bench:
        env = {
            "MEMPROG_BACKEND": "visa",
            "MEMPROG_BENCH_CONFIG": str(bench),
            "MEMPROG_DATABASE": str(tmp_path / "memprog.db"),
        }
        with ServerProcess(env, log_path=tmp_path / "server.log") as server, \
                httpx.Client(base_url=server.url, timeout=60) as api:
            page = new_page(browser, errors)
            page.goto(server.url + "/", wait_until="domcontentloaded")
            page.wait_for_selector('#backend-banner[data-backend="hardware"]', timeout=15_000)
            assert "hardware" in page.get_attribute("#backend-banner", "class").split()
            banner = page.inner_text("#backend-banner")
            assert "HARDWARE" in banner and "SIMULATED" not in banner
            for identity in api.get(f"{API}/health").json()["instruments"].values():
                assert identity in banner  # e.g. ...,EMULATED-2450,... : never mistaken
            page.wait_for_selector('#heatmap[data-rows="4"]', timeout=15_000)
            assert page.get_attribute("#heatmap", "data-cells") == "0"
            page.close()
        with contextlib.closing(sqlite3.connect(tmp_path / "memprog.db")) as db:
            assert db.execute("SELECT COUNT(*) FROM operations").fetchone()[0] == 0
    assert not errors, errors


def test_dashboard_selects_a_station_of_a_shared_database_and_marks_a_silent_one(
        browser, tmp_path, postgres_url):
    """Two stations on one PostgreSQL database: the page shows its own station's map, switches
    to the other's with the selector, and marks a station that stopped beating."""
    errors: list[str] = []

    def station(name: str) -> ServerProcess:
        env = server_env(tmp_path / name, MEMPROG_DATABASE=postgres_url, MEMPROG_STATION=name,
                         MEMPROG_STATE_DIR=str(tmp_path / name), MEMPROG_HEARTBEAT_S="0.5")
        (tmp_path / name).mkdir()
        return ServerProcess(env, log_path=tmp_path / f"{name}.log")

    with station("bench-a") as a, station("bench-b") as b, \
            httpx.Client(base_url=a.url, timeout=60) as api_a, \
            httpx.Client(base_url=b.url, timeout=60) as api_b:
        assert api_a.post(f"{API}/read", json={"cells": [[0, 0], [0, 1]]}).status_code == 200
        assert api_b.post(f"{API}/read", json={"cells": [[r, 0] for r in range(5)]}
                          ).status_code == 200
        page = new_page(browser, errors)
        page.goto(a.url + "/", wait_until="domcontentloaded")
        page.wait_for_selector("#station-picker:not([hidden])", timeout=15_000)
        options = page.eval_on_selector_all("#station-select option", "os => os.map(o => o.value)")
        assert options == ["bench-a", "bench-b"]
        assert page.input_value("#station-select") == "bench-a"
        page.wait_for_selector('#heatmap[data-cells="2"]', timeout=15_000)  # its own reads

        page.select_option("#station-select", "bench-b")
        page.wait_for_selector('#heatmap[data-cells="5"]', timeout=15_000)  # the other's

        b.stop()  # bench-b stops beating: silent after three missed beats
        page.wait_for_function(
            "[...document.querySelectorAll('#station-select option')].some("
            "o => o.value === 'bench-b' && o.textContent.includes('SILENT'))", timeout=20_000)
        page.close()
    assert not errors, errors
