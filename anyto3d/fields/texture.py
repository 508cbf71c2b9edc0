"""Albedo field for XBind Phase III (DMTet texture refinement, geometry frozen).

A grid encoding of the surface point (``anyto3d.fields.encoding``) followed by a small MLP and
a sigmoid gives an RGB albedo in [0, 1]. It is a plain ``points -> colours`` function, so the
mesh rasteriser can shade surface points with it (``color_fn``) and export can bake it into a
texture by evaluating it at texel positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from anyto3d.errors import InputError
from anyto3d.fields.encoding import CPU_DENSE_GRID, PAPER_HASH_GRID, GridEncodingConfig, make_encoding


@dataclass
class TextureFieldConfig:
    """Encoding + MLP of the albedo field.

    Paper-scale defaults: the Instant-NGP hash grid and a 64-wide MLP with 2 hidden layers
    (the public refine/texture stages' feature network). ``radius``: points in
    [-radius, radius]^3 are mapped to the encoding's [0, 1]^3 (outside is clamped).
    """

    encoding: GridEncodingConfig = field(default_factory=lambda: PAPER_HASH_GRID)
    hidden_dim: int = 64
    n_hidden_layers: int = 2
    radius: float = 1.0


# A CPU preset: one dense 32^3 x 8 grid, a 32-wide single hidden layer.
CPU_TEXTURE_FIELD = TextureFieldConfig(encoding=CPU_DENSE_GRID, hidden_dim=32, n_hidden_layers=1)


class TextureField(nn.Module):
    """``forward(points [..., 3]) -> albedo [..., 3]`` in [0, 1] (sigmoid of the MLP output)."""

    def __init__(self, cfg: TextureFieldConfig | None = None, device: torch.device | str = "cpu"):
        super().__init__()
        self.cfg = cfg = cfg or TextureFieldConfig()
        if cfg.radius <= 0 or cfg.hidden_dim < 1 or cfg.n_hidden_layers < 0:
            raise InputError(f"TextureFieldConfig needs radius > 0, hidden_dim >= 1, n_hidden_layers >= 0; got {cfg}")
        self.encoding = make_encoding(cfg.encoding, in_dim=3, device=device)
        layers: list[nn.Module] = []
        width = self.encoding.out_dim
        for _ in range(cfg.n_hidden_layers):
            layers += [nn.Linear(width, cfg.hidden_dim), nn.ReLU(inplace=True)]
            width = cfg.hidden_dim
        layers.append(nn.Linear(width, 3))
        self.mlp = nn.Sequential(*layers)
        self.to(device)

    def normalize_points(self, points: torch.Tensor) -> torch.Tensor:
        """Map the box [-radius, radius]^3 to [0, 1]^3 (the encoding's domain), clamping outside."""
        r = self.cfg.radius
        return ((points + r) / (2.0 * r)).clamp(0.0, 1.0)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if points.shape[-1] != 3:
            raise InputError(f"TextureField expects points [..., 3], got {tuple(points.shape)}")
        flat = self.normalize_points(points.reshape(-1, 3))
        features = self.encoding(flat)
        albedo = torch.sigmoid(self.mlp(features.to(self.mlp[0].weight.dtype)))
        return albedo.reshape(*points.shape[:-1], 3)
