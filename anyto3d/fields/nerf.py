"""The coarse NeRF: a grid encoding followed by density and colour MLP heads (Instant-NGP style).

:class:`GridField` holds everything a grid-encoded radiance field shares — the box it lives in,
the MLP heads, the density activation and centre "blob" bias, and normals — and asks a subclass
only for :meth:`GridField.encode`. :class:`NeRFField` encodes (x, y, z) with one grid;
:class:`anyto3d.fields.dynamic.DynamicNeRFField` sums a static 3D grid and a 4D (x, y, z, t) grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from anyto3d.errors import InputError
from anyto3d.fields.encoding import CPU_DENSE_GRID, CPU_HASH_GRID, PAPER_HASH_GRID, GridEncodingConfig, make_encoding

DENSITY_ACTIVATIONS = ("softplus", "exp", "trunc_exp")
DENSITY_BIASES = ("blob_magic3d", "blob_dreamfusion", "none")
NORMAL_TYPES = ("finite_difference", "analytic")


@dataclass(frozen=True)
class NeRFFieldConfig:
    """A grid-encoded NeRF (threestudio's ``implicit-volume`` defaults).

    The field lives in the box ``[-radius, radius]^3``; points outside have zero density.
    ``density_bias`` is added to the raw density before ``density_activation``:
    "blob_magic3d" (threestudio/4D-fy default), "blob_dreamfusion" or "none".
    Normals are ``-∇σ`` normalised, by central finite differences of step
    ``finite_difference_eps`` or by autograd ("analytic", differentiable w.r.t. the parameters).
    """

    encoding: GridEncodingConfig = PAPER_HASH_GRID
    radius: float = 1.0
    hidden_dim: int = 64
    n_hidden_layers: int = 1
    density_activation: str = "softplus"
    density_bias: str = "blob_magic3d"
    density_blob_scale: float = 10.0
    density_blob_std: float = 0.5
    normal_type: str = "finite_difference"
    finite_difference_eps: float = 0.01

    def __post_init__(self) -> None:
        for name, value, options in (
            ("density_activation", self.density_activation, DENSITY_ACTIVATIONS),
            ("density_bias", self.density_bias, DENSITY_BIASES),
            ("normal_type", self.normal_type, NORMAL_TYPES),
        ):
            if value not in options:
                raise InputError(f"NeRFFieldConfig.{name} must be one of {options}, got {value!r}")
        if self.radius <= 0 or self.hidden_dim < 1 or self.n_hidden_layers < 0 or self.finite_difference_eps <= 0:
            raise InputError("NeRFFieldConfig needs radius > 0, hidden_dim >= 1, n_hidden_layers >= 0, finite_difference_eps > 0")


# threestudio / 4D-fy: paper hash grid, 64-wide MLPs with one hidden layer, magic3d blob.
PAPER_NERF = NeRFFieldConfig(encoding=PAPER_HASH_GRID)
# CPU presets: 32-wide MLPs (the MLPs dominate a dense-grid step on a CPU, measured).
CPU_DENSE_NERF = NeRFFieldConfig(encoding=CPU_DENSE_GRID, hidden_dim=32)
CPU_HASH_NERF = NeRFFieldConfig(encoding=CPU_HASH_GRID, hidden_dim=32)


@dataclass
class FieldOutput:
    """Per-point field values: density [N] (>= 0), albedo [N, 3] in (0, 1), unit normal [N, 3] or None."""

    density: torch.Tensor
    albedo: torch.Tensor
    normal: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------
# Density bias and activation
# ---------------------------------------------------------------------------------------------


def magic3d_density_blob(points: torch.Tensor, scale: float, std: float) -> torch.Tensor:
    """Magic3D's density blob at the centre: ``scale · (1 − ‖x‖ / std)`` (threestudio ``blob_magic3d``)."""
    return scale * (1.0 - points.norm(dim=-1) / std)


def dreamfusion_density_blob(points: torch.Tensor, scale: float, std: float) -> torch.Tensor:
    """DreamFusion's density blob at the centre: ``scale · exp(−‖x‖² / (2 std²))``."""
    return scale * torch.exp(-(points**2).sum(dim=-1) / (2.0 * std**2))


class _TruncExp(torch.autograd.Function):
    """``exp`` whose backward clamps its argument at 15, so large raw densities cannot blow up
    the gradient (Instant-NGP / torch-ngp's trunc_exp)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


def activate_density(raw: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "softplus":
        return F.softplus(raw)
    if activation == "exp":
        return torch.exp(raw)
    return trunc_exp(raw)


# ---------------------------------------------------------------------------------------------
# Fields
# ---------------------------------------------------------------------------------------------


def make_mlp(in_dim: int, out_dim: int, hidden_dim: int, n_hidden_layers: int) -> nn.Sequential:
    """threestudio's VanillaMLP: ReLU hidden layers, no biases (the grid features carry offsets)."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(n_hidden_layers):
        layers += [nn.Linear(width, hidden_dim, bias=False), nn.ReLU()]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim, bias=False))
    return nn.Sequential(*layers)


class GridField(nn.Module):
    """Shared body of grid-encoded radiance fields: heads, density, box, normals.

    Subclasses implement :meth:`encode` ``(points in [0,1]^3 [N, 3], times [N] | None) -> [N, D]``
    and call ``_build_heads(D)``.
    """

    cfg: NeRFFieldConfig
    requires_times: bool = False

    def _build_heads(self, feature_dim: int) -> None:
        self.density_mlp = make_mlp(feature_dim, 1, self.cfg.hidden_dim, self.cfg.n_hidden_layers)
        self.albedo_mlp = make_mlp(feature_dim, 3, self.cfg.hidden_dim, self.cfg.n_hidden_layers)

    def encode(self, unit_points: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def grid_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def mlp_parameters(self) -> list[nn.Parameter]:
        return [*self.density_mlp.parameters(), *self.albedo_mlp.parameters()]

    # -- inputs ---------------------------------------------------------------------------------

    def _check_inputs(self, points: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor | None:
        if points.dim() != 2 or points.shape[1] != 3:
            raise InputError(f"field points must have shape [N, 3], got {tuple(points.shape)}")
        if not self.requires_times:
            return None
        if times is None:
            raise InputError(f"{type(self).__name__} is a 4D field: pass times [N] in [0, 1]")
        times = torch.as_tensor(times, dtype=points.dtype, device=points.device).reshape(-1)
        if times.numel() == 1:
            times = times.expand(points.shape[0])
        if times.shape[0] != points.shape[0]:
            raise InputError(f"times must have shape [N] = [{points.shape[0]}], got {tuple(times.shape)}")
        return times

    # -- values ---------------------------------------------------------------------------------

    def density_bias(self, points: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.density_bias == "blob_magic3d":
            return magic3d_density_blob(points, cfg.density_blob_scale, cfg.density_blob_std)
        if cfg.density_bias == "blob_dreamfusion":
            return dreamfusion_density_blob(points, cfg.density_blob_scale, cfg.density_blob_std)
        return torch.zeros_like(points[:, 0])

    def _density_and_features(self, points: torch.Tensor, times: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.cfg.radius
        unit = (points + r) / (2.0 * r)
        features = self.encode(unit, times)
        raw = self.density_mlp(features).squeeze(-1) + self.density_bias(points)
        inside = (points.abs() <= r).all(dim=-1)
        density = activate_density(raw, self.cfg.density_activation) * inside.to(raw.dtype)
        return density, features

    def density(self, points: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        """Volume density σ >= 0 at world points [N, 3] -> [N]."""
        times = self._check_inputs(points, times)
        return self._density_and_features(points, times)[0]

    def forward(self, points: torch.Tensor, times: torch.Tensor | None = None, with_normal: bool = False) -> FieldOutput:
        times = self._check_inputs(points, times)
        if with_normal and self.cfg.normal_type == "analytic":
            density, features, normal = self._analytic(points, times)
        else:
            density, features = self._density_and_features(points, times)
            normal = self._finite_difference_normal(points, times) if with_normal else None
        albedo = torch.sigmoid(self.albedo_mlp(features))
        return FieldOutput(density=density, albedo=albedo, normal=normal)

    # -- normals --------------------------------------------------------------------------------

    def _finite_difference_normal(self, points: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
        """``-∇σ`` normalised, by central differences along the three axes (6 extra lookups)."""
        eps = self.cfg.finite_difference_eps
        offsets = torch.cat([torch.eye(3), -torch.eye(3)]).to(points) * eps  # [6, 3]
        shifted = (points[None] + offsets[:, None]).reshape(-1, 3)
        shifted_times = None if times is None else times.repeat(6)
        sigma = self._density_and_features(shifted, shifted_times)[0].view(6, -1)
        gradient = (sigma[:3] - sigma[3:]).t() / (2.0 * eps)  # [N, 3]
        return F.normalize(-gradient, dim=-1)

    def _analytic(self, points: torch.Tensor, times: torch.Tensor | None):
        """Density, features and ``-∇σ`` by autograd; the graph is kept when gradients are on, so
        losses on normals train the field."""
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            points = points.detach().requires_grad_(True) if not points.requires_grad else points
            density, features = self._density_and_features(points, times)
            (gradient,) = torch.autograd.grad(density.sum(), points, create_graph=keep_graph)
        if not keep_graph:
            density, features, gradient = density.detach(), features.detach(), gradient.detach()
        return density, features, F.normalize(-gradient, dim=-1)

    def param_groups(self, lr_grid: float = 0.01, lr_mlp: float = 0.001) -> list[dict]:
        """Optimiser groups (threestudio/4D-fy: grid 1e-2, MLPs 1e-3)."""
        return [
            {"name": "grid", "params": self.grid_parameters(), "lr": lr_grid},
            {"name": "mlp", "params": self.mlp_parameters(), "lr": lr_mlp},
        ]


class NeRFField(GridField):
    """Static NeRF: one 3D grid encoding (hash or dense) -> density and albedo heads."""

    def __init__(self, cfg: NeRFFieldConfig | None = None, device: torch.device | str = "cpu"):
        super().__init__()
        self.cfg = cfg if cfg is not None else NeRFFieldConfig()
        self.encoding = make_encoding(cfg.encoding, in_dim=3, device=device)
        self._build_heads(self.encoding.out_dim)
        self.to(device)

    def encode(self, unit_points: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
        return self.encoding(unit_points)

    def grid_parameters(self) -> list[nn.Parameter]:
        return list(self.encoding.parameters())


__all__ = [
    "CPU_DENSE_NERF",
    "CPU_HASH_NERF",
    "FieldOutput",
    "GridField",
    "NeRFField",
    "NeRFFieldConfig",
    "PAPER_NERF",
    "activate_density",
    "dreamfusion_density_blob",
    "magic3d_density_blob",
    "make_mlp",
    "trunc_exp",
]
