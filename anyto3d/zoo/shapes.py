"""Procedural coloured primitives with ground-truth meshes in a canonical pose (z-up, origin).

The seed of the tiny world (DESIGN §6): every object exists as a mesh, so renders and
geometry metrics can be computed against the truth. Meshes come from trimesh's generators
(and convex hulls for prisms and pyramids: no boolean operations, no polygon triangulation
library). :mod:`anyto3d.zoo.world` assembles these parts into the world's catalogue.

Two ways to turn coloured parts into a :class:`~anyto3d.mesh.Mesh`:

* :func:`colored` + ``trimesh.util.concatenate`` + ``Mesh.from_trimesh`` keep shared vertices
  (smooth normals everywhere, as in :func:`reconstruction_scene`);
* :func:`parts_to_mesh` splits vertices along creases and colour boundaries, so a box renders
  with flat faces under Lambertian shading (the rasteriser averages normals per vertex) and one
  face of a cube can carry its own colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from anyto3d.mesh import Mesh

# The first four are the original palette (kept bit for bit); the other four complete the
# world's eight hue-distinct colours (hues ≈ 3°, 130°, 225°, 52°, 28°, 183°, 282°, 330°).
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.12),
    "green": (0.18, 0.7, 0.25),
    "blue": (0.15, 0.3, 0.85),
    "yellow": (0.92, 0.82, 0.15),
    "orange": (0.95, 0.5, 0.1),
    "cyan": (0.15, 0.8, 0.85),
    "purple": (0.55, 0.2, 0.75),
    "pink": (0.95, 0.45, 0.7),
}

# A neutral dark grey for details that are not the object's named colours (a house's door,
# the coffee in a mug): visible against every palette colour and against a white background.
ACCENT: tuple[float, float, float] = (0.2, 0.2, 0.22)


def _rotation(axis: str, degrees: float) -> np.ndarray:
    direction = {"x": [1, 0, 0], "y": [0, 1, 0], "z": [0, 0, 1]}[axis]
    return trimesh.transformations.rotation_matrix(math.radians(degrees), direction)


def rotation(axis: str, degrees: float) -> np.ndarray:
    """4x4 rotation about a world axis ("x", "y" or "z") by ``degrees`` (right-handed)."""
    return _rotation(axis, degrees)


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
    """Points [count, 3] uniformly on the surface (area-weighted); see :meth:`Mesh.sample_surface`."""
    return mesh.sample_surface(count, seed)


# ---------------------------------------------------------------------------------------------
# Closed building blocks for the world (modest tessellation: rasterising cost grows with faces)
# ---------------------------------------------------------------------------------------------


def box(lo: tuple[float, float, float], hi: tuple[float, float, float]) -> trimesh.Trimesh:
    """An axis-aligned closed box spanning ``lo``..``hi``."""
    lo_, hi_ = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    mesh = trimesh.creation.box(extents=hi_ - lo_)
    mesh.apply_translation((lo_ + hi_) / 2)
    return mesh


def convex(points) -> trimesh.Trimesh:
    """The closed convex hull of ``points`` (prisms, pyramids, roofs), outward-wound."""
    hull = trimesh.convex.convex_hull(np.asarray(points, dtype=float))
    hull.fix_normals()
    return hull


def sphere(radius: float, center=(0.0, 0.0, 0.0), subdivisions: int = 3) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    mesh.apply_translation(center)
    return mesh


def cylinder(radius: float, height: float, center=(0.0, 0.0, 0.0), sections: int = 32) -> trimesh.Trimesh:
    """A closed cylinder along +z centred at ``center``."""
    mesh = trimesh.creation.cylinder(radius=radius, height=height, sections=sections)
    mesh.apply_translation(center)
    return mesh


def cone(radius: float, height: float, center=(0.0, 0.0, 0.0), sections: int = 32) -> trimesh.Trimesh:
    """A closed cone along +z whose bounding box is centred at ``center`` (apex up)."""
    mesh = trimesh.creation.cone(radius=radius, height=height, sections=sections)
    mesh.apply_translation(np.asarray(center, dtype=float) - (0.0, 0.0, height / 2))
    return mesh


def torus(
    major: float, minor: float, center=(0.0, 0.0, 0.0), major_sections: int = 32, minor_sections: int = 12
) -> trimesh.Trimesh:
    """A closed torus lying in the xy-plane (axis +z)."""
    mesh = trimesh.creation.torus(
        major_radius=major, minor_radius=minor, major_sections=major_sections, minor_sections=minor_sections
    )
    mesh.apply_translation(center)
    return mesh


def capsule(radius: float, height: float, center=(0.0, 0.0, 0.0)) -> trimesh.Trimesh:
    """A closed capsule along +z; ``height`` is the total height including both caps."""
    mesh = trimesh.creation.capsule(height=height - 2 * radius, radius=radius, count=[16, 12])
    mesh.apply_translation(np.asarray(center, dtype=float) - mesh.bounds.mean(axis=0) * (0, 0, 1))
    return mesh


# ---------------------------------------------------------------------------------------------
# Coloured parts -> one render-ready Mesh
# ---------------------------------------------------------------------------------------------


@dataclass
class ColoredPart:
    """A closed trimesh part with one colour, or a colour per face (``face_colors`` [F, 3])."""

    mesh: trimesh.Trimesh
    color: tuple[float, float, float] | None = None
    face_colors: np.ndarray | None = None

    def colors_per_face(self) -> np.ndarray:
        if self.face_colors is not None:
            return np.asarray(self.face_colors, dtype=float)
        return np.tile(np.asarray(self.color, dtype=float), (len(self.mesh.faces), 1))


def split_creases(
    vertices: np.ndarray, faces: np.ndarray, face_colors: np.ndarray, crease_deg: float = 40.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Duplicate vertices where faces meet at more than ``crease_deg`` or change colour.

    Each face corner gets the area-weighted normal of the faces around its vertex that are
    within ``crease_deg`` of the corner's face and share its colour; corners of one vertex with
    the same (rounded) normal and colour keep one vertex, the others get copies. So a sphere
    stays smooth, a box gets flat faces, a cylinder gets a sharp rim, and colours never blend
    across a boundary. Returns (vertices [V', 3], faces [F, 3] in the same order, colours [V', 3]).
    """
    vertices, faces = np.asarray(vertices, dtype=float), np.asarray(faces, dtype=np.int64)
    corners = faces.reshape(-1)  # vertex of each corner, face-major
    corner_face = np.repeat(np.arange(len(faces)), 3)
    tri = vertices[faces]
    weighted = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # |n| = 2 * area
    unit = weighted / np.maximum(np.linalg.norm(weighted, axis=1, keepdims=True), 1e-20)
    _, color_id = np.unique(np.round(face_colors, 6), axis=0, return_inverse=True)
    color_id = color_id.reshape(-1)

    # Faces incident on each vertex, as CSR-like arrays sorted by vertex.
    order = np.argsort(corners, kind="stable")
    incident_faces = corner_face[order]
    starts = np.searchsorted(corners[order], np.arange(len(vertices)))
    counts = np.bincount(corners, minlength=len(vertices))
    # Every (corner, incident face of its vertex) pair.
    per_corner = counts[corners]
    pair_corner = np.repeat(np.arange(len(corners)), per_corner)
    offsets = np.arange(per_corner.sum()) - np.repeat(np.cumsum(per_corner) - per_corner, per_corner)
    pair_face = incident_faces[starts[corners][pair_corner] + offsets]
    own_face = corner_face[pair_corner]
    smooth = (unit[own_face] * unit[pair_face]).sum(1) > math.cos(math.radians(crease_deg))
    smooth &= color_id[own_face] == color_id[pair_face]
    normal = np.zeros((len(corners), 3))
    np.add.at(normal, pair_corner[smooth], weighted[pair_face[smooth]])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-20)

    key = np.concatenate(
        [corners[:, None].astype(float), color_id[corner_face][:, None].astype(float), np.round(normal, 3)], axis=1
    )
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    new_vertices = vertices[corners[first]]
    new_colors = face_colors[corner_face[first]]
    return new_vertices, inverse.reshape(-1, 3), new_colors


def parts_to_mesh(parts: list[ColoredPart], crease_deg: float = 40.0) -> Mesh:
    """Concatenate closed coloured parts into one render-ready :class:`Mesh` (float32)."""
    vertices, faces, colors, offset = [], [], [], 0
    for part in parts:
        v, f, c = split_creases(part.mesh.vertices, part.mesh.faces, part.colors_per_face(), crease_deg)
        vertices.append(v)
        faces.append(f + offset)
        colors.append(c)
        offset += len(v)
    return Mesh(
        torch.as_tensor(np.concatenate(vertices), dtype=torch.float32),
        torch.as_tensor(np.concatenate(faces), dtype=torch.long),
        torch.as_tensor(np.concatenate(colors), dtype=torch.float32),
    )
