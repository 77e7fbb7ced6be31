"""Cell indices: the one check every layer above the physics uses (both backends, and the
service before anything is queued). A cell is (row, col) of an ``n_rows × n_cols`` array,
0-based."""

from __future__ import annotations

import numpy as np

from drivers.base import LimitError


class CellOutOfRange(LimitError, IndexError):
    """A cell index that is not an integer or lies outside the array. ``field`` is ``rows`` or
    ``cols``, ``index`` the position of the offending cell in the request, ``limit`` the
    largest index allowed. A :class:`LimitError` (nothing was fired) and an ``IndexError``."""

    def __init__(self, field: str, message: str, limit: float | None = None, index: int = 0):
        super().__init__(field, message, limit)
        self.index = index


def check_cells(rows: object, cols: object, n_rows: int, n_cols: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """``rows``, ``cols`` as equal-length 1-d int64 arrays, every cell inside the array;
    :class:`CellOutOfRange` otherwise (never rounded: 1.9 is refused, not read as 1)."""
    r = np.atleast_1d(np.asarray(rows))
    c = np.atleast_1d(np.asarray(cols))
    if r.shape != c.shape or r.ndim != 1:
        raise CellOutOfRange("rows", "rows and cols must be 1-d arrays of equal length")
    for name, a in (("rows", r), ("cols", c)):
        if a.size and a.dtype.kind not in "iu":
            raise CellOutOfRange(name, "cell indices must be integers")
    r, c = r.astype(np.int64), c.astype(np.int64)
    bad_row = (r < 0) | (r >= n_rows)
    outside = bad_row | (c < 0) | (c >= n_cols)
    if np.any(outside):
        i = int(np.argmax(outside))
        field, limit = ("rows", n_rows - 1) if bad_row[i] else ("cols", n_cols - 1)
        raise CellOutOfRange(
            field,
            f"cell [{r[i]}, {c[i]}] is outside the {n_rows}×{n_cols} array "
            f"(rows 0…{n_rows - 1}, cols 0…{n_cols - 1})",
            limit,
            index=i,
        )
    return r, c
