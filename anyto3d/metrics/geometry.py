"""Geometry accuracy against a known surface (the tiny world's ground truth)."""

from __future__ import annotations

import torch

from anyto3d.mesh import Mesh


def chamfer_distance(mesh: Mesh, truth_points: torch.Tensor, n_points: int = 20000, seed: int = 1) -> float:
    """Symmetric mean nearest-point distance between points sampled on ``mesh`` and points on the
    true surface: ½(mean_a min_b ‖a − b‖ + mean_b min_a ‖a − b‖), in world units (not squared)."""
    points = mesh.sample_surface(n_points, seed=seed)
    nearest_ab = torch.full((points.shape[0],), float("inf"))
    nearest_ba = torch.full((truth_points.shape[0],), float("inf"))
    for chunk in torch.split(torch.arange(points.shape[0]), 4096):  # bounded memory
        d = torch.cdist(points[chunk], truth_points)
        nearest_ab[chunk] = d.min(dim=1).values
        nearest_ba = torch.minimum(nearest_ba, d.min(dim=0).values)
    return float(0.5 * (nearest_ab.mean() + nearest_ba.mean()))
