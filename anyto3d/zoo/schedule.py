"""The learning-rate schedule every tiny-world trainer shares: linear warm-up, then a half cosine.

A function of the step alone, so a resumed run continues on the same curve.
"""

from __future__ import annotations

import math


def learning_rate(step: int, total: int, peak: float, warmup: int = 50, floor: float = 0.1) -> float:
    """The rate at ``step`` (0-based) of ``total``: linear warm-up over ``warmup`` steps, then a
    half cosine from ``peak`` down to ``floor · peak`` at the last step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))
