"""GET /predictor: the active pulse-predictor model; POST /predictor/reload: read its file
again; GET /predictor/models: the station's models with their lineage; POST /predictor/activate:
switch to one of them (and back); GET /predictor/activations: which model each station made
active, when and why.

Reloading reads the active model's file again (by default the configured ``predictor.path``,
else the model shipped in ``predictor/models/default.onnx``), e.g. after ``memprog train --out``
wrote a model fine-tuned on this bench's own ``/export``; the service keeps running and
programming runs in flight finish on the model they started with. The models and which one is
active: :mod:`service.predictor_models`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from predictor import strategy
from service.deps import StateDep, StationFilter
from service.models_calibration import (
    ActivateRequest,
    Activation,
    ActivationList,
    ModelInfo,
    ModelList,
)
from service.predictor_models import ModelNotFound, ModelRegistry

router = APIRouter(tags=["predictor"])


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.models


@router.get("/predictor", summary="The loaded pulse predictor and its metadata")
async def describe(state: StateDep) -> dict:
    """Name, version and file of the model (as in ``/health``), and its metadata: feature
    definitions and units, voltages per polarity, trained conductance range, training data
    summary and metrics. ``status`` is ``unavailable`` (with the error) if no model loaded."""
    out = strategy.status()
    if out["status"] == "loaded":
        meta = strategy.current().metadata
        out["metadata"] = {k: meta[k] for k in ("features", "voltages", "conductance_range",
                                                "latent", "width_range", "metrics", "training")
                           if k in meta}
    return out


@router.post("/predictor/reload", summary="Reload the pulse predictor without restarting")
async def reload(state: StateDep) -> dict:
    """Loads the active model's file again and makes it the one ``/program`` uses. If it
    cannot be loaded the model in use stays (answer 500 with the reason)."""
    try:
        out = strategy.reload()
    except Exception as exc:
        raise HTTPException(
            status_code=500,
            detail=f"model reload failed ({type(exc).__name__}: {exc}); still in use: "
            f"{strategy.status()}",
        ) from exc
    state.predictor = out
    return out


@router.get("/predictor/models", response_model=ModelList,
            summary="The station's models, with their lineage")
async def list_models(request: Request) -> ModelList:
    """The shipped network, the configured model, and every model in the models directory
    (calibrations write theirs there): id, file, fingerprint, lineage (parent, records used
    and dropped, cells, time span, held-out fit before/after), which one is active, and why a
    file would be refused."""
    registry = _registry(request)
    return ModelList(models=[ModelInfo(**m) for m in registry.list()],
                     start_error=registry.start_error)


@router.post("/predictor/activate", summary="Make a model the active one (kept across restarts)")
async def activate(body: ActivateRequest, request: Request, state: StateDep) -> dict:
    """Loads the model and makes it the one ``/program`` uses, now and after a restart. A
    model that does not load (404: no such model; 422: refused, with the reason) leaves the
    active one in place. Device memory is kept per model: a switch starts every device
    afresh, a switch back finds what the old model had learned."""
    try:
        out = _registry(request).activate(body.model)
    except ModelNotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except (ValueError, OSError) as exc:
        raise HTTPException(status_code=422, detail=f"model {body.model!r} refused: {exc}; "
                            f"still in use: {strategy.status().get('fingerprint')}") from exc
    state.predictor = out
    return out


@router.get("/predictor/activations", response_model=ActivationList,
            summary="Which model each station made active, when and why (newest first)")
async def activations(state: StateDep, station: StationFilter,
                      limit: Annotated[int, Query(ge=1, le=1000,
                                                  description="Activations to list.")] = 100,
                      ) -> ActivationList:
    """Every model activation recorded in the log: this station's by default, another's with
    ``station=NAME``, every station's with ``station=*``. ``reason``: ``activated through the
    API``, or ``calibration <id>: ...`` when a calibration made its adapted model active."""
    rows = await run_in_threadpool(state.storage.list_activations, station, limit)
    return ActivationList(activations=[Activation(**row) for row in rows])
