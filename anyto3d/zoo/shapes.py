"""Procedural coloured primitives with ground-truth meshes in a canonical pose (z-up, origin).

The seed of the tiny world (DESIGN §6): every object exists as a mesh, so renders and
geometry metrics can be computed against the truth. Meshes come from trimesh's generators.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import trimesh

from anyto3d.mesh import Mesh

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.12),
    "green": (0.18, 0.7, 0.25),
    "blue": (0.15, 0.3, 0.85),
    "yellow": (0.92, 0.82, 0.15),
}


def _rotation(axis: str, degrees: float) -> np.ndarray:
    direction = {"x": [1, 0, 0], "y": [0, 1, 0], "z": [0, 0, 1]}[axis]
    return trimesh.transformations.rotation_matrix(math.radians(degrees), direction)


def primitive(kind: str, size: float = 0.5) -> trimesh.Trimesh:
    """A closed primitive centred at the origin with its axis along +z."""
    if kind == "box":
        return trimesh.creation.box(extents=(size, size, size))
    if kind == "sphere":
        return trimesh.creation.icosphere(subdivisions=3, radius=size / 2)
    if kind == "cone":
        cone = trimesh.creation.cone(radius=size / 2, height=size, sections=48)
        cone.apply_translation((0, 0, -size / 2))  # trimesh's cone base sits at z=0
        return cone
    if kind == "torus":
        return trimesh.creation.torus(major_radius=size * 0.38, minor_radius=size * 0.14, major_sections=48, minor_sections=24)
    if kind == "cylinder":
        return trimesh.creation.cylinder(radius=size / 2, height=size, sections=48)
    raise ValueError(f"unknown primitive {kind!r}")


def colored(mesh: trimesh.Trimesh, color: tuple[float, float, float]) -> trimesh.Trimesh:
    mesh = mesh.copy()
    rgba = np.array([*(round(c * 255) for c in color), 255], dtype=np.uint8)
    mesh.visual.vertex_colors = np.tile(rgba, (len(mesh.vertices), 1))
    return mesh


def reconstruction_scene() -> Mesh:
    """A red box, a green tilted torus and a blue cone, apart from each other, inside |x| < 0.8.

    Not a lone sphere: the parts differ in colour and symmetry, so a fit that smears or
    symmetrises them is caught by held-out views.
    """
    box = colored(primitive("box", 0.55), COLORS["red"])
    box.apply_translation((0.3, -0.28, -0.1))
    torus = colored(primitive("torus", 0.75), COLORS["green"])
    torus.apply_transform(_rotation("x", 60))
    torus.apply_translation((-0.36, 0.05, 0.1))
    cone = colored(primitive("cone", 0.5), COLORS["blue"])
    cone.apply_translation((0.25, 0.38, 0.05))
    merged = trimesh.util.concatenate([box, torus, cone])
    return Mesh.from_trimesh(merged)


def sample_surface(mesh: Mesh, count: int, seed: int = 0) -> torch.Tensor:
    """Points [count, 3] uniformly on the surface (area-weighted), for Chamfer distances."""
    points, _ = trimesh.sample.sample_surface(mesh.to_trimesh(), count, seed=seed)
    return torch.as_tensor(points, dtype=torch.float32)
