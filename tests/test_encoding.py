"""Grid encodings: level layout, hashing, interpolation values and float64 gradients."""

import math
from dataclasses import replace

import pytest
import torch

from anyto3d.errors import InputError
from anyto3d.fields.encoding import (
    CPU_DENSE_GRID,
    CPU_HASH_GRID,
    PAPER_HASH_GRID,
    DenseGridEncoding,
    GridEncodingConfig,
    HashGridEncoding,
    hash_grid_levels,
    make_encoding,
    spatial_hash,
)

# Scales 3, 7, 15 -> 4, 8, 16 vertices per side. In 3D with a 2^9 table: 64 and 512 vertices are
# indexed directly, 4096 are hashed.
TINY = GridEncodingConfig(kind="hash", n_levels=3, n_features_per_level=2, log2_hashmap_size=9, base_resolution=4, per_level_scale=2.0)
# For gradchecks: 2 and 4 vertices per side, 2^5 rows; the finer level is hashed in 3D and 4D.
GRAD_TINY = GridEncodingConfig(kind="hash", n_levels=2, n_features_per_level=2, log2_hashmap_size=5, base_resolution=2, per_level_scale=2.0)


def test_level_resolutions_follow_base_times_scale_power():
    for l, level in enumerate(hash_grid_levels(PAPER_HASH_GRID, 3)):
        expected = PAPER_HASH_GRID.base_resolution * PAPER_HASH_GRID.per_level_scale**l
        assert level.scale == pytest.approx(expected - 1, rel=1e-5)
        assert level.resolution == math.ceil(level.scale) + 1
    levels = hash_grid_levels(PAPER_HASH_GRID, 3)
    assert levels[0].resolution == 16 and levels[-1].resolution == 4096
    assert [lv.resolution for lv in hash_grid_levels(TINY, 3)] == [4, 8, 16]


def test_only_levels_larger_than_the_table_are_hashed():
    for cfg in (PAPER_HASH_GRID, CPU_HASH_GRID, TINY):
        for d in (3, 4):
            for lv in hash_grid_levels(cfg, d):
                assert lv.hashed == (lv.resolution**d > 2**cfg.log2_hashmap_size)
                assert lv.table_size == min(-(-lv.resolution**d // 8) * 8, 2**cfg.log2_hashmap_size)
    assert [lv.hashed for lv in hash_grid_levels(TINY, 3)] == [False, False, True]
    assert [lv.hashed for lv in hash_grid_levels(TINY, 4)] == [False, True, True]  # 4^4 = 256 fits, 8^4 does not


def _cell_points(scale: float, d: int) -> torch.Tensor:
    """One point inside every grid cell of a level with integer ``scale`` (pos = x*scale + 0.5)."""
    n_cells = int(scale)
    v = (torch.arange(n_cells, dtype=torch.float64) + 0.25) / scale  # pos = v + 0.75
    grids = torch.meshgrid(*([v] * d), indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=-1)


@pytest.mark.parametrize("d", [3, 4])
def test_direct_levels_are_injective_and_hashed_levels_collide(d):
    enc = HashGridEncoding(TINY if d == 3 else replace(TINY, n_levels=2), in_dim=d).double()
    for l, lv in enumerate(enc.levels):
        x = _cell_points(lv.scale, d)
        index, _ = enc.corner_indices(x)
        rows = index[l].t().reshape(-1) - lv.offset  # [N * 2^d], point-major
        assert rows.min() >= 0 and rows.max() < lv.table_size
        # Every vertex of the level is a corner of some cell; recover the vertex of each corner.
        floor = (x * lv.scale + 0.5).floor().long()  # [N, d]
        bits = torch.tensor([[(c >> (d - 1 - i)) & 1 for i in range(d)] for c in range(2**d)])  # [2^d, d]
        vertices = (floor[:, None, :] + bits[None]).reshape(-1, d)
        assert vertices.unique(dim=0).shape[0] == lv.resolution**d
        pairs = torch.cat([vertices, rows[:, None]], dim=1).unique(dim=0)
        assert pairs.shape[0] == lv.resolution**d  # each vertex maps to exactly one row
        if lv.hashed:
            assert torch.equal(rows, spatial_hash(vertices, lv.table_size))
            assert rows.unique().numel() < lv.resolution**d  # more vertices than rows: collisions
            assert rows.unique().numel() > 0.85 * lv.table_size  # and the hash spreads over the table
        else:
            strides = torch.tensor([lv.resolution**i for i in range(d)])
            assert torch.equal(rows, (vertices * strides).sum(-1))
            assert rows.unique().numel() == lv.resolution**d  # no collisions


def test_spatial_hash_matches_instant_ngp_formula():
    coords = torch.tensor([[3, 5, 7], [4095, 1, 2048]])
    expected = [((3 * 1) ^ (5 * 2654435761) ^ (7 * 805459861)) % 2**32 % 2**19, ((4095) ^ (2654435761) ^ (2048 * 805459861)) % 2**32 % 2**19]
    assert spatial_hash(coords, 2**19).tolist() == expected


def test_trilinear_value_by_hand():
    cfg = GridEncodingConfig(kind="hash", n_levels=1, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4)
    enc = HashGridEncoding(cfg, in_dim=3).double()  # scale 3, 4 vertices per side, direct
    r = 4
    c = torch.arange(r**3)
    cx, cy, cz = c % r, (c // r) % r, c // r**2
    with torch.no_grad():
        enc.table.zero_()
        enc.table[: r**3, 0] = (1 + 2 * cx + 3 * cy + 5 * cz).double()  # linear: interpolation is exact
        enc.table[: r**3, 1] = (cx * cy * cz).double()  # multilinear: also exact
    x = torch.tensor([[0.3, 0.6, 0.7]], dtype=torch.float64)  # pos = 3x + 0.5 = (1.4, 2.3, 2.6)
    out = enc(x)[0]
    assert out[0].item() == pytest.approx(1 + 2 * 1.4 + 3 * 2.3 + 5 * 2.6, abs=1e-12)
    assert out[1].item() == pytest.approx(1.4 * 2.3 * 2.6, abs=1e-12)


def test_quadrilinear_value_by_hand():
    cfg = GridEncodingConfig(kind="hash", n_levels=1, n_features_per_level=1, log2_hashmap_size=12, base_resolution=4)
    enc = HashGridEncoding(cfg, in_dim=4).double()  # 4^4 = 256 rows, direct
    r = 4
    c = torch.arange(r**4)
    coords = [(c // r**i) % r for i in range(4)]
    with torch.no_grad():
        enc.table[: r**4, 0] = (1 + 2 * coords[0] + 3 * coords[1] + 5 * coords[2] + 7 * coords[3]).double()
    x = torch.tensor([[0.3, 0.6, 0.7, 0.1]], dtype=torch.float64)  # pos (1.4, 2.3, 2.6, 0.8)
    assert enc(x)[0, 0].item() == pytest.approx(1 + 2.8 + 6.9 + 13.0 + 5.6, abs=1e-12)


@pytest.mark.parametrize("d", [3, 4])
def test_hash_grid_gradcheck_float64(d):
    enc = HashGridEncoding(GRAD_TINY, in_dim=d).double()
    assert [lv.hashed for lv in enc.levels] == [False, True]
    with torch.no_grad():
        enc.table.normal_()
    x = (0.05 + 0.9 * torch.rand(5, d, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda table, pts: _with_table(enc, table, pts), (enc.table, x), atol=1e-6)
    # Second order (analytic normals backpropagate through d/dx).
    assert torch.autograd.gradgradcheck(lambda table, pts: _with_table(enc, table, pts), (enc.table, x), atol=1e-6)


def _with_table(enc, table, x):
    from anyto3d.fields.encoding import interpolate_rows

    index, weight = enc.corner_indices(x)
    return interpolate_rows(table, index, weight)  # [F, L, N]


def test_hash_grid_fast_backward_matches_autograd_reference():
    enc = HashGridEncoding(CPU_HASH_GRID, in_dim=3)
    with torch.no_grad():
        enc.table.normal_()
    x = torch.rand(500, 3, requires_grad=True)
    grad_out = torch.randn(500, enc.out_dim)
    (enc(x) * grad_out).sum().backward()
    fast_table, fast_x = enc.table.grad.clone(), x.grad.clone()
    # Reference: autograd through a plain gather.
    table = enc.table.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    index, weight = enc.corner_indices(x2)
    ref = (weight.unsqueeze(-1) * table[index]).sum(1).permute(1, 0, 2).reshape(500, -1)  # [N, L*F]
    (ref * grad_out).sum().backward()
    torch.testing.assert_close(fast_table, table.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_x, x2.grad, rtol=1e-4, atol=1e-5)


def test_dense_grid_trilinear_value_and_time_interpolation():
    cfg = GridEncodingConfig(kind="dense", dense_resolution=3, dense_features=1, dense_time_resolution=3)
    enc = DenseGridEncoding(cfg, in_dim=4).double()
    k = torch.arange(3, dtype=torch.float64)
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")  # volume axes are (D=z, H=y, W=x)
    with torch.no_grad():
        for s in range(3):  # slice s sits at t = s / 2
            enc.grid[s, 0] = 1 + 2 * x + 3 * y + 5 * z + 7 * s
    p = torch.tensor([[0.2, 0.65, 0.9, 0.3]], dtype=torch.float64)  # vertex coords 2p = (0.4, 1.3, 1.8), slice 0.6
    assert enc(p)[0, 0].item() == pytest.approx(1 + 0.8 + 3.9 + 9.0 + 4.2, abs=1e-12)
    static = DenseGridEncoding(CPU_DENSE_GRID, in_dim=3)
    assert static(torch.rand(7, 3)).shape == (7, CPU_DENSE_GRID.dense_features)


@pytest.mark.parametrize("d", [3, 4])
def test_dense_grid_gradcheck_float64(d):
    cfg = GridEncodingConfig(kind="dense", dense_resolution=4, dense_features=2, dense_time_resolution=3)
    enc = DenseGridEncoding(cfg, in_dim=d).double()
    with torch.no_grad():
        enc.grid.normal_()
    x = (0.05 + 0.9 * torch.rand(4, d, dtype=torch.float64)).requires_grad_(True)

    def run(grid, pts):
        return torch.func.functional_call(enc, {"grid": grid}, (pts,))

    assert torch.autograd.gradcheck(run, (enc.grid.detach().clone().requires_grad_(True), x), atol=1e-6)


def test_make_encoding_and_bad_input():
    for cfg, cls in ((CPU_HASH_GRID, HashGridEncoding), (CPU_DENSE_GRID, DenseGridEncoding)):
        enc = make_encoding(cfg, in_dim=3)
        assert isinstance(enc, cls)
        assert enc(torch.rand(11, 3)).shape == (11, enc.out_dim)
    assert make_encoding(PAPER_HASH_GRID).out_dim == 32
    with pytest.raises(InputError):
        make_encoding(CPU_HASH_GRID)(torch.rand(4, 2))
    with pytest.raises(InputError):
        GridEncodingConfig(kind="octree")
    with pytest.raises(InputError):
        DenseGridEncoding(CPU_DENSE_GRID, in_dim=2)
    with pytest.raises(RuntimeError):  # asking explicitly for an unavailable accelerator is an error
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
        make_encoding(GridEncodingConfig(backend="tcnn"))


@pytest.mark.gpu
@pytest.mark.parametrize("d", [3, 4])
def test_tcnn_matches_torch_reference(d):
    pytest.importorskip("tinycudann")
    from anyto3d.fields.encoding import TcnnHashGridEncoding

    cfg = GridEncodingConfig(kind="hash", n_levels=8, log2_hashmap_size=14, base_resolution=16, per_level_scale=1.5, backend="tcnn")
    fast = TcnnHashGridEncoding(cfg, in_dim=d).cuda()
    ref = HashGridEncoding(cfg, in_dim=d).cuda()
    with torch.no_grad():
        fast.encoding.params.uniform_(-1, 1)
        ref.table.copy_(fast.encoding.params.float()[: ref.table.numel()].view_as(ref.table))
    x = torch.rand(4096, d, device="cuda")
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-3, atol=1e-3)
