"""Shading shared by the volume renderer and the mesh rasteriser (one implementation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lambertian(
    albedo: torch.Tensor, normal: torch.Tensor, points: torch.Tensor, light_position: torch.Tensor, ambient: torch.Tensor
) -> torch.Tensor:
    """Diffuse shading ``albedo * (ambient + (1 - ambient) * max(n·l, 0))``.

    ``albedo``, ``normal`` (unit), ``points`` are [..., 3]; ``light_position`` broadcasts to
    [..., 3] and ``ambient`` to [..., 1].
    """
    to_light = F.normalize(light_position - points, dim=-1)
    diffuse = (normal * to_light).sum(-1, keepdim=True).clamp_min(0.0)
    return albedo * (ambient + (1.0 - ambient) * diffuse)
