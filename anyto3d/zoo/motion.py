"""Motions for the 4D part of the tiny world: an object's mesh over time, and captions for it.

A motion maps a clip time ``t ∈ [0, 1]`` to a 4x4 world transform applied after a base
shrink (:data:`BASE_SCALE`), so the object's whole trajectory stays inside radius ~0.85 and in
the frame of the default cameras (distance 2.5, fovy 40° see ±0.91 at the origin):

* ``spin``: one full turn about +z, counter-clockwise seen from above: ``Rz(2π t)``.
* ``bounce``: two hops, ``z = 0.25 |sin(2π t)|`` (a ball-like rectified sine).
* ``slide``: side to side along y (left/right for the front camera), ``y = 0.25 sin(2π t)``.
* ``pulse``: uniform scale ``1 + 0.25 sin(2π t)`` (grows, then shrinks below 1, then back).
* ``grow``: uniform scale from 0.4 at t = 0 to 1 at t = 1, linearly.

Clip frame times are ``k / n`` (``k = 0..n-1``): one cycle of the periodic motions without a
repeated frame, the same spacing as 4D-fy's frame times (``cameras.sample_frame_times`` without
the random offset).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from anyto3d.errors import InputError
from anyto3d.mesh import Mesh
from anyto3d.zoo.captions import describe
from anyto3d.zoo.world import WorldObject

MOTIONS = ("spin", "bounce", "slide", "pulse", "grow")
BASE_SCALE = 0.8
AMPLITUDE = 0.25
GROW_FROM = 0.4

# "{o}" is the object's description with its article ("a red cube").
MOTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "spin": ("{o} spinning", "{o} spinning around", "{o} rotating in place", "{o} turning around"),
    "bounce": ("{o} bouncing", "{o} bouncing up and down", "{o} hopping up and down", "{o} jumping"),
    "slide": ("{o} sliding from side to side", "{o} sliding left and right", "{o} moving side to side"),
    "pulse": ("{o} pulsing", "{o} pulsating", "{o} throbbing like a heartbeat"),
    "grow": ("{o} growing", "{o} getting bigger", "{o} growing larger"),
}


def _translation(x: float, y: float, z: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = (x, y, z)
    return m


def _scale(s: float) -> np.ndarray:
    return np.diag([s, s, s, 1.0])


def motion_transform(motion: str, t: float) -> np.ndarray:
    """The motion's 4x4 transform at clip time ``t`` (before the base shrink is applied)."""
    if motion not in MOTIONS:
        raise InputError(f"unknown motion {motion!r}; choose from {', '.join(MOTIONS)}")
    if not 0.0 <= t <= 1.0:
        raise InputError(f"clip time must be in [0, 1], got {t}")
    angle = 2 * math.pi * t
    if motion == "spin":
        c, s = math.cos(angle), math.sin(angle)
        m = np.eye(4)
        m[:2, :2] = [[c, -s], [s, c]]
        return m
    if motion == "bounce":
        return _translation(0.0, 0.0, AMPLITUDE * abs(math.sin(angle)))
    if motion == "slide":
        return _translation(0.0, AMPLITUDE * math.sin(angle), 0.0)
    if motion == "pulse":
        return _scale(1.0 + AMPLITUDE * math.sin(angle))
    return _scale(GROW_FROM + (1.0 - GROW_FROM) * t)  # grow


def transform(motion: str, t: float) -> np.ndarray:
    """The full 4x4 applied to the canonical mesh at time ``t``: motion ∘ base shrink."""
    return motion_transform(motion, t) @ _scale(BASE_SCALE)


def frame_times(n_frames: int) -> np.ndarray:
    """``k / n`` for ``k = 0..n-1``."""
    if n_frames < 1:
        raise InputError(f"a clip needs at least one frame, got {n_frames}")
    return np.arange(n_frames) / n_frames


def apply(mesh: Mesh, matrix: np.ndarray) -> Mesh:
    """``mesh`` with its vertices moved by a 4x4 affine ``matrix`` (colours and faces kept)."""
    m = torch.as_tensor(matrix, dtype=mesh.vertices.dtype)
    vertices = mesh.vertices @ m[:3, :3].T + m[:3, 3]
    return Mesh(vertices, mesh.faces, mesh.colors, mesh.uv, mesh.uv_faces)


def clip(obj: WorldObject, motion: str, n_frames: int = 16, times=None) -> list[Mesh]:
    """The object's mesh at each frame time (default ``k / n_frames``); 8–16 frames typical."""
    base = obj.mesh()
    times = frame_times(n_frames) if times is None else np.asarray(times, dtype=float)
    return [apply(base, transform(motion, float(t))) for t in times]


def motion_caption(obj: WorldObject, motion: str, rng=None) -> str:
    """"a red cube spinning"; ``rng`` (a numpy Generator or seed) picks paraphrases, ``None``
    gives the canonical wording."""
    if motion not in MOTIONS:
        raise InputError(f"unknown motion {motion!r}; choose from {', '.join(MOTIONS)}")
    if rng is None:
        return MOTION_TEMPLATES[motion][0].format(o=describe(obj, None))
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    template = MOTION_TEMPLATES[motion][int(rng.integers(len(MOTION_TEMPLATES[motion])))]
    return template.format(o=describe(obj, rng))


def motion_captions(obj: WorldObject, motion: str, n: int, rng) -> list[str]:
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return [motion_caption(obj, motion, rng) for _ in range(n)]


__all__ = [
    "AMPLITUDE",
    "BASE_SCALE",
    "MOTIONS",
    "MOTION_TEMPLATES",
    "apply",
    "clip",
    "frame_times",
    "motion_caption",
    "motion_captions",
    "motion_transform",
    "transform",
]
