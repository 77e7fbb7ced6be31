"""POST /pulse: fire one pulse per cell (optionally read the cells afterwards)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from drivers.base import Backend, ReadResult
from service.deps import StateDep
from service.models import AppliedPulse, PulseRequest, PulseResponse
from service.recording import pulse_and_record
from service.request_helpers import readings, request_v_read
from service.responses import ERRORS, json_response
from service.store import Storage
from service.validation import cell_arrays, checked_pulses, per_cell

router = APIRouter(tags=["cells"])


@router.post("/pulse", response_model=PulseResponse, responses=ERRORS, summary="Pulse cells")
async def pulse(request: PulseRequest, state: StateDep) -> Response:
    """Fires the pulses as given. A pulse beyond the limits rejects the whole request (422):
    nothing is fired and nothing is recorded. Every pulse and read is recorded before the
    answer."""
    info, limits = await state.backend()
    rows, cols = cell_arrays(request.cells, info)
    voltage = per_cell(request.voltage, rows.size, "voltage")
    width = per_cell(request.width, rows.size, "width")
    checked_pulses(limits, voltage, width)
    v_read = request_v_read(state, limits, request.v_read) if request.read_after else None

    def job(backend: Backend, storage: Storage) -> ReadResult | None:
        pulse_and_record(backend, storage, rows, cols, voltage, width)
        after = None
        if v_read is not None:
            after = backend.read(rows, cols, v_read)
            storage.record_read(after)
        return after  # the owner commits (durably) before the answer

    after = await state.owner.run(job)
    return json_response(
        PulseResponse(
            pulses=[
                AppliedPulse(row=r, col=c, voltage=v, width=w)
                for r, c, v, w in zip(
                    rows.tolist(), cols.tolist(), voltage.tolist(), width.tolist(), strict=True
                )
            ],
            readings=None if after is None else readings(after),
        )
    )
