"""POST /layers: hold a weight matrix in the array (a job programs it); GET /layers, GET
/layers/{name}: what is held and how well; POST /layers/{name}/multiply: its products, read from
the array (nothing pulsed). See :mod:`service.layers` and :mod:`programming.layers`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import JSONResponse

from service.auth import ProgramKey, ReadKey
from service.layers import LayerManager, LayerNotFound
from service.models import ErrorResponse
from service.models_layers import (
    LayerDetail,
    LayerList,
    LayerName,
    LayerRecord,
    LayerRequest,
    MultiplyRequest,
    MultiplyResponse,
)
from service.responses import ERRORS

router = APIRouter(tags=["layers"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such layer on this station."}}
NameParam = Annotated[LayerName, Path(description="The layer's name.")]


def _layers(request: Request) -> LayerManager:
    return request.app.state.layers


@router.post("/layers", status_code=202, response_model=LayerRecord, responses=ERRORS,
             summary="Hold a weight matrix in the array (programmed by a background job)")
async def create_layer(body: LayerRequest, request: Request, principal: ProgramKey
                       ) -> JSONResponse:
    """Maps the weights (rows × outputs) onto a tile of rows × 2·outputs devices from
    ``origin``: weight w[i][j] is the pair of devices (row i, columns 2j and 2j+1), G⁺ − G⁻ =
    k·w with k = (g_max − g_min) / max|w| (``mapping``; ``low_power`` puts the unused device of
    each pair and small weights at g_min). Stores the layer and queues a job that programs every
    device to its target with write-and-verify (answered at once, 202: follow ``job.id`` with
    ``GET /jobs/{id}`` or its events). Refused with 422 naming the field, nothing stored or
    fired: a ragged matrix, a NaN or infinite weight, a tile off the array or overlapping
    another layer of this station, a conductance range the strategy cannot program, a name
    already taken."""
    record = await _layers(request).create(body, principal.name)
    return JSONResponse(status_code=202, content=record.model_dump(mode="json"))


@router.get("/layers", response_model=LayerList, summary="This station's layers")
async def list_layers(request: Request, _: ReadKey) -> LayerList:
    return LayerList(layers=await _layers(request).records())


@router.get("/layers/{name}", response_model=LayerDetail, responses=NOT_FOUND,
            summary="One layer: its mapping, targets, programmed conductances and errors")
async def get_layer(name: NameParam, request: Request, _: ReadKey) -> LayerDetail:
    try:
        return await _layers(request).describe(name)
    except LayerNotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


@router.post("/layers/{name}/multiply", response_model=MultiplyResponse,
             responses={**NOT_FOUND, **ERRORS,
                        409: {"model": ErrorResponse,
                              "description": "The layer is still being programmed."}},
             summary="Products of input vectors with the layer, read from the array")
async def multiply(name: NameParam, body: MultiplyRequest, request: Request, _: ReadKey
                   ) -> MultiplyResponse:
    """Drives the layer's rows at x·v_in volts (|x| ≤ 1; ≤ 1,024 vectors a call) and sums each
    column's currents: on the simulator every device's own nonlinear current I(V, N) (the JART
    v1b model, not V·G), on a bench cell by cell through the matrix by superposition. Gives the
    outputs in weight units ((I⁺ − I⁻)/(v_in·k)) and the raw column currents, the ideal W·x
    beside them and the error, the read power Σ|V·I| (W), the energy of a product (J, over
    ``t_read``) and the efficiency in TOPS/W (2·rows·outputs operations per product). Reads
    only: nothing is pulsed, and the product reads are not added to the operation log."""
    try:
        return await _layers(request).multiply(name, body)
    except LayerNotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
