"""What every renderer returns (volume renderer and mesh rasteriser alike)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anyto3d.mesh import Mesh


@dataclass
class RenderOutput:
    """Images are [B, H, W, C] (renderer boundary, DESIGN §4).

    * ``rgb``: composited over the background, in [0, 1].
    * ``opacity``: accumulated alpha / (soft) coverage in [0, 1]; differentiable.
    * ``depth``: expected distance along the ray for the foreground (0 where empty).
    * ``normal``: world-space unit normals composited with the weights (0 where empty).
    * ``z_variance``: HiFA's weight-normalised variance of sample distance per ray, already
      multiplied by δ = [opacity > 0.5] (volume renderer only).
    * ``weights``/``sample_normals``/``ray_dirs``: per-sample terms the regularisers need
      (volume renderer; ``weights`` [R, S], ``sample_normals`` [R, S, 3], ``ray_dirs`` [R, 3]).
    * ``mesh``: the mesh that was rasterised (mesh renderer), for mesh regularisers.
    """

    rgb: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor | None = None
    normal: torch.Tensor | None = None
    z_variance: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    sample_normals: torch.Tensor | None = None
    ray_dirs: torch.Tensor | None = None
    mesh: Mesh | None = None

    def normal_image(self, background: float = 1.0) -> torch.Tensor:
        """Normals mapped to [0, 1] colours over a constant background (Phase II renders)."""
        if self.normal is None:
            raise ValueError("this render has no normals")
        return (self.normal + 1) / 2 * self.opacity + background * (1 - self.opacity)
