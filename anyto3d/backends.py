"""Run-time choice of optional accelerators (DESIGN §2).

Nothing CUDA-only is imported at module load anywhere in the project. A fast backend is asked
for by name ("auto", "torch", "tcnn", "nvdiffrast", "nerfacc"); "auto" picks the fast one only
when it imports *and* the tensors live on CUDA, else the pure-PyTorch reference, which is
always available and is what the fast one is tested against.
"""

from __future__ import annotations

import functools
import importlib

import torch

OPTIONAL_MODULES = {"tcnn": "tinycudann", "nvdiffrast": "nvdiffrast.torch", "nerfacc": "nerfacc"}


@functools.lru_cache(maxsize=None)
def optional_import(name: str):
    """Import an optional accelerator module, or return ``None`` (never raises ImportError).

    Some of these packages raise other errors at import (kaolin's placeholder raises
    ImportError, a failed CUDA JIT raises OSError), so any exception means "not available".
    """
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any import failure means the accelerator is absent
        return None


def available(backend: str) -> bool:
    """True when ``backend`` can run here: the module imports and a CUDA device exists."""
    if backend == "torch":
        return True
    module = OPTIONAL_MODULES.get(backend)
    if module is None:
        raise ValueError(f"unknown backend {backend!r}; choose from torch, {', '.join(OPTIONAL_MODULES)}")
    return torch.cuda.is_available() and optional_import(module) is not None


def resolve(requested: str, accelerated: str, device: torch.device | str) -> str:
    """Pick the backend to use: ``requested`` is "auto", "torch" or ``accelerated``.

    "auto" means ``accelerated`` when it is available and ``device`` is CUDA, else "torch".
    Asking explicitly for an unavailable accelerator is an error, not a silent fallback.
    """
    device = torch.device(device)
    if requested == "auto":
        return accelerated if device.type == "cuda" and available(accelerated) else "torch"
    if requested == "torch":
        return "torch"
    if requested != accelerated:
        raise ValueError(f"backend {requested!r} is not an option here; use 'auto', 'torch' or {accelerated!r}")
    if not available(accelerated):
        raise RuntimeError(
            f"backend {accelerated!r} was requested but is not usable here "
            f"(needs CUDA and the {OPTIONAL_MODULES[accelerated]!r} package); use 'auto' or 'torch'"
        )
    return accelerated
