"""The programming core: the strategy contract and registry (:mod:`programming.strategies`),
the classic strategies (:mod:`programming.classic`, registered below), the one
write-and-verify loop (:mod:`programming.loop`) and its domain errors (:mod:`programming.errors`).

Layer: above ``drivers`` (it drives a :class:`drivers.base.Backend`), below ``predictor`` and
``service``, which both run its loop."""

from programming.classic import FixedStrategy, IsppStrategy
from programming.errors import InvalidRequest, StrategyFailure
from programming.loop import (
    ProgramJob,
    ProgramOutcome,
    Progress,
    Recorder,
    RunParams,
    program_cells,
)
from programming.strategies import (
    Planner,
    Strategy,
    default_strategy,
    get_strategy,
    register_strategy,
    set_default_strategy,
    strategy_names,
    strategy_summaries,
)

# The strategies every deployment has, one registration line each (a new one: its file, and a
# line here; the service registers the pulse predictor's where it builds its app).
register_strategy("fixed")(FixedStrategy)
register_strategy("ispp")(IsppStrategy)
set_default_strategy("ispp")

__all__ = [
    "InvalidRequest",
    "Planner",
    "ProgramJob",
    "ProgramOutcome",
    "Progress",
    "Recorder",
    "RunParams",
    "Strategy",
    "StrategyFailure",
    "default_strategy",
    "get_strategy",
    "program_cells",
    "register_strategy",
    "set_default_strategy",
    "strategy_names",
    "strategy_summaries",
]
