"""Differentiable marching tetrahedra: hand cases, gradients, watertight outward spheres."""

import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from anyto3d.errors import InputError
from anyto3d.fields.marching_tets import TET_EDGES, TRIANGLE_COUNT, TRIANGLE_TABLE, marching_tetrahedra
from anyto3d.fields.tets import kuhn_grid_mixed_tets, make_tet_grid


def _sphere_sdf(points, center=(0.0, 0.0, 0.0), radius=0.6):
    return (points - torch.tensor(center, dtype=points.dtype)).norm(dim=-1) - radius


def _chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer distance: mean nearest-neighbour distance a->b and b->a, averaged."""
    return 0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def test_triangle_table_uses_exactly_the_crossing_edges():
    for code in range(16):
        inside = {i for i in range(4) if code >> i & 1}
        crossing = {k for k, (a, b) in enumerate(TET_EDGES) if (a in inside) != (b in inside)}
        n = int(TRIANGLE_COUNT[code])
        assert n == {0: 0, 1: 1, 2: 2, 3: 1, 4: 0}[len(inside)]
        used = {int(e) for e in TRIANGLE_TABLE[code, :n].reshape(-1)}
        assert used == crossing
        assert bool((TRIANGLE_TABLE[code, n:] == -1).all())


def test_single_tet_hand_computed():
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    t = torch.tensor([[0, 1, 2, 3]])
    sdf = torch.tensor([-1.0, 1.0, 1.0, 3.0])  # only corner 0 inside
    mesh = marching_tetrahedra(v, t, sdf)
    expected = {(0.5, 0.0, 0.0), (0.0, 0.5, 0.0), (0.0, 0.0, 0.25)}  # p = (p_a s_b - p_b s_a) / (s_b - s_a)
    assert {tuple(p) for p in mesh.vertices.tolist()} == expected
    assert mesh.num_faces == 1
    # The normal points away from the inside corner (0,0,0).
    assert float(mesh.face_normals()[0] @ torch.ones(3)) > 0
    # Two corners inside: a quad of two triangles, both facing the outside corners 2 and 3.
    quad = marching_tetrahedra(v, t, torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    assert quad.num_vertices == 4 and quad.num_faces == 2
    assert bool((quad.face_normals() @ torch.tensor([-1.0, 1.0, 1.0]) > 0).all())


def _tiny_case(seed=0):
    """A 2^3 grid (48 tets), slightly deformed, with sdf values well away from 0."""
    g = torch.Generator().manual_seed(seed)
    v, t = make_tet_grid(2)
    v = v.double() + 0.05 * torch.rand(v.shape, generator=g, dtype=torch.float64)
    sdf = _sphere_sdf(v, center=(0.1, -0.1, 0.05), radius=0.8)
    sdf = torch.where(sdf.abs() < 0.1, sdf.sign() * 0.1 + sdf, sdf)  # keep the sign pattern stable under eps
    return v, t, sdf


def test_gradcheck_wrt_sdf_and_vertices():
    v, t, sdf = _tiny_case()
    n_out = marching_tetrahedra(v, t, sdf).num_vertices
    assert n_out > 10
    weight = torch.randn(n_out, 3, dtype=torch.float64)

    def weighted_positions(vertices, values):
        return (marching_tetrahedra(vertices, t, values).vertices * weight).sum()

    sdf_var = sdf.clone().requires_grad_(True)
    v_var = v.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: weighted_positions(v, s), (sdf_var,))
    assert torch.autograd.gradcheck(lambda x: weighted_positions(x, sdf), (v_var,))
    assert torch.autograd.gradcheck(weighted_positions, (v_var, sdf_var))


def test_sphere_is_watertight_outward_and_accurate():
    r, res = 0.6, 32
    v, t = make_tet_grid(res)
    mesh = marching_tetrahedra(v, t, _sphere_sdf(v, radius=r))
    tm = mesh.to_trimesh()
    assert tm.is_watertight and tm.is_winding_consistent
    assert tm.volume == pytest.approx(4 / 3 * math.pi * r**3, rel=0.02)  # positive: outward
    centroids = mesh.face_vertices().mean(1)
    assert bool((mesh.face_normals(normalize=False) * centroids).sum(-1).gt(0).all())  # every face faces out
    cell = 2.0 / res
    # Vertices lie on the true sphere up to the interpolation error of a curved SDF.
    assert float((mesh.vertices.norm(dim=-1) - r).abs().max()) < 0.05 * cell
    samples = trimesh.sample.sample_surface(tm, 100_000, seed=0)[0]
    truth = np.random.default_rng(0).normal(size=(100_000, 3))
    truth = r * truth / np.linalg.norm(truth, axis=1, keepdims=True)
    assert _chamfer(samples, truth) < 0.1 * cell


def test_flipped_sign_reverses_orientation():
    v, t = make_tet_grid(16)
    sdf = _sphere_sdf(v, radius=0.55)
    out, flipped = marching_tetrahedra(v, t, sdf), marching_tetrahedra(v, t, -sdf)
    assert out.to_trimesh().volume > 0 > flipped.to_trimesh().volume
    assert flipped.to_trimesh().volume == pytest.approx(-out.to_trimesh().volume, rel=1e-6)


def test_two_separate_parts():
    v, t = make_tet_grid(32)
    sdf = torch.minimum(_sphere_sdf(v, (-0.5, 0.0, 0.0), 0.3), _sphere_sdf(v, (0.5, 0.1, 0.0), 0.25))
    tm = marching_tetrahedra(v, t, sdf).to_trimesh()
    parts = tm.split(only_watertight=False)
    assert len(parts) == 2 and tm.is_watertight
    volumes = sorted(p.volume for p in parts)
    assert volumes[0] == pytest.approx(4 / 3 * math.pi * 0.25**3, rel=0.04)
    assert volumes[1] == pytest.approx(4 / 3 * math.pi * 0.3**3, rel=0.04)


def test_zeros_on_grid_vertices_stay_watertight():
    """Grid-aligned shapes put sdf = 0 exactly on vertices: crossings there are welded, not duplicated."""
    v, t = make_tet_grid(16)
    box = (v.abs() - 0.5).amax(dim=-1)  # faces on grid planes
    sphere = _sphere_sdf(v, radius=0.5)  # passes through grid vertices such as (0.5, 0, 0)
    for sdf in (box, sphere):
        assert bool((sdf == 0).any())
        mesh = marching_tetrahedra(v, t, sdf)
        tm = mesh.to_trimesh()
        assert tm.is_watertight and tm.is_winding_consistent and tm.volume > 0
        assert bool((mesh.face_areas() > 0).all())
    tm = marching_tetrahedra(v, t, box).to_trimesh()
    # Marching tets cuts the box's edges by a chamfer of less than one cell (cell 1/8).
    assert 1.0 - 12 * (1 / 8) ** 2 / 2 < tm.volume <= 1.0 + 1e-6


def test_candidate_tets_give_the_same_mesh():
    v, t = make_tet_grid(16)
    sdf = torch.minimum(_sphere_sdf(v, (-0.3, 0.0, 0.1), 0.4), _sphere_sdf(v, (0.4, 0.2, 0.0), 0.3))
    full = marching_tetrahedra(v, t, sdf)
    fast = marching_tetrahedra(v, t, sdf, kuhn_grid_mixed_tets(sdf < 0, 16))
    assert torch.equal(full.vertices, fast.vertices) and torch.equal(full.faces, fast.faces)


def test_no_surface_gives_an_empty_mesh():
    v, t = make_tet_grid(4)
    mesh = marching_tetrahedra(v, t, torch.ones(v.shape[0]))
    assert mesh.num_vertices == 0 and mesh.num_faces == 0


def test_bad_input():
    v, t = make_tet_grid(2)
    with pytest.raises(InputError):
        marching_tetrahedra(v, t, torch.zeros(3))
    with pytest.raises(InputError):
        marching_tetrahedra(v[:, :2], t, torch.zeros(v.shape[0]))
    with pytest.raises(InputError):
        marching_tetrahedra(v, t.int(), torch.zeros(v.shape[0]))
