"""4D-fy's dynamic NeRF (§3): a static 3D grid plus a dynamic 4D (x, y, z, t) grid, features summed.

The summed features feed the same density and colour heads as the static :class:`NeRFField`
(one implementation, :class:`anyto3d.fields.nerf.GridField`). Time is treated as a fourth
coordinate of the 4D grid. The dynamic grid can be frozen (stages 1–2 of 4D-fy, and every
non-video step of stage 3), and each part has its own learning rate (static grid 1e-2 → 1e-4
in stage 3, dynamic grid 1e-2, MLPs 1e-3).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from anyto3d.errors import InputError
from anyto3d.fields.encoding import CPU_DENSE_GRID, PAPER_HASH_GRID, GridEncodingConfig, make_encoding
from anyto3d.fields.nerf import GridField, NeRFFieldConfig


@dataclass(frozen=True)
class DynamicNeRFFieldConfig(NeRFFieldConfig):
    """A :class:`NeRFFieldConfig` whose ``encoding`` is the static 3D grid, plus the 4D grid.

    Both grids must give features of the same width (they are summed). 4D-fy uses two
    identical paper hash grids.
    """

    dynamic_encoding: GridEncodingConfig = PAPER_HASH_GRID


# 4D-fy release: two identical paper hash grids.
PAPER_DYNAMIC_NERF = DynamicNeRFFieldConfig(encoding=PAPER_HASH_GRID, dynamic_encoding=PAPER_HASH_GRID)
# CPU: dense 32^3 static grid + dense 24^3 x 8-slice 4D grid, 32-wide MLPs.
CPU_DYNAMIC_NERF = DynamicNeRFFieldConfig(
    encoding=CPU_DENSE_GRID,
    dynamic_encoding=replace(CPU_DENSE_GRID, dense_resolution=24, dense_time_resolution=8),
    hidden_dim=32,
)


class DynamicNeRFField(GridField):
    """``features = static_grid(x) + dynamic_grid(x, t)`` -> density and albedo heads.

    ``density(points, times)`` and ``forward(points, times, with_normal)`` need ``times`` [N]
    in [0, 1] (a single value broadcasts).
    """

    requires_times = True

    def __init__(self, cfg: DynamicNeRFFieldConfig | None = None, device: torch.device | str = "cpu"):
        super().__init__()
        self.cfg = cfg if cfg is not None else DynamicNeRFFieldConfig()
        self.static_encoding = make_encoding(self.cfg.encoding, in_dim=3, device=device)
        self.dynamic_encoding = make_encoding(self.cfg.dynamic_encoding, in_dim=4, device=device)
        if self.static_encoding.out_dim != self.dynamic_encoding.out_dim:
            raise InputError(
                f"static and dynamic grids are summed, so their widths must match: "
                f"{self.static_encoding.out_dim} != {self.dynamic_encoding.out_dim}"
            )
        self._build_heads(self.static_encoding.out_dim)
        self.to(device)

    def encode(self, unit_points: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
        """4D-fy §3.1 (the representation of Eq. 2): ``f = f_static(μ) + f_dynamic(μ, t)``."""
        space_time = torch.cat([unit_points, times[:, None].to(unit_points)], dim=-1)
        return self.static_encoding(unit_points) + self.dynamic_encoding(space_time)

    def freeze_dynamic(self, frozen: bool = True) -> None:
        """Stop (or resume) training the 4D grid; it is still evaluated and added, as in 4D-fy."""
        self.dynamic_encoding.requires_grad_(not frozen)

    def grid_parameters(self) -> list[nn.Parameter]:
        return [*self.static_encoding.parameters(), *self.dynamic_encoding.parameters()]

    def param_groups(self, lr_static: float = 0.01, lr_dynamic: float = 0.01, lr_mlp: float = 0.001) -> list[dict]:
        """Optimiser groups named "static_grid", "dynamic_grid" and "mlp" (4D-fy's learning rates)."""
        return [
            {"name": "static_grid", "params": list(self.static_encoding.parameters()), "lr": lr_static},
            {"name": "dynamic_grid", "params": list(self.dynamic_encoding.parameters()), "lr": lr_dynamic},
            {"name": "mlp", "params": self.mlp_parameters(), "lr": lr_mlp},
        ]


def set_group_lr(optimizer: torch.optim.Optimizer, name: str, lr: float) -> None:
    """Set the learning rate of the optimiser group called ``name`` (from ``param_groups``);
    4D-fy stage 3 is ``set_group_lr(opt, "static_grid", 1e-4)``."""
    groups = [g for g in optimizer.param_groups if g.get("name") == name]
    if not groups:
        names = [g.get("name") for g in optimizer.param_groups]
        raise InputError(f"no optimiser group named {name!r}; groups are {names}")
    for group in groups:
        group["lr"] = lr


__all__ = ["CPU_DYNAMIC_NERF", "DynamicNeRFField", "DynamicNeRFFieldConfig", "PAPER_DYNAMIC_NERF", "set_group_lr"]
