"""DMTet geometry: NeRF -> SDF conversion, two-pass tightening, errors, freezing, fitting; texture field."""

import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from anyto3d.errors import EmptyGeometryError, NonFiniteError
from anyto3d.fields.dmtet import DMTetConfig, DMTetGeometry, density_to_sdf
from anyto3d.fields.texture import CPU_TEXTURE_FIELD, TextureField

CENTER = torch.tensor([0.1, -0.05, 0.0])
SIGMA = 0.4
PEAK = 20.0
# Where the blob's density crosses 10: PEAK * exp(-r^2 / (2 sigma^2)) = 10.
BLOB_RADIUS = SIGMA * math.sqrt(2 * math.log(PEAK / 10.0))


def blob_density(points: torch.Tensor) -> torch.Tensor:
    return PEAK * torch.exp(-((points - CENTER) ** 2).sum(-1) / (2 * SIGMA**2))


def _chamfer(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def test_density_to_sdf_hand_values():
    density = torch.tensor([0.0, 5.0, 10.0, 15.0, 20.0, 50.0])
    assert torch.allclose(density_to_sdf(density, 10.0), torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0, -1.0]))


@pytest.mark.parametrize("two_pass", [False, True])
def test_from_density_places_the_surface_at_the_threshold(two_pass):
    geo = DMTetGeometry.from_density(blob_density, DMTetConfig(resolution=32, two_pass=two_pass))
    mesh = geo.mesh()
    cell = float(geo.cell_size.max())
    radii = (mesh.vertices.detach() - CENTER).norm(dim=-1)
    # Linear interpolation of a Gaussian along an edge misses the true crossing by a small
    # fraction of a cell (the inside end of every edge is below 2x threshold: no clamping).
    assert float((radii - BLOB_RADIUS).abs().max()) < 0.1 * cell
    tm = mesh.to_trimesh()
    assert tm.is_watertight and tm.volume == pytest.approx(4 / 3 * math.pi * BLOB_RADIUS**3, rel=0.03)


def test_second_pass_tightens_the_box_and_adds_vertices():
    one = DMTetGeometry.from_density(blob_density, DMTetConfig(resolution=32, two_pass=False))
    two = DMTetGeometry.from_density(blob_density, DMTetConfig(resolution=32, two_pass=True, bbox_padding=0.1))
    assert torch.equal(one.bbox_min, torch.full((3,), -1.0)) and torch.equal(one.bbox_max, torch.full((3,), 1.0))
    # The tightened box holds the whole blob surface plus padding, and not much more.
    extent = 2 * BLOB_RADIUS
    lo, hi = CENTER - BLOB_RADIUS, CENTER + BLOB_RADIUS
    assert bool((two.bbox_min < lo - 0.09 * extent).all()) and bool((two.bbox_max > hi + 0.09 * extent).all())
    coarse_cell = 2.0 / 32
    assert bool((two.bbox_min > lo - 0.11 * extent - 1.5 * coarse_cell).all())
    assert bool((two.bbox_max < hi + 0.11 * extent + 1.5 * coarse_cell).all())
    n_one, n_two = one.mesh().num_vertices, two.mesh().num_vertices
    assert n_two > 2.0 * n_one  # the resolution is spent on the object: ~ (2 / 1.26)^2 = 2.5x the surface vertices


def test_density_below_threshold_everywhere_is_an_empty_geometry_error():
    with pytest.raises(EmptyGeometryError, match=r"threshold 10\b.*\[0\.\d+, 5\]") as err:
        DMTetGeometry.from_density(lambda p: 5.0 * torch.exp(-(p**2).sum(-1)), DMTetConfig(resolution=8))
    assert "lower" in str(err.value)
    with pytest.raises(EmptyGeometryError, match=r"threshold 10\b.*everywhere"):
        DMTetGeometry.from_density(lambda p: torch.full(p.shape[:1], 30.0), DMTetConfig(resolution=8))


def test_nan_density_is_a_non_finite_error():
    def density(p):
        d = blob_density(p)
        d[p[:, 0] > 0.9] = float("nan")
        return d

    with pytest.raises(NonFiniteError, match="non-finite"):
        DMTetGeometry.from_density(density, DMTetConfig(resolution=8))


def test_mesh_errors_on_empty_and_nan_parameters():
    geo = DMTetGeometry(DMTetConfig(resolution=8))
    with torch.no_grad():
        geo.sdf.fill_(0.3)
    with pytest.raises(EmptyGeometryError, match="empty"):
        geo.mesh()
    with torch.no_grad():
        geo.sdf.fill_(-0.3)
        geo.sdf[3] = float("nan")
    with pytest.raises(NonFiniteError):
        geo.mesh()


def test_surface_touching_the_box_warns():
    with pytest.warns(UserWarning, match="open"):
        DMTetGeometry.from_density(lambda p: 30.0 * (p[:, 0] < 0.2), DMTetConfig(resolution=8, two_pass=False))


def test_gradients_reach_sdf_and_deformation_until_frozen():
    geo = DMTetGeometry(DMTetConfig(resolution=12))
    geo.mesh().vertices.sum().backward()
    assert float(geo.sdf.grad.abs().sum()) > 0 and float(geo.deformation_offset.grad.abs().sum()) > 0

    geo.freeze_geometry()
    assert geo.is_frozen and not geo.sdf.requires_grad and not geo.deformation_offset.requires_grad
    mesh = geo.mesh()
    assert not mesh.vertices.requires_grad
    assert geo.mesh() is mesh  # cached
    # A state-dict load replaces the parameters, so the cache is dropped.
    geo.load_state_dict(geo.state_dict())
    assert geo.mesh() is not mesh and torch.equal(geo.mesh().vertices, mesh.vertices)


def test_deformation_is_bounded_by_half_a_cell():
    cfg = DMTetConfig(resolution=10, deformation_scale=0.8)
    geo = DMTetGeometry(cfg, bbox_min=(-1, -0.5, 0), bbox_max=(1, 0.5, 2))
    with torch.no_grad():
        geo.deformation_offset.normal_(0, 100.0)
    moved = (geo.deformed_vertices() - geo.grid_vertices()).abs()
    bound = 0.8 * geo.cell_size / 2
    assert bool((moved <= bound + 1e-6).all()) and bool((moved.amax(0) > 0.99 * bound).all())


def test_state_dict_restores_the_tightened_grid():
    geo = DMTetGeometry.from_density(blob_density, DMTetConfig(resolution=16))
    fresh = DMTetGeometry(DMTetConfig(resolution=16))
    fresh.load_state_dict(geo.state_dict())
    assert torch.equal(fresh.mesh().vertices, geo.mesh().vertices)


def test_from_sdf_rejects_a_field_with_no_surface():
    with pytest.raises(EmptyGeometryError, match="no sign change"):
        DMTetGeometry.from_sdf(lambda p: p.norm(dim=-1) + 1.0, DMTetConfig(resolution=8))


def _box_sdf(points, half=torch.tensor([0.55, 0.4, 0.3])):
    q = points.abs() - half
    return q.clamp(min=0).norm(dim=-1) + q.amax(-1).clamp(max=0)


def test_fitting_sdf_and_deformation_to_a_box_reduces_chamfer():
    """A short optimisation (grid SDF regression + point-to-surface on mesh vertices) turns a sphere into a box."""
    target = trimesh.sample.sample_surface(trimesh.creation.box(extents=[1.1, 0.8, 0.6]), 20_000, seed=1)[0]

    def chamfer(geo):
        return _chamfer(trimesh.sample.sample_surface(geo.mesh().to_trimesh(), 20_000, seed=0)[0], target)

    cfg = DMTetConfig(resolution=24, two_pass=False)
    geo = DMTetGeometry.from_sdf(lambda p: p.norm(dim=-1) - 0.5, cfg)
    before = chamfer(geo)
    opt = torch.optim.Adam(geo.parameters(), lr=0.03)
    for _ in range(50):
        grid_loss = (geo.sdf - _box_sdf(geo.deformed_vertices().detach())).pow(2).mean()
        surface_loss = _box_sdf(geo.mesh().vertices).pow(2).mean()
        opt.zero_grad()
        (grid_loss + 10.0 * surface_loss).backward()
        opt.step()
    after = chamfer(geo)
    cell = 2.0 / 24
    assert after < 0.3 * before and after < 0.25 * cell
    assert float(geo.deformation_offset.detach().abs().max()) > 0  # the deformation took part


# -- texture field (Phase III) ------------------------------------------------------------------


def test_texture_field_maps_the_box_and_outputs_albedo():
    field = TextureField(CPU_TEXTURE_FIELD)
    corners = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [3.0, -3.0, 0.0]])
    assert torch.allclose(field.normalize_points(corners), torch.tensor([[0.0] * 3, [1.0] * 3, [0.5] * 3, [1.0, 0.0, 0.5]]))
    out = field(torch.rand(4, 5, 3) * 2 - 1)
    assert out.shape == (4, 5, 3) and bool(((out > 0) & (out < 1)).all())


def test_texture_field_fits_a_two_colour_object():
    """Usable as a colour_fn: learns red for x < 0 and blue for x > 0 on a sphere's surface."""
    torch.manual_seed(0)
    field = TextureField(CPU_TEXTURE_FIELD)
    points = torch.nn.functional.normalize(torch.randn(4096, 3), dim=-1) * 0.5
    target = torch.where(points[:, :1] < 0, torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.1, 0.9]))
    opt = torch.optim.Adam(field.parameters(), lr=0.03)
    first = None
    for _ in range(80):
        loss = (field(points) - target).pow(2).mean()
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = torch.nn.functional.normalize(torch.randn(512, 3), dim=-1) * 0.5
    test = test[test[:, 0].abs() > 0.1]  # away from the colour boundary
    expected = torch.where(test[:, :1] < 0, torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.1, 0.9]))
    error = (field(test) - expected).abs().amax(-1).detach()
    assert first > 0.1 and float(error.mean()) < 0.03 and float(error.quantile(0.99)) < 0.1
    assert field(test).requires_grad  # a differentiable colour_fn
