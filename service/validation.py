"""Checks that need the array and the limits: answered as 422s shaped like pydantic's.

Everything here runs before a job is queued for the backend, so a rejected request fires
nothing and records nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from fastapi import HTTPException

from drivers.base import BackendInfo, LimitError, Limits, check_pulse, check_read
from drivers.cells import CellOutOfRange, check_cells


class RequestProblem(HTTPException):
    """A 422 naming the field (``loc``), what is wrong and the limit broken, if any."""

    def __init__(
        self,
        loc: Sequence[str | int],
        msg: str,
        kind: str,
        limit: float | None = None,
        status_code: int = 422,
    ):
        super().__init__(status_code=status_code, detail=problem_detail(loc, msg, kind, limit))


def problem_detail(loc: Sequence[str | int], msg: str, kind: str, limit: float | None = None
                   ) -> list[dict[str, object]]:
    """A 422's ``detail``, shaped like pydantic's: the field (``loc`` in the body), what is
    wrong, its kind, and the limit broken, if any."""
    item: dict[str, object] = {"loc": ["body", *loc], "msg": msg, "type": kind}
    if limit is not None:
        item["ctx"] = {"limit": limit}
    return [item]


def limit_problem(exc: LimitError, prefix: Sequence[str | int] = ()) -> RequestProblem:
    return RequestProblem([*prefix, exc.field], exc.message, "limit", exc.limit)


def cell_arrays(
    cells: Sequence[Sequence[int]], info: BackendInfo, field: str = "cells"
) -> tuple[np.ndarray, np.ndarray]:
    """rows, cols of ``cells``; 422 for a cell outside the array or named twice."""
    pairs = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    try:
        rows, cols = check_cells(pairs[:, 0], pairs[:, 1], info.rows, info.cols)
    except CellOutOfRange as exc:
        raise RequestProblem([field, exc.index], exc.message, "outside_array") from None
    flat = rows * info.cols + cols
    _, first, counts = np.unique(flat, return_index=True, return_counts=True)
    if np.any(counts > 1):
        dup_flat = flat[first[counts > 1][0]]
        i = int(np.flatnonzero(flat == dup_flat)[1])
        raise RequestProblem(
            [field, i], f"cell [{rows[i]}, {cols[i]}] is named more than once", "duplicate_cell"
        )
    return rows, cols


def per_cell(value: float | Sequence[float], n: int, field: str) -> np.ndarray:
    """A scalar or a one-per-cell list as an array of ``n`` floats; 422 on a length mismatch."""
    array = np.asarray(value, dtype=float)
    if array.ndim == 0:
        return np.full(n, float(array))
    if array.shape != (n,):
        raise RequestProblem(
            [field], f"{array.size} values for {n} cells: give one value or one per cell", "length"
        )
    return array


def checked_pulses(limits: Limits, voltage: np.ndarray, width: np.ndarray) -> None:
    try:
        check_pulse(limits, voltage, width)
    except LimitError as exc:
        raise limit_problem(exc) from None


def checked_v_read(limits: Limits, v_read: float) -> float:
    try:
        check_read(limits, v_read)
    except LimitError as exc:
        raise limit_problem(exc) from None
    return float(v_read)


