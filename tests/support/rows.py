"""Comparing query answers row by row, floats to a tolerance (a view's sums may add in another order)."""

from __future__ import annotations

import math


def same_rows(got, expected, rel: float = 1e-9, abs_: float = 1e-12) -> None:
    """Assert two lists of rows are equal, float cells within rel / abs_ of each other."""
    assert len(got) == len(expected), (len(got), len(expected))
    for a, b in zip(got, expected):
        assert len(a) == len(b), (a, b)
        for x, y in zip(a, b):
            if isinstance(x, float) and isinstance(y, float):
                assert math.isclose(x, y, rel_tol=rel, abs_tol=abs_), (a, b)
            else:
                assert x == y, (a, b)
