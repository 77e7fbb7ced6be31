"""POST /read: read cells (or the whole array) without changing them."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Response

from drivers.base import Backend, ReadResult
from service.deps import StateDep
from service.models import ReadRequest, ReadResponse
from service.request_helpers import readings, request_v_read
from service.responses import ERRORS, json_response
from service.store import Storage
from service.validation import cell_arrays

router = APIRouter(tags=["cells"])


@router.post("/read", response_model=ReadResponse, responses=ERRORS, summary="Read cells")
async def read(request: ReadRequest, state: StateDep) -> Response:
    """Reads the cells at v_read; every reading is recorded before the answer."""
    info, limits = await state.backend()
    if request.all:
        rows, cols = (a.ravel() for a in np.indices((info.rows, info.cols)))
    else:
        rows, cols = cell_arrays(request.cells or [], info)
    v_read = request_v_read(state, limits, request.v_read)

    def job(backend: Backend, storage: Storage) -> ReadResult:
        result = backend.read(rows, cols, v_read)
        storage.record_read(result)
        return result  # the owner commits (durably) before the answer

    result = await state.owner.run(job)
    return json_response(ReadResponse(readings=readings(result)))
