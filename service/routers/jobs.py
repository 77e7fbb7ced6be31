"""Background programming jobs: POST /jobs, GET /jobs, GET /jobs/{id}, POST /jobs/{id}/abort,
GET /jobs/{id}/events (live progress, Server-Sent Events). See :mod:`service.jobs`.

The jobs themselves are run by ``service/jobs.py`` (the job manager; the same concept on the
other side).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import StreamingResponse

from service.auth import ProgramKey, ReadKey
from service.deps import StateDep, StationFilter
from service.jobs import TERMINAL, JobManager
from service.models import ErrorResponse, JobList, JobRecord, JobRequest
from service.request_helpers import program_job
from service.responses import ERRORS

router = APIRouter(tags=["jobs"])

KEEPALIVE = 15.0
"""s without progress after which the stream sends a comment (keeps proxies from closing it)."""

KEY_RECHECK = 2.0
"""s between checks that the stream's API key is still valid (a revoked key's stream ends)."""

JobId = Annotated[int, Path(ge=1, le=2**62, description="Job identifier.")]

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such job."}}


def _jobs(request: Request) -> JobManager:
    return request.app.state.jobs


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobRecord,
    responses=ERRORS,
    summary="Program many cells in the background",
)
async def create_job(
    body: JobRequest, request: Request, state: StateDep, principal: ProgramKey
) -> JobRecord:
    """Checks the request as ``POST /program`` does (422 naming the field, nothing queued),
    stores the job ``queued`` and answers at once (202) with its record. Jobs run one at a
    time, in submission order, on the one backend owner (other requests queue behind a running
    job's iterations as behind a ``/program`` run). Follow it with ``GET /jobs/{id}`` or the
    progress stream ``GET /jobs/{id}/events``."""
    job = await program_job(body, state)
    return await _jobs(request).submit(job, principal.name)


@router.get("/jobs", response_model=JobList, summary="Jobs, newest first")
async def list_jobs(
    request: Request,
    _: ReadKey,
    station: StationFilter,
    limit: Annotated[int, Query(ge=1, le=1000, description="Jobs per page.")] = 100,
    offset: Annotated[int, Query(ge=0, le=2**62, description="Jobs to skip.")] = 0,
) -> JobList:
    return JobList(jobs=await _jobs(request).list(limit, offset, station))


@router.get(
    "/jobs/{job_id}", response_model=JobRecord, responses=NOT_FOUND, summary="One job"
)
async def get_job(job_id: JobId, request: Request, _: ReadKey) -> JobRecord:
    record = await _jobs(request).get(job_id)
    if record is None:
        raise HTTPException(status_code=404, detail=f"job {job_id} not found")
    return record


@router.post(
    "/jobs/{job_id}/abort",
    response_model=JobRecord,
    responses={
        **NOT_FOUND,
        409: {"model": ErrorResponse,
              "description": "The job has already ended, or runs on another station."},
    },
    summary="Abort a job",
)
async def abort_job(job_id: JobId, request: Request, _: ProgramKey) -> JobRecord:
    """A queued job is aborted without running; a running one stops before its next pulse
    (every operation it made stays recorded, its run is ``aborted``). Answers with the record
    once the job has ended, or after 2 s with ``abort_requested`` true while its current
    iteration finishes (a large batch on a bench takes a while)."""
    jobs = _jobs(request)
    record = await jobs.abort(job_id)
    if record is not None:
        return record
    record = await jobs.get(job_id)
    if record is None:
        raise HTTPException(status_code=404, detail=f"job {job_id} not found")
    own = request.app.state.memprog.settings.station
    if record.station != own and record.status not in TERMINAL:
        raise HTTPException(
            status_code=409,
            detail=f"job {job_id} runs on station {record.station!r}, not on this one ({own!r}): "
                   "a station aborts only its own jobs; ask that station (or its emergency stop)",
        )
    raise HTTPException(status_code=409, detail=f"job {job_id} has already ended: {record.status}")


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-Sent Events: `event: progress`, data the job record (JSON).",
        },
        **NOT_FOUND,
    },
    summary="Live progress of a job (Server-Sent Events)",
)
async def job_events(job_id: JobId, request: Request, principal: ReadKey) -> StreamingResponse:
    """An event ``progress`` whose data is the job record, at once and then on every change
    (after its first read and after every programming iteration), ending with the terminal
    state; for a job that has ended, that one event and the stream ends. A comment line
    (``: keep-alive``) is sent after 15 s without change. The stream's API key is checked again
    every 2 s: once it is revoked, an event ``error`` says so and the stream ends."""
    jobs = _jobs(request)
    subscription = await jobs.subscribe(job_id)
    if subscription is None:
        raise HTTPException(status_code=404, detail=f"job {job_id} not found")
    first, subscriber = subscription
    cache = request.app.state.auth.cache

    async def stream() -> AsyncIterator[str]:
        try:
            yield _event(first)
            if subscriber is None or first.status in TERMINAL:
                return
            quiet = 0.0  # s without an event
            while True:
                if not cache.still_valid(principal):
                    yield _revoked()
                    return
                record = await subscriber.next(KEY_RECHECK)
                if record is None:
                    quiet += KEY_RECHECK
                    if quiet >= KEEPALIVE:
                        quiet = 0.0
                        yield ": keep-alive\n\n"
                    continue
                quiet = 0.0
                yield _event(record)
                if record.status in TERMINAL:
                    return
        finally:
            if subscriber is not None:
                jobs.unsubscribe(job_id, subscriber)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _revoked() -> str:
    detail = json.dumps({"detail": "the API key of this stream was revoked"})
    return f"event: error\ndata: {detail}\n\n"


def _event(record: JobRecord) -> str:
    return f"event: progress\ndata: {record.model_dump_json()}\n\n"
