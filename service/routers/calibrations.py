"""Calibrations of the pulse predictor to this station's devices: POST /calibrations,
GET /calibrations, GET /calibrations/{id}, POST /calibrations/{id}/abort. The calibrations
themselves are run by ``service/calibrations.py`` (the same concept on the other side); their
pulses are a job (progress: ``GET /jobs/{job_id}/events``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request

from service.auth import ProgramKey, ReadKey
from service.calibrations import CalibrationManager
from service.models import ErrorResponse
from service.models_calibration import CalibrationList, CalibrationRecord, CalibrationRequest
from service.responses import ERRORS

router = APIRouter(tags=["calibrations"])

CalibrationId = Annotated[int, Path(ge=1, le=2**62, description="Calibration identifier.")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such calibration."}}


def _calibrations(request: Request) -> CalibrationManager:
    return request.app.state.calibrations


@router.post(
    "/calibrations",
    status_code=202,
    response_model=CalibrationRecord,
    responses=ERRORS,
    summary="Calibrate the pulse predictor to this station's devices",
)
async def create_calibration(body: CalibrationRequest, request: Request,
                             principal: ProgramKey) -> CalibrationRecord:
    """Pulses the cells (a background job: queued like any job, with progress, abort and the
    emergency stop), each pulse with a read before and after, all recorded; then fits an
    adapted model from this station's log (numpy and onnxruntime only) and writes it beside
    the others (GET /predictor/models) with its lineage. It becomes the active model when it
    predicts held-out devices of this station better than its parent (``activate:
    if_better``), or as asked. Answers at once (202); follow ``GET /calibrations/{id}``."""
    return await _calibrations(request).submit(body, principal.name)


@router.get("/calibrations", response_model=CalibrationList, summary="Calibrations, newest first")
async def list_calibrations(
    request: Request,
    _: ReadKey,
    limit: Annotated[int, Query(ge=1, le=1000, description="Calibrations per page.")] = 100,
    offset: Annotated[int, Query(ge=0, le=2**62, description="Calibrations to skip.")] = 0,
) -> CalibrationList:
    return CalibrationList(calibrations=await _calibrations(request).list(limit, offset))


@router.get("/calibrations/{calibration_id}", response_model=CalibrationRecord,
            responses=NOT_FOUND, summary="One calibration, with its job's progress")
async def get_calibration(calibration_id: CalibrationId, request: Request,
                          _: ReadKey) -> CalibrationRecord:
    record = await _calibrations(request).get(calibration_id)
    if record is None:
        raise HTTPException(status_code=404, detail=f"calibration {calibration_id} not found")
    return record


@router.post("/calibrations/{calibration_id}/abort", response_model=CalibrationRecord,
             responses=NOT_FOUND, summary="Abort a calibration")
async def abort_calibration(calibration_id: CalibrationId, request: Request,
                            _: ProgramKey) -> CalibrationRecord:
    """Its job stops before its next pulse (every pulse fired stays recorded); a fit under way
    finishes but its model is not activated. The active model is never changed by an aborted
    calibration."""
    record = await _calibrations(request).abort(calibration_id)
    if record is None:
        raise HTTPException(status_code=404, detail=f"calibration {calibration_id} not found")
    return record
