"""Layers: weight matrices held in the array (:mod:`programming.layers` for the mapping and the
products' arithmetic; :mod:`service.store.layers` for the table).

- ``create``: checks the request (a rectangular, finite matrix; a tile within the array and
  overlapping no other layer of the station; a conductance range the strategy can program;
  422 naming the field, nothing stored or fired), stores the layer, then queues a job that
  programs its rows × 2·outputs devices to their targets (202; the job is an ordinary one:
  progress, abort, e-stop, every pulse in the log);
- ``describe``: the mapping, the targets, the conductances the job's last verify reads found and
  each weight's error;
- ``multiply``: reads only, on the backend's owner thread (nothing is pulsed, nothing recorded
  in the operation log: a product reads every device of the tile at its input's voltage).
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
from fastapi import HTTPException

from drivers.base import Backend, LimitError, check_read
from programming import InvalidRequest, default_strategy, get_strategy
from programming.layers import (
    LayerMapping,
    efficiency,
    input_voltages,
    interleave,
    products,
    split,
    tile_cells,
)
from service.jobs import TERMINAL, JobManager
from service.models import JobRecord, JobRequest, Target
from service.models_layers import (
    MAX_OUTPUTS,
    LayerDetail,
    LayerRecord,
    LayerRequest,
    MultiplyRequest,
    MultiplyResponse,
    Origin,
)
from service.request_helpers import program_job
from service.state import ServiceState
from service.store import Storage
from service.store.layers import LayerExists
from service.validation import RequestProblem


class LayerNotFound(LookupError):
    """No layer of that name on this station."""


class LayerManager:
    def __init__(self, jobs: JobManager, state: ServiceState):
        self.jobs, self.state = jobs, state
        self._lock = asyncio.Lock()  # a name and a tile are checked and taken in one step

    @property
    def storage(self) -> Storage:
        return self.state.storage

    # ------------------------------------------------------------------------------ create
    async def create(self, request: LayerRequest, submitted_by: str | None) -> LayerRecord:
        weights = _matrix(request.weights)
        rows, outputs = weights.shape
        info, limits = await self.state.backend()
        origin = request.origin
        if origin.row + rows > info.rows:
            raise RequestProblem(["origin", "row"], f"the layer's {rows} rows from row "
                                 f"{origin.row} pass the array's last row {info.rows - 1}",
                                 "limit", limit=info.rows - rows)
        if origin.col + 2 * outputs > info.cols:
            raise RequestProblem(["origin", "col"], f"the layer's {outputs} outputs take "
                                 f"{2 * outputs} columns from column {origin.col}, past the "
                                 f"array's last column {info.cols - 1}", "limit",
                                 limit=info.cols - 2 * outputs)
        mapping = LayerMapping(request.mapping.g_min, request.mapping.g_max,
                               request.mapping.low_power)
        strategy = request.strategy or None
        self._check_range(mapping, strategy, limits)
        g_plus, g_minus, k = mapping.targets(weights)
        cell_rows, cell_cols = tile_cells(origin.row, origin.col, rows, outputs)
        targets = interleave(g_plus, g_minus)
        job = await program_job(JobRequest(
            targets=[Target(row=int(r), col=int(c), conductance=float(g))
                     for r, c, g in zip(cell_rows, cell_cols, targets, strict=True)],
            tolerance=request.tolerance, max_pulses=request.max_pulses, strategy=strategy,
        ), self.state)
        stored_mapping = {"kind": "differential", "g_min": mapping.g_min,
                          "g_max": mapping.g_max, "low_power": mapping.low_power, "scale": k}
        async with self._lock:
            try:
                await asyncio.to_thread(self.storage.create_layer, request.name, rows, outputs,
                                        origin.row, origin.col, stored_mapping,
                                        weights.tolist())
            except LayerExists as exc:
                field = str(exc).split(":", 1)[0]
                raise RequestProblem([field], str(exc), "value_error") from None
            try:
                record = await self.jobs.submit(job, submitted_by)
            except BaseException:
                await asyncio.to_thread(self.storage.delete_layer, request.name)
                raise
            await asyncio.to_thread(self.storage.set_layer_job, request.name, record.id)
        return await self.record(request.name)

    def _check_range(self, mapping: LayerMapping, strategy: str | None, limits) -> None:
        name = strategy or default_strategy()
        try:
            get_strategy(name).validate(np.array([mapping.g_min, mapping.g_max]), limits,
                                        self.state.settings.programming.v_read)
        except InvalidRequest as exc:
            which = "g_min" if exc.loc[:2] == ["targets", 0] else "g_max"
            raise RequestProblem(["mapping", which], f"strategy {name!r}: {exc.msg}",
                                 exc.kind, exc.limit) from None
        except KeyError:
            pass  # an unknown strategy: program_job names it

    # ------------------------------------------------------------------------------- read
    async def record(self, name: str) -> LayerRecord:
        layer = await self._layer(name)
        return _record(layer, await self._job(layer))

    async def records(self) -> list[LayerRecord]:
        layers = await asyncio.to_thread(self.storage.list_layers)
        return [_record(layer, await self._job(layer)) for layer in layers]

    async def describe(self, name: str) -> LayerDetail:
        layer = await self._layer(name)
        job = await self._job(layer)
        weights = np.asarray(layer["weights"], dtype=float)
        rows, outputs = weights.shape
        mapping = layer["mapping"]
        g_plus, g_minus, _ = LayerMapping(mapping["g_min"], mapping["g_max"],
                                          mapping["low_power"]).targets(weights)
        programmed = None
        if job is not None and job.run_id is not None and job.status in TERMINAL:
            run = await asyncio.to_thread(self.storage.get_run, job.run_id)
            if run is not None and run["results"]:
                finals = np.array([np.nan if r["final"] is None else r["final"]
                                   for r in run["results"]], dtype=float)
                programmed = split(finals, rows, outputs)
        error = None
        if programmed is not None:
            error = (programmed[0] - programmed[1]) / mapping["scale"] - weights
        return LayerDetail(
            **_record(layer, job).model_dump(),
            weights=weights.tolist(),
            target_plus=g_plus.tolist(),
            target_minus=g_minus.tolist(),
            programmed_plus=None if programmed is None else _nullable(programmed[0]),
            programmed_minus=None if programmed is None else _nullable(programmed[1]),
            weight_error=None if error is None else _nullable(error),
            weight_error_rms=None if error is None or not np.isfinite(error).any()
            else float(np.sqrt(np.nanmean(error ** 2))),
        )

    async def _layer(self, name: str) -> dict:
        layer = await asyncio.to_thread(self.storage.get_layer, name)
        if layer is None:
            raise LayerNotFound(f"no layer {name!r} on station {self.storage.station!r}")
        return layer

    async def _job(self, layer: dict) -> JobRecord | None:
        return None if layer["job_id"] is None else await self.jobs.get(int(layer["job_id"]))

    # --------------------------------------------------------------------------- multiply
    async def multiply(self, name: str, request: MultiplyRequest) -> MultiplyResponse:
        layer = await self._layer(name)
        job = await self._job(layer)
        if job is None or job.status not in TERMINAL:
            raise HTTPException(409, f"layer {name!r} is still being programmed (job "
                                     f"{None if job is None else job.id}: "
                                     f"{None if job is None else job.status}); multiply once "
                                     "it has ended")
        weights = np.asarray(layer["weights"], dtype=float)
        rows, outputs = weights.shape
        x = _inputs(request.inputs, rows)
        info, limits = await self.state.backend()
        v_in = self.state.settings.programming.v_read if request.v_in is None else request.v_in
        try:
            check_read(limits, v_in)
        except LimitError as exc:
            raise RequestProblem(["v_in"], exc.message, "limit", exc.limit) from None
        voltages, zeroed = input_voltages(x, v_in, limits.v_read_min)
        cell_rows, cell_cols = tile_cells(layer["origin_row"], layer["origin_col"], rows,
                                          outputs)

        def read_all(backend: Backend, storage: Storage) -> np.ndarray:
            out = np.empty((len(x), rows, 2 * outputs))
            for v, row_voltages in enumerate(voltages):
                cell_v = np.repeat(row_voltages, 2 * outputs)
                out[v] = backend.read_currents(cell_rows, cell_cols, cell_v).reshape(
                    rows, 2 * outputs)
            return out

        currents = await self.state.owner.run(read_all)
        result = products(currents, voltages, weights, x, v_in, layer["mapping"]["scale"],
                          zeroed)
        diff = result.outputs - result.ideal
        norm = float(np.linalg.norm(result.ideal))
        mean_power = float(result.power.mean())
        tops = efficiency(rows, outputs, np.array([mean_power]), request.t_read)[0]
        return MultiplyResponse(
            outputs=result.outputs.tolist(),
            ideal=result.ideal.tolist(),
            current_plus=result.current_plus.tolist(),
            current_minus=result.current_minus.tolist(),
            error_rms=float(np.sqrt(np.mean(diff ** 2))),
            relative_error=float(np.linalg.norm(diff) / norm) if norm > 0 else math.nan,
            v_in=v_in,
            t_read=request.t_read,
            read_power=result.power.tolist(),
            energy_per_product=(result.power * request.t_read).tolist(),
            tops_per_watt=None if not np.isfinite(tops) else float(tops) / 1e12,
            inputs_zeroed=result.inputs_zeroed,
            method=("simulator: every device of the tile at its row's voltage at once, each "
                    "its own nonlinear JART v1b current I(V, N); columns summed"
                    if info.kind == "simulated" else
                    "bench: every device read through the switch matrix, one voltage at a "
                    "time, columns summed by superposition (no simultaneous drive)"),
        )


def _matrix(rows: list[list[float]]) -> np.ndarray:
    width = len(rows[0])
    if width == 0 or width > MAX_OUTPUTS:
        raise RequestProblem(["weights", 0], f"a row must hold 1 … {MAX_OUTPUTS} weights "
                             f"(row 0 holds {width})", "value_error")
    for i, row in enumerate(rows):
        if len(row) != width:
            raise RequestProblem(["weights", i], f"row {i} holds {len(row)} weights, row 0 "
                                 f"holds {width}: the matrix must be rectangular",
                                 "value_error")
    return np.asarray(rows, dtype=float)


def _inputs(vectors: list[list[float]], rows: int) -> np.ndarray:
    for i, vector in enumerate(vectors):
        if len(vector) != rows:
            raise RequestProblem(["inputs", i], f"vector {i} holds {len(vector)} values; the "
                                 f"layer has {rows} rows", "value_error")
        for j, value in enumerate(vector):
            if abs(value) > 1.0:
                raise RequestProblem(["inputs", i, j], f"{value} is beyond ±1 (an input is "
                                     "scaled to the read voltage v_in)", "limit", limit=1.0)
    return np.asarray(vectors, dtype=float)


def _record(layer: dict, job: JobRecord | None) -> LayerRecord:
    rows, outputs = layer["rows"], layer["outputs"]
    r0, c0 = layer["origin_row"], layer["origin_col"]
    return LayerRecord(
        name=layer["name"], station=layer["station"], created=layer["created"], rows=rows,
        outputs=outputs, origin=Origin(row=r0, col=c0),
        cells=[[r0, c0, r0 + rows - 1, c0 + 2 * outputs - 1]],
        mapping=layer["mapping"], job=job,
    )


def _nullable(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if not math.isfinite(v) else v for v in row] for row in matrix.tolist()]

