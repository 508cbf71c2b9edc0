"""Grid encodings of points in [0, 1]^d: the Instant-NGP multiresolution hash grid and a dense grid.

* :class:`HashGridEncoding` is a pure-PyTorch multiresolution hash encoding (Müller et al. 2022)
  for 3D points and for the 4D (x, y, z, t) grid of 4D-fy. Its level layout, vertex alignment,
  table sizes and spatial hash follow tiny-cuda-nn's ``HashGrid`` exactly, so its parameters can
  be copied to and from the tcnn backend and the two agree (tested on CUDA).
* :class:`DenseGridEncoding` is one dense multi-channel voxel grid sampled trilinearly with
  ``grid_sample``; on a CPU it costs about a tenth of a hash grid per SDS step
  (``research/tinyworld_derisk.md``), which is why the CPU presets offer it.

:func:`make_encoding` builds either from a :class:`GridEncodingConfig`; every result has
``out_dim`` and maps ``[N, in_dim]`` points in [0, 1] to ``[N, out_dim]`` features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from anyto3d import backends
from anyto3d.errors import InputError

# Instant-NGP's per-dimension hash primes (the first is 1 for memory coherence), as in tcnn.
HASH_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)
# tcnn initialises hash-table entries uniformly in ±1e-4.
INIT_RANGE = 1e-4


@dataclass(frozen=True)
class GridEncodingConfig:
    """A grid encoding. ``kind`` is "hash" (Instant-NGP multiresolution hash grid) or "dense".

    Hash-grid fields follow Instant-NGP / tcnn: level ``l`` has scale
    ``base_resolution * per_level_scale**l - 1`` and ``ceil(scale) + 1`` vertices per side;
    levels whose vertex count exceeds ``2**log2_hashmap_size`` are hashed.
    Dense-grid fields: ``dense_resolution`` vertices per side with ``dense_features`` channels;
    a 4D dense grid adds ``dense_time_resolution`` time slices, interpolated linearly.
    ``backend`` is "auto", "torch" or "tcnn" (hash grid only; see :mod:`anyto3d.backends`).
    """

    kind: str = "hash"
    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.447269237440378
    dense_resolution: int = 32
    dense_features: int = 8
    dense_time_resolution: int = 8
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.kind not in ("hash", "dense"):
            raise InputError(f"GridEncodingConfig.kind must be 'hash' or 'dense', got {self.kind!r}")
        if self.kind == "hash":
            if self.n_levels < 1 or self.n_features_per_level < 1:
                raise InputError("a hash grid needs n_levels >= 1 and n_features_per_level >= 1")
            if self.per_level_scale < 1.0:
                raise InputError(f"per_level_scale must be >= 1 (levels get finer), got {self.per_level_scale}")
            if not 1 <= self.log2_hashmap_size <= 30:
                raise InputError(f"log2_hashmap_size must be in [1, 30], got {self.log2_hashmap_size}")
        elif self.dense_resolution < 2 or self.dense_features < 1 or self.dense_time_resolution < 2:
            raise InputError("a dense grid needs dense_resolution >= 2, dense_time_resolution >= 2, dense_features >= 1")


# Instant-NGP / threestudio / 4D-fy release: 16 levels x 2 features, 2^19 table, 16 -> ~4096.
PAPER_HASH_GRID = GridEncodingConfig(kind="hash")
# A small hash grid for CPUs: 8 levels, 2^14 table, 16 -> ~256 (research/tinyworld_derisk.md).
CPU_HASH_GRID = GridEncodingConfig(
    kind="hash", n_levels=8, n_features_per_level=2, log2_hashmap_size=14, base_resolution=16, per_level_scale=1.4859
)
# One dense 32^3 x 8 grid: the fastest choice on a CPU.
CPU_DENSE_GRID = GridEncodingConfig(kind="dense", dense_resolution=32, dense_features=8, dense_time_resolution=8)

PRESETS: dict[str, GridEncodingConfig] = {
    "paper_hash": PAPER_HASH_GRID,
    "cpu_hash": CPU_HASH_GRID,
    "cpu_dense": CPU_DENSE_GRID,
}


def _check_points(x: torch.Tensor, in_dim: int) -> None:
    if x.dim() != 2 or x.shape[1] != in_dim:
        raise InputError(f"encoding expects points of shape [N, {in_dim}], got {tuple(x.shape)}")


# ---------------------------------------------------------------------------------------------
# Hash grid
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HashLevel:
    """One level of the hash grid: its scale, vertices per side, table rows, and whether it hashes."""

    scale: float
    resolution: int
    table_size: int
    hashed: bool
    offset: int  # first row of this level in the shared table


def hash_grid_levels(cfg: GridEncodingConfig, in_dim: int) -> list[HashLevel]:
    """The level layout of tcnn's HashGrid.

    ``scale_l = base * per_level_scale**l - 1`` (so ``base`` counts vertices, not cells),
    ``resolution_l = ceil(scale_l) + 1``; the level has ``min(round8(resolution_l**d), 2**log2)``
    table rows and is hashed exactly when the grid has more vertices than the table.
    """
    levels, offset = [], 0
    log2_scale = math.log2(cfg.per_level_scale)
    for level in range(cfg.n_levels):
        # float32 as tcnn computes it, so resolutions agree at the rounding edge.
        scale = float(torch.tensor(2.0, dtype=torch.float32) ** (level * log2_scale)) * cfg.base_resolution - 1.0
        scale = float(torch.tensor(scale, dtype=torch.float32))
        resolution = math.ceil(scale) + 1
        n_vertices = resolution**in_dim
        dense_rows = -(-n_vertices // 8) * 8  # aligned to 8 rows like tcnn
        table_size = min(dense_rows, 1 << cfg.log2_hashmap_size)
        levels.append(HashLevel(scale, resolution, table_size, n_vertices > table_size, offset))
        offset += table_size
    return levels


def spatial_hash(coords: torch.Tensor, table_size: int) -> torch.Tensor:
    """Instant-NGP's spatial hash ``(XOR_i c_i * π_i) mod T`` of integer coords [..., d] (int64).

    Products are taken modulo 2^32 as tcnn's uint32 arithmetic does; ``T`` is a power of two.
    """
    result = torch.zeros(coords.shape[:-1], dtype=torch.int64, device=coords.device)
    for i in range(coords.shape[-1]):
        result ^= coords[..., i] * HASH_PRIMES[i]
    return (result & 0xFFFFFFFF) % table_size


def _gather_columns(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` feature-major: ``[R, F]`` table, ``[L, C, N]`` index -> ``[F, L, C, N]``.

    One 1-D gather per feature keeps the long point axis innermost (a trailing axis of F = 2
    makes every following elementwise op several times slower on CPU).
    """
    flat = index.reshape(-1)
    columns = table.t().contiguous()
    return torch.stack([columns[f].index_select(0, flat) for f in range(table.shape[1])]).view(table.shape[1], *index.shape)


class _InterpolateRows(torch.autograd.Function):
    """``out[f, l, n] = Σ_c weight[l, c, n] · table[index[l, c, n], f]`` with a fast CPU backward.

    Autograd's own backward of a gather (``embedding_dense_backward`` / ``index_put_``) is the
    bottleneck of a hash grid on a CPU; a per-feature ``bincount`` with weights is 2-10x faster
    (measured). When a graph is being built through the backward (analytic normals use
    ``create_graph=True``) the backward switches to differentiable ops.
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        rows = _gather_columns(table, index)  # [F, L, C, N]
        ctx.save_for_backward(table, index, weight, rows)
        return (weight * rows).sum(dim=2)  # [F, L, N]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        table, index, weight, rows = ctx.saved_tensors
        grad_table = grad_weight = None
        differentiable = torch.is_grad_enabled()  # double backward: stay on differentiable ops
        if differentiable:
            rows = _gather_columns(table, index)
        if ctx.needs_input_grad[2]:
            grad_weight = (rows * grad_out.unsqueeze(2)).sum(dim=0)
        if ctx.needs_input_grad[0]:
            per_corner = weight * grad_out.unsqueeze(2)  # [F, L, C, N]
            flat_index = index.reshape(-1)
            if differentiable:
                grad_table = torch.zeros_like(table).index_add(0, flat_index, per_corner.reshape(table.shape[1], -1).t())
            else:
                columns = [
                    torch.bincount(flat_index, weights=per_corner[f].reshape(-1), minlength=table.shape[0])
                    for f in range(table.shape[1])
                ]
                grad_table = torch.stack(columns, dim=1).to(table.dtype)
        return grad_table, None, grad_weight


def interpolate_rows(table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted sums of table rows: ``[R, F]`` table, ``[L, C, N]`` indices and weights -> ``[F, L, N]``."""
    return _InterpolateRows.apply(table, index, weight)


class HashGridEncoding(nn.Module):
    """Pure-PyTorch multiresolution hash encoding for ``in_dim`` 1..7 (3D and 4D in practice).

    All levels of one kind (directly indexed, hashed) are evaluated together: per dimension the
    two neighbouring vertex keys and interpolation weights are formed once and combined across
    dimensions by broadcasting, giving all 2^d corners without materialising corner coordinates.
    """

    def __init__(self, cfg: GridEncodingConfig, in_dim: int = 3):
        super().__init__()
        if not 1 <= in_dim <= len(HASH_PRIMES):
            raise InputError(f"hash grid supports in_dim 1..{len(HASH_PRIMES)}, got {in_dim}")
        self.cfg = cfg
        self.in_dim = in_dim
        self.levels = hash_grid_levels(cfg, in_dim)
        self.out_dim = cfg.n_levels * cfg.n_features_per_level
        total = self.levels[-1].offset + self.levels[-1].table_size
        self.table = nn.Parameter(torch.empty(total, cfg.n_features_per_level).uniform_(-INIT_RANGE, INIT_RANGE))
        # Coarse levels are direct, fine ones hashed: resolution grows with the level.
        self.n_direct = sum(not lv.hashed for lv in self.levels)
        for name, group in (("direct", self.levels[: self.n_direct]), ("hashed", self.levels[self.n_direct :])):
            self.register_buffer(f"{name}_scale", torch.tensor([lv.scale for lv in group], dtype=torch.float32), persistent=False)
            self.register_buffer(f"{name}_size", torch.tensor([lv.table_size for lv in group], dtype=torch.int64), persistent=False)
            self.register_buffer(f"{name}_offset", torch.tensor([lv.offset for lv in group], dtype=torch.int64), persistent=False)
            # Per-dimension key multipliers: row-major strides for direct levels, primes for hashed ones.
            mult = [[lv.resolution**i for i in range(in_dim)] if not lv.hashed else list(HASH_PRIMES[:in_dim]) for lv in group]
            self.register_buffer(f"{name}_mult", torch.tensor(mult, dtype=torch.int64).reshape(len(group), in_dim), persistent=False)

    def level_table(self, level: int) -> torch.Tensor:
        """The rows [table_size, F] of one level (a view of the shared table)."""
        lv = self.levels[level]
        return self.table[lv.offset : lv.offset + lv.table_size]

    def _group_corners(self, x: torch.Tensor, hashed: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # Layout [level, dim, vertex, point]: the point axis is innermost and contiguous, so
        # every broadcast below runs over long vectors (small trailing axes are slow on CPU).
        name = "hashed" if hashed else "direct"
        scale, size, offset, mult = (getattr(self, f"{name}_{k}") for k in ("scale", "size", "offset", "mult"))
        n, n_levels, d = x.shape[0], scale.shape[0], self.in_dim
        pos = x.t()[None] * scale.to(x.dtype)[:, None, None] + 0.5  # [L, d, N], tcnn's vertex alignment
        floor = pos.floor()
        frac = (pos - floor).unsqueeze(2)
        weights = torch.cat([1.0 - frac, frac], dim=2)  # [L, d, 2, N]
        lower = floor.long().unsqueeze(2)
        keys = torch.cat([lower, lower + 1], dim=2) * mult[:, :, None, None]  # [L, d, 2, N]
        key, weight = keys[:, 0], weights[:, 0]  # [L, 2, N]
        for i in range(1, d):
            view = (n_levels,) + (1,) * i + (2, n)
            part_key, part_w = keys[:, i].reshape(view), weights[:, i].reshape(view)
            key = (key.unsqueeze(-2) ^ part_key) if hashed else (key.unsqueeze(-2) + part_key)
            weight = weight.unsqueeze(-2) * part_w
        key = key.reshape(n_levels, -1, n)
        if hashed:
            index = (key & (size[:, None, None] - 1)) + offset[:, None, None]  # table sizes are powers of two
        else:
            index = torch.remainder(key, size[:, None, None]) + offset[:, None, None]
        return index, weight.reshape(n_levels, -1, n)

    def corner_indices(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the shared table and d-linear weights of the 2^d corners around each point at
        every level: ``index`` (int64) and ``weight``, both ``[L, 2^d, N]``.

        Corner ``c`` takes the upper vertex along dim ``i`` when bit ``d-1-i`` of ``c`` is set.
        """
        _check_points(x, self.in_dim)
        x = x.clamp(0.0, 1.0).to(self.table.dtype)
        parts = [self._group_corners(x, hashed) for hashed in self._groups()]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts], dim=0), torch.cat([p[1] for p in parts], dim=0)

    def _groups(self) -> list[bool]:
        """Which level groups exist, coarse (direct) first: False = direct, True = hashed."""
        return [g for g, present in ((False, self.n_direct > 0), (True, self.n_direct < len(self.levels))) if present]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_points(x, self.in_dim)
        x = x.clamp(0.0, 1.0).to(self.table.dtype)
        parts = [interpolate_rows(self.table, *self._group_corners(x, hashed)) for hashed in self._groups()]
        features = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # [F, L, N]
        return features.permute(2, 1, 0).reshape(x.shape[0], self.out_dim)


class TcnnHashGridEncoding(nn.Module):
    """tiny-cuda-nn's fused HashGrid (CUDA only), same config and output as :class:`HashGridEncoding`."""

    def __init__(self, cfg: GridEncodingConfig, in_dim: int = 3):
        super().__init__()
        tcnn = backends.optional_import("tinycudann")
        if tcnn is None:
            raise RuntimeError("the tcnn backend needs the 'tinycudann' package")
        self.in_dim = in_dim
        self.out_dim = cfg.n_levels * cfg.n_features_per_level
        self.encoding = tcnn.Encoding(
            n_input_dims=in_dim,
            encoding_config={
                "otype": "HashGrid",
                "n_levels": cfg.n_levels,
                "n_features_per_level": cfg.n_features_per_level,
                "log2_hashmap_size": cfg.log2_hashmap_size,
                "base_resolution": cfg.base_resolution,
                "per_level_scale": cfg.per_level_scale,
            },
            dtype=torch.float32,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_points(x, self.in_dim)
        return self.encoding(x.clamp(0.0, 1.0)).float()


# ---------------------------------------------------------------------------------------------
# Dense grid
# ---------------------------------------------------------------------------------------------


class DenseGridEncoding(nn.Module):
    """A dense voxel grid of ``dense_features`` channels, trilinear in space.

    ``in_dim`` 3: one ``[C, R, R, R]`` volume. ``in_dim`` 4: ``dense_time_resolution`` such
    volumes (time slices at t = k / (T - 1)), linear in time between the two slices around each
    point's time. Each slice is sampled once, at the points whose time lies next to it: two 3D
    lookups per point, not T.
    Vertex ``k`` sits at coordinate ``k / (R - 1)`` (``align_corners=True``).
    """

    def __init__(self, cfg: GridEncodingConfig, in_dim: int = 3):
        super().__init__()
        if in_dim not in (3, 4):
            raise InputError(f"a dense grid supports in_dim 3 or 4, got {in_dim}")
        self.in_dim = in_dim
        self.out_dim = cfg.dense_features
        self.n_times = cfg.dense_time_resolution if in_dim == 4 else 1
        r = cfg.dense_resolution
        self.grid = nn.Parameter(torch.empty(self.n_times, cfg.dense_features, r, r, r).uniform_(-INIT_RANGE, INIT_RANGE))

    @staticmethod
    def _trilinear(volume: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        """Sample a ``[1, C, R, R, R]`` volume at ``[N, 3]`` points in [0, 1] -> ``[N, C]``."""
        # grid_sample's last grid axis indexes W (our x), then H (y), then D (z).
        coords = (xyz * 2.0 - 1.0).view(1, -1, 1, 1, 3)
        sampled = F.grid_sample(volume, coords, mode="bilinear", padding_mode="border", align_corners=True)
        return sampled.view(volume.shape[1], -1).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_points(x, self.in_dim)
        x = x.clamp(0.0, 1.0).to(self.grid.dtype)
        if self.in_dim == 3:
            return self._trilinear(self.grid, x)
        t = x[:, 3] * (self.n_times - 1)
        lower = t.detach().floor().clamp(max=self.n_times - 2).long()
        frac = (t - lower)[:, None]
        # unbind: autograd stacks the slice gradients once, instead of a full-size zero
        # gradient per slice that slicing the parameter would allocate.
        slices = self.grid.unbind(0)
        out = x.new_zeros(x.shape[0], self.out_dim)
        for k in torch.unique(torch.cat([lower, lower + 1])).tolist():
            # Slice k weighs (1 - frac) for points whose lower slice is k, and frac for those above it.
            rows = ((lower == k) | (lower == k - 1)).nonzero().squeeze(1)
            weight = torch.where((lower.index_select(0, rows) == k)[:, None], 1.0 - frac.index_select(0, rows), frac.index_select(0, rows))
            sampled = self._trilinear(slices[k][None], x.index_select(0, rows)[:, :3])
            out = out.index_add(0, rows, sampled * weight)
        return out


def make_encoding(cfg: GridEncodingConfig, in_dim: int = 3, device: torch.device | str = "cpu") -> nn.Module:
    """Build the encoding ``cfg`` describes for ``in_dim``-D points in [0, 1].

    ``device`` only decides what ``backend="auto"`` means (tcnn on CUDA when importable); the
    module is returned on the CPU like any ``nn.Module`` — move it with ``.to``.
    """
    if cfg.kind == "dense":
        return DenseGridEncoding(cfg, in_dim)
    if backends.resolve(cfg.backend, "tcnn", device) == "tcnn":
        return TcnnHashGridEncoding(cfg, in_dim).to(device)
    return HashGridEncoding(cfg, in_dim)


__all__ = [
    "CPU_DENSE_GRID",
    "CPU_HASH_GRID",
    "DenseGridEncoding",
    "GridEncodingConfig",
    "HASH_PRIMES",
    "HashGridEncoding",
    "HashLevel",
    "PAPER_HASH_GRID",
    "PRESETS",
    "TcnnHashGridEncoding",
    "hash_grid_levels",
    "make_encoding",
    "spatial_hash",
]
