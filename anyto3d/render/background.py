"""Backgrounds the volume renderer composites over: ``forward(dirs [N, 3]) -> rgb [N, 3]``."""

from __future__ import annotations

import torch
import torch.nn as nn

from anyto3d.errors import InputError


def _check_dirs(dirs: torch.Tensor) -> None:
    if dirs.dim() != 2 or dirs.shape[1] != 3:
        raise InputError(f"background expects ray directions [N, 3], got {tuple(dirs.shape)}")


class SolidBackground(nn.Module):
    """One fixed colour (white by default, the tiny world's and the papers' evaluation background)."""

    def __init__(self, color: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        super().__init__()
        self.register_buffer("color", torch.tensor(color, dtype=torch.float32).reshape(3), persistent=False)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        _check_dirs(dirs)
        return self.color.to(dirs).expand(dirs.shape[0], 3)


class RandomSolidBackground(nn.Module):
    """A fresh uniformly random colour on every call (training augmentation, so the field cannot
    explain the object with the background colour); one colour per call, shared by its rays."""

    def __init__(self, generator: torch.Generator | None = None):
        super().__init__()
        self.generator = generator

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        _check_dirs(dirs)
        color = torch.rand(3, generator=self.generator).to(dirs)
        return color.expand(dirs.shape[0], 3)


class MLPBackground(nn.Module):
    """threestudio's neural environment map in small: an MLP on the unit ray direction, sigmoid
    out, so the background may depend on where the camera looks but not on the object."""

    def __init__(self, hidden_dim: int = 16, n_hidden_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        for _ in range(n_hidden_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
            width = hidden_dim
        layers.append(nn.Linear(width, 3))
        self.mlp = nn.Sequential(*layers)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        _check_dirs(dirs)
        return torch.sigmoid(self.mlp(dirs))


__all__ = ["MLPBackground", "RandomSolidBackground", "SolidBackground"]
