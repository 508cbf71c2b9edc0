"""Deterministic PyTorch kernels for a block of work: the same inputs and seed give the same bits.

The store runs every step inside :func:`deterministic_kernels`. Results still depend on the thread
count (a reduction split over more threads adds in another order), which is why manifests record
it. The tiny world's trainings need no such guard: none of them runs ``index_put_`` with
accumulation, and short runs of the binder, judge and 2D prior at two threads were bit-identical
with and without it (session 13).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

#: Set to ``0`` to let steps use PyTorch's default (non-deterministic) kernels.
DETERMINISTIC_ENV = "ANYTO3D_DETERMINISTIC"
_deterministic_lock = threading.Lock()
_deterministic_users = 0
_deterministic_before: tuple[bool, bool] | None = None


@contextlib.contextmanager
def deterministic_kernels(enabled: bool | None = None) -> Iterator[bool]:
    """Run the body with PyTorch's deterministic kernels; yields whether they are on.

    Seeding is not enough for bit-identical reruns: on a CPU with more than one thread,
    ``index_put_(accumulate=True)`` (the backward of every gather such as ``vertices[faces]``)
    adds with atomics in whatever order the threads reach them, so two runs of the same DMTet step
    differed in their last bits and then in their meshes (measured, BENCHMARKS.md session 13). In
    deterministic mode it sorts instead, which on our CPU is also faster. ``warn_only``: an op with
    no deterministic kernel (several CUDA ones) warns instead of failing the step. cuBLAS needs
    ``CUBLAS_WORKSPACE_CONFIG`` before its first use, so it is defaulted here too.

    ``enabled=None`` reads ``$ANYTO3D_DETERMINISTIC`` (default on). Re-entrant and thread-safe: the
    mode is switched on by the first concurrent user and the previous mode restored by the last.
    """
    import torch

    if enabled is None:
        enabled = os.environ.get(DETERMINISTIC_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
    if not enabled:
        yield torch.are_deterministic_algorithms_enabled()
        return
    global _deterministic_users, _deterministic_before
    with _deterministic_lock:
        if _deterministic_users == 0:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            _deterministic_before = (torch.are_deterministic_algorithms_enabled(),
                                     torch.is_deterministic_algorithms_warn_only_enabled())
            torch.use_deterministic_algorithms(True, warn_only=True)
        _deterministic_users += 1
    try:
        yield True
    finally:
        with _deterministic_lock:
            _deterministic_users -= 1
            if _deterministic_users == 0 and _deterministic_before is not None:
                mode, warn_only = _deterministic_before
                torch.use_deterministic_algorithms(mode, warn_only=warn_only)
                _deterministic_before = None


__all__ = ["DETERMINISTIC_ENV", "deterministic_kernels"]
