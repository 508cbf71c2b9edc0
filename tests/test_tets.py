"""The generated tet grid: counts, orientation, exact volume and conformity."""

import itertools

import pytest
import torch

from anyto3d.errors import InputError
from anyto3d.fields.tets import kuhn_cube_tets, kuhn_grid_mixed_tets, make_tet_grid, tet_signed_volumes


def _faces(tets: torch.Tensor) -> torch.Tensor:
    """All oriented triangular faces [4T, 3] (outward w.r.t. a positively oriented tet)."""
    return torch.cat([tets[:, [1, 2, 3]], tets[:, [0, 3, 2]], tets[:, [0, 1, 3]], tets[:, [0, 2, 1]]])


@pytest.mark.parametrize("resolution", [1, 2, 3, 5])
def test_counts_and_box(resolution):
    lo, hi = (-1.0, -2.0, 0.5), (2.0, 1.0, 1.5)
    v, t = make_tet_grid(resolution, lo, hi)
    assert v.dtype == torch.float32 and t.dtype == torch.long
    assert v.shape == ((resolution + 1) ** 3, 3)
    assert t.shape == (6 * resolution**3, 4)
    assert torch.allclose(v.min(0).values, torch.tensor(lo)) and torch.allclose(v.max(0).values, torch.tensor(hi))
    assert int(t.min()) == 0 and int(t.max()) == v.shape[0] - 1
    # No tet repeats a vertex, and every grid vertex is used.
    assert all(bool((t[:, i] != t[:, j]).all()) for i, j in itertools.combinations(range(4), 2))
    assert torch.unique(t).numel() == v.shape[0]


def test_kuhn_split_shares_the_main_diagonal():
    cube = kuhn_cube_tets()
    assert cube.shape == (6, 4, 3)
    corners = {tuple(c) for c in cube.reshape(-1, 3).tolist()}
    assert corners == set(itertools.product((0, 1), repeat=3))
    for tet in cube.tolist():
        assert [0, 0, 0] in tet and [1, 1, 1] in tet


@pytest.mark.parametrize("resolution", [4, 32])
def test_volumes_positive_and_sum_to_box(resolution):
    lo, hi = torch.tensor([-1.0, -2.0, 0.5]), torch.tensor([2.0, 1.0, 1.5])
    v, t = make_tet_grid(resolution, lo, hi)
    vol = tet_signed_volumes(v.double(), t)
    box = float((hi - lo).prod())
    cell = box / resolution**3
    assert bool((vol > 0).all())
    # The Kuhn split cuts every cube into six tets of equal volume.
    assert torch.allclose(vol, torch.full_like(vol, cell / 6), rtol=1e-5)
    assert float(vol.sum()) == pytest.approx(box, rel=1e-9)


def test_grid_is_conforming():
    """Each interior triangle is a face of exactly two tets (with opposite orientation); each boundary one of one."""
    r = 3
    v, t = make_tet_grid(r, (0, 0, 0), (1, 1, 1))
    faces = _faces(t)
    keys, counts = torch.unique(torch.sort(faces, dim=1).values, dim=0, return_counts=True)
    assert set(counts.tolist()) <= {1, 2}
    boundary = keys[counts == 1]
    assert boundary.shape[0] == 6 * 2 * r * r  # two triangles per boundary square
    # Boundary faces lie on the box surface: all three vertices share a coordinate equal to 0 or 1.
    p = v[boundary]  # [B, 3, 3]
    on_plane = ((p == 0).all(dim=1) | (p == 1).all(dim=1)).any(dim=1)
    assert bool(on_plane.all())
    # Shared faces appear once with each winding: the two tets lie on opposite sides.
    oriented = torch.unique(torch.stack([_canonical_rotation(f) for f in faces.tolist()]), dim=0)
    assert oriented.shape[0] == faces.shape[0]  # no oriented face repeats


def _canonical_rotation(face):
    """Rotate a triangle's indices to start at the smallest (keeps the winding)."""
    k = face.index(min(face))
    return torch.tensor(face[k:] + face[:k])


def test_grid_is_memoised():
    _, t1 = make_tet_grid(8)
    v2, t2 = make_tet_grid(8, (0, 0, 0), (2, 2, 2))
    assert t1 is t2  # the index structure is generated once per resolution
    assert float(v2.max()) == 2.0


def test_mixed_cube_tets_are_exactly_the_tets_of_mixed_cubes():
    r = 8
    v, t = make_tet_grid(r)
    inside = (v - torch.tensor([0.2, -0.1, 0.3])).norm(dim=-1) < 0.55
    flags = inside[t]  # [T, 4]
    mixed_tet = flags.any(1) & ~flags.all(1)
    candidates = kuhn_grid_mixed_tets(inside, r)
    chosen = torch.zeros(t.shape[0], dtype=torch.bool)
    chosen[candidates] = True
    assert bool(chosen[mixed_tet].all())  # a superset of the tets with a sign change ...
    # ... and exactly the six tets of every cube whose corners disagree (checked cube by cube).
    cube_mixed = (flags.reshape(-1, 6, 4).any((1, 2)) & ~flags.reshape(-1, 6, 4).all(2).all(1))
    assert torch.equal(chosen.reshape(-1, 6).all(1), cube_mixed) and torch.equal(chosen.reshape(-1, 6).any(1), cube_mixed)
    with pytest.raises(InputError):
        kuhn_grid_mixed_tets(inside[:-1], r)


@pytest.mark.parametrize(
    "args",
    [(0,), (-3,), (2.5,), (True,), (4, (0, 0, 0), (1, 0, 1)), (4, (0, 0), (1, 1, 1)), (4, (0, 0, float("nan")), (1, 1, 1))],
)
def test_bad_input(args):
    with pytest.raises(InputError):
        make_tet_grid(*args)
