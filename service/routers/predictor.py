"""GET /predictor: the loaded pulse-predictor model; POST /predictor/reload: swap it in place.

Reloading reads the configured model file again (``predictor.path`` in the settings, default
the model shipped in ``predictor/models/default.onnx``), e.g. after ``memprog train --out`` wrote
a model fine-tuned on this bench's own ``/export``; the service keeps running and programming
runs in flight finish on the model they started with.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from predictor import strategy
from service.deps import StateDep

router = APIRouter(tags=["predictor"])


def _configured_path(state):
    settings = getattr(state.settings, "predictor", None)
    return getattr(settings, "path", None)


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
    """Loads the configured model file again and makes it the one ``/program`` uses. If it
    cannot be loaded the model in use stays (answer 500 with the reason)."""
    try:
        out = strategy.reload(_configured_path(state))
    except Exception as exc:
        raise HTTPException(
            status_code=500,
            detail=f"model reload failed ({type(exc).__name__}: {exc}); still in use: "
            f"{strategy.status()}",
        ) from exc
    state.predictor = out
    return out
