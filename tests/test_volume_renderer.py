"""Volume renderer: compositing against analytic cases, gradients in float64, outputs and shapes."""

import math

import pytest
import torch
import torch.nn as nn

from anyto3d.cameras import CameraBatch, headlight, orbit_cameras
from anyto3d.errors import InputError
from anyto3d.fields.nerf import FieldOutput
from anyto3d.render.background import MLPBackground, RandomSolidBackground, SolidBackground
from anyto3d.render.volume import (
    OccupancyGridConfig,
    VolumeRenderer,
    VolumeRendererConfig,
    depth_variance,
    ray_box_bounds,
    ray_sphere_bounds,
    sample_pdf,
    volume_rendering_weights,
)


class ConstantField(nn.Module):
    """Density ``sigma`` everywhere (the renderer clips rays to the box), one albedo, one normal."""

    def __init__(self, sigma: float, albedo=(0.2, 0.4, 0.6), normal=(0.0, 0.0, 1.0)):
        super().__init__()
        self.sigma = sigma
        self.albedo = torch.tensor(albedo, dtype=torch.float64)
        self.normal = torch.tensor(normal, dtype=torch.float64)

    def density(self, points, times=None):
        return torch.full_like(points[:, 0], self.sigma)

    def forward(self, points, times=None, with_normal=False):
        n = points.shape[0]
        normal = self.normal.to(points).expand(n, 3) if with_normal else None
        return FieldOutput(self.density(points), self.albedo.to(points).expand(n, 3), normal)


class SphereField(nn.Module):
    """A dense ball of radius ``r`` (density ``sigma``) centred at ``c + t·v`` — moving when timed."""

    def __init__(self, r=0.5, sigma=200.0, velocity=(0.0, 0.0, 0.0)):
        super().__init__()
        self.r, self.sigma = r, sigma
        self.velocity = torch.tensor(velocity)

    def _centre(self, points, times):
        if times is None:
            return torch.zeros_like(points)
        return times[:, None] * self.velocity.to(points)

    def density(self, points, times=None):
        inside = (points - self._centre(points, times)).norm(dim=-1) < self.r
        return inside.to(points.dtype) * self.sigma

    def forward(self, points, times=None, with_normal=False):
        local = points - self._centre(points, times)
        normal = torch.nn.functional.normalize(local, dim=-1) if with_normal else None
        return FieldOutput(self.density(points, times), torch.sigmoid(3 * local), normal)


def _ray_along_x(dtype=torch.float64):
    return torch.tensor([[-3.0, 0.0, 0.0]], dtype=dtype), torch.tensor([[1.0, 0.0, 0.0]], dtype=dtype)


def test_compositing_gradcheck_float64():
    density = (torch.rand(3, 6, dtype=torch.float64) * 3).requires_grad_(True)
    deltas = (torch.rand(3, 6, dtype=torch.float64) * 0.5 + 0.05).requires_grad_(True)
    t = torch.cumsum(deltas.detach(), dim=-1).requires_grad_(True)

    def composite(density, deltas, t):
        weights, transmittance = volume_rendering_weights(density, deltas)
        mean, variance = depth_variance(weights, t)
        return weights, transmittance, mean, variance

    assert torch.autograd.gradcheck(composite, (density, deltas, t))


def test_weights_by_hand():
    density = torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.float64)
    deltas = torch.tensor([[0.5, 0.25, 1.0]], dtype=torch.float64)
    weights, transmittance = volume_rendering_weights(density, deltas)
    a = [1 - math.exp(-0.5), 1 - math.exp(-0.5), 1 - math.exp(-0.5)]
    expected_t = [1.0, math.exp(-0.5), math.exp(-1.0)]
    torch.testing.assert_close(transmittance[0], torch.tensor(expected_t, dtype=torch.float64))
    torch.testing.assert_close(weights[0], torch.tensor([expected_t[i] * a[i] for i in range(3)], dtype=torch.float64))


@pytest.mark.parametrize("stratified", [False, True])
def test_homogeneous_slab_opacity_and_depth(stratified):
    # The ray crosses the box [-1, 1]^3 from x = -1 to 1: a slab of length L = 2 starting at t = 2.
    sigma, length, near = 0.7, 2.0, 2.0
    renderer = VolumeRenderer(VolumeRendererConfig(n_samples=512, stratified=stratified))
    rays_o, rays_d = _ray_along_x()
    out = renderer.render_rays(ConstantField(sigma), rays_o, rays_d, SolidBackground((0.0, 0.0, 0.0)))
    assert out.opacity.item() == pytest.approx(1 - math.exp(-sigma * length), abs=1e-12)  # intervals tile exactly
    # Expected termination distance given termination inside the slab (continuous integral).
    mean_depth = near + 1 / sigma - length * math.exp(-sigma * length) / (1 - math.exp(-sigma * length))
    assert out.depth.item() == pytest.approx(mean_depth, abs=2e-3)
    # rgb = opacity * albedo over a black background.
    torch.testing.assert_close(out.rgb[0], out.opacity[0] * torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64))


def test_z_variance_two_samples_by_hand():
    sigma = 1.0
    renderer = VolumeRenderer(VolumeRendererConfig(n_samples=2, stratified=False))
    rays_o, rays_d = _ray_along_x()
    out = renderer.render_rays(ConstantField(sigma), rays_o, rays_d, SolidBackground())
    # Two unit intervals [2, 3], [3, 4]; points at their midpoints 2.5 and 3.5.
    w1 = 1 - math.exp(-1.0)
    w2 = math.exp(-1.0) * (1 - math.exp(-1.0))
    mean = (w1 * 2.5 + w2 * 3.5) / (w1 + w2)
    variance = (w1 * (2.5 - mean) ** 2 + w2 * (3.5 - mean) ** 2) / (w1 + w2)
    assert out.opacity.item() == pytest.approx(w1 + w2, abs=1e-12) and w1 + w2 > 0.5
    assert out.depth.item() == pytest.approx(mean, abs=1e-12)
    assert out.z_variance.item() == pytest.approx(variance, abs=1e-12)
    # δ = [opacity > 0.5]: a thin medium has no z-variance penalty.
    thin = renderer.render_rays(ConstantField(0.1), rays_o, rays_d, SolidBackground())
    assert thin.opacity.item() < 0.5 and thin.z_variance.item() == 0.0


def test_background_shows_through_empty_space_exactly():
    renderer = VolumeRenderer(VolumeRendererConfig(n_samples=16))
    cams = orbit_cameras(2, distance=2.5)
    for background in (SolidBackground((0.1, 0.7, 0.3)), MLPBackground()):
        out = renderer.render(ConstantField(0.0), cams, 8, 8, background)
        _, dirs = cams.rays(8, 8)
        expected = background(dirs.reshape(-1, 3).float()).reshape(2, 8, 8, 3)
        assert torch.equal(out.rgb, expected.to(out.rgb))
        assert torch.count_nonzero(out.opacity) == 0 and torch.count_nonzero(out.depth) == 0
    # Rays that miss the box see only the background too.
    rays_o = torch.tensor([[0.0, 0.0, 5.0]])
    rays_d = torch.tensor([[1.0, 0.0, 0.0]])
    miss = renderer.render_rays(ConstantField(5.0), rays_o, rays_d, SolidBackground((0.5, 0.5, 0.5)))
    assert miss.opacity.item() == 0.0 and torch.equal(miss.rgb, torch.full((1, 3), 0.5))


def test_ray_bounds():
    rays_o = torch.tensor([[-3.0, 0.2, 0.1], [0.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    rays_d = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), dim=-1)
    near, far = ray_box_bounds(rays_o, rays_d, 1.0)
    torch.testing.assert_close(near, torch.tensor([2.0, 0.0, 0.0]))
    torch.testing.assert_close(far, torch.tensor([4.0, 1.0, 0.0]))  # inside: from 0; miss: empty
    near, far = ray_sphere_bounds(rays_o[:1], rays_d[:1], 1.0)
    chord = math.sqrt(1 - 0.2**2 - 0.1**2)
    torch.testing.assert_close(near, torch.tensor([3.0 - chord]))
    torch.testing.assert_close(far, torch.tensor([3.0 + chord]))


def test_sample_pdf_follows_the_weights():
    edges = torch.linspace(0.0, 4.0, 5).expand(3, 5).contiguous()  # intervals [0,1], ..., [3,4]
    weights = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.5, 0.0, 0.0, 0.5], [1.0, 1.0, 1.0, 1.0]])
    samples = sample_pdf(edges, weights, 1000, stratified=True, generator=torch.Generator().manual_seed(0))
    inside = (samples[0] >= 2.0) & (samples[0] <= 3.0)
    assert inside.float().mean() > 0.99
    assert ((samples[1] < 1.0) | (samples[1] > 3.0)).float().mean() > 0.99
    assert abs(samples[1].lt(2.0).float().mean().item() - 0.5) < 0.02
    assert abs(samples[2].mean().item() - 2.0) < 0.05  # uniform over [0, 4]


def test_importance_sampling_sharpens_the_surface_depth():
    # A hard ball of radius 0.5 seen head-on from distance 3: true depth 2.5.
    rays_o, rays_d = torch.tensor([[0.0, -3.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    field = SphereField(r=0.5, sigma=1e4)
    coarse = VolumeRenderer(VolumeRendererConfig(n_samples=8, stratified=False))
    fine = VolumeRenderer(VolumeRendererConfig(n_samples=8, n_importance=32, stratified=False))
    bg = SolidBackground()
    err_coarse = abs(coarse.render_rays(field, rays_o, rays_d, bg).depth.item() - 2.5)
    out = fine.render_rays(field, rays_o, rays_d, bg)
    assert out.weights.shape == (1, 40)
    assert abs(out.depth.item() - 2.5) < 0.5 * err_coarse
    assert out.opacity.item() == pytest.approx(1.0, abs=1e-6)


def test_render_outputs_and_regulariser_terms():
    renderer = VolumeRenderer(VolumeRendererConfig(n_samples=24))
    cams = orbit_cameras(3, distance=2.5)
    out = renderer.render(SphereField(r=0.5, sigma=50.0), cams, 12, 10, SolidBackground(), with_normal=True)
    assert out.rgb.shape == (3, 12, 10, 3) and out.opacity.shape == (3, 12, 10, 1)
    assert out.depth.shape == out.z_variance.shape == (3, 12, 10, 1)
    assert out.normal.shape == (3, 12, 10, 3)
    assert out.weights.shape == (3 * 120, 24) and out.sample_normals.shape == (3 * 120, 24, 3)
    assert out.ray_dirs.shape == (3 * 120, 3)
    centre = out.opacity[:, 6, 5, 0]
    assert torch.all(centre > 0.99) and out.opacity[:, 0, 0, 0].max() < 0.01
    # The composited normal at the image centre faces the camera.
    to_camera = torch.nn.functional.normalize(cams.position, dim=-1)
    assert torch.all((out.normal[:, 6, 5] * to_camera).sum(-1) > 0.95)
    # Orientation regulariser's ingredient: normals facing away from the camera carry ~no weight.
    facing = torch.relu((out.sample_normals * out.ray_dirs[:, None, :]).sum(-1)) ** 2
    assert (out.weights * facing).sum(-1).max() < 0.2


def test_lambertian_shading_uses_lights():
    renderer = VolumeRenderer(VolumeRendererConfig(n_samples=64, stratified=False, shading="lambertian"))
    rays_o, rays_d = torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([[0.0, 0.0, -1.0]])
    field = ConstantField(1e4, albedo=(0.5, 0.5, 0.5), normal=(0.0, 0.0, 1.0))
    bg = SolidBackground((0.0, 0.0, 0.0))
    # Light straight above the surface: full diffuse; light below it: ambient only.
    above = renderer.render_rays(field, rays_o, rays_d, bg, light_positions=torch.tensor([[0.0, 0.0, 10.0]]), ambient=torch.tensor([0.2]))
    below = renderer.render_rays(field, rays_o, rays_d, bg, light_positions=torch.tensor([[0.0, 0.0, -10.0]]), ambient=torch.tensor([0.2]))
    torch.testing.assert_close(above.rgb, torch.full((1, 3), 0.5), atol=1e-4, rtol=0)
    torch.testing.assert_close(below.rgb, torch.full((1, 3), 0.1), atol=1e-4, rtol=0)
    with pytest.raises(InputError):
        renderer.render(field, orbit_cameras(1), 4, 4, bg)
    out = renderer.render(field, orbit_cameras(1), 4, 4, bg, lights=headlight(orbit_cameras(1)))
    assert out.rgb.shape == (1, 4, 4, 3)


def test_each_image_of_a_4d_batch_uses_its_own_time():
    renderer = VolumeRenderer(VolumeRendererConfig(n_samples=32, stratified=False))
    field = SphereField(r=0.3, sigma=100.0, velocity=(0.0, 0.6, 0.0))
    cams = orbit_cameras(1, elevation_deg=0.0)  # looks along -x; +y moves the ball to the right of the image
    two = CameraBatch(cams.c2w.repeat(2, 1, 1), cams.fovy.repeat(2), cams.elevation.repeat(2), cams.azimuth.repeat(2), cams.distance.repeat(2), torch.tensor([0.0, 1.0]))
    out = renderer.render(field, two, 16, 16, SolidBackground())
    for i, time in enumerate((0.0, 1.0)):
        single = CameraBatch(cams.c2w, cams.fovy, cams.elevation, cams.azimuth, cams.distance, torch.tensor([time]))
        torch.testing.assert_close(out.rgb[i], renderer.render(field, single, 16, 16, SolidBackground()).rgb[0])
    columns = torch.arange(16, dtype=torch.float32)
    centroid = [(out.opacity[i, :, :, 0].sum(0) * columns).sum() / out.opacity[i].sum() for i in range(2)]
    assert centroid[1] > centroid[0] + 2  # the ball moved right by 0.6 world units


def test_chunking_does_not_change_the_result_and_random_background():
    cams = orbit_cameras(2)
    field = SphereField(r=0.5, sigma=30.0)
    a = VolumeRenderer(VolumeRendererConfig(n_samples=16, stratified=False, chunk_size=7)).render(field, cams, 6, 6, SolidBackground())
    b = VolumeRenderer(VolumeRendererConfig(n_samples=16, stratified=False)).render(field, cams, 6, 6, SolidBackground())
    torch.testing.assert_close(a.rgb, b.rgb)
    torch.testing.assert_close(a.weights, b.weights)
    bg = RandomSolidBackground(torch.Generator().manual_seed(1))
    first, second = bg(torch.zeros(2, 3)), bg(torch.zeros(2, 3))
    assert torch.equal(first[0], first[1]) and not torch.equal(first, second)
    # One random colour per render, even when the rays are split into chunks.
    empty = VolumeRenderer(VolumeRendererConfig(n_samples=4, chunk_size=5)).render(ConstantField(0.0), cams, 4, 4, bg)
    assert torch.equal(empty.rgb, empty.rgb[0, 0, 0].expand_as(empty.rgb))


def test_bad_input_is_rejected():
    renderer = VolumeRenderer()
    with pytest.raises(InputError):
        renderer.render_rays(ConstantField(1.0), torch.zeros(4, 2), torch.zeros(4, 2), SolidBackground())
    with pytest.raises(InputError):
        VolumeRendererConfig(shading="phong")
    with pytest.raises(InputError):
        VolumeRendererConfig(n_samples=0)


def test_nerfacc_adapter_matches_torch_on_cpu():
    # nerfacc's batched compositing also runs on a CPU; this checks our adapter's interval maths
    # wherever the package imports (the renderer only selects nerfacc on CUDA).
    pytest.importorskip("nerfacc")
    from anyto3d.render.volume import _nerfacc_weights

    density = torch.rand(16, 12) * 5
    deltas = torch.rand(16, 12) * 0.2 + 0.01
    torch.testing.assert_close(_nerfacc_weights(density, deltas), volume_rendering_weights(density, deltas)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_nerfacc_compositing_matches_torch():
    pytest.importorskip("nerfacc")
    density = torch.rand(64, 32, device="cuda") * 5
    deltas = torch.rand(64, 32, device="cuda") * 0.1 + 0.01
    fast = VolumeRenderer(VolumeRendererConfig(backend="nerfacc"))._weights(density, deltas)
    torch.testing.assert_close(fast, volume_rendering_weights(density, deltas)[0], rtol=1e-4, atol=1e-5)


def test_occupancy_grid_skips_only_empty_space():
    field = SphereField(r=0.4, sigma=50.0)
    plain = VolumeRenderer(VolumeRendererConfig(n_samples=32, stratified=False))
    # One random point per cell can miss the ball's edge; the dilation and the running max over
    # updates are what make skipping safe.
    skipping = VolumeRenderer(VolumeRendererConfig(n_samples=32, stratified=False), occupancy=OccupancyGridConfig(resolution=16))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        skipping.update_occupancy(field, generator=gen)
    grid = skipping.occupancy
    assert 0.03 < grid.occupied_fraction() < 0.2  # a ball of radius 0.4 fills 3.4% of the box
    assert grid.query(torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.9, 0.9]])).tolist() == [True, False]
    cams = orbit_cameras(2)
    a = plain.render(field, cams, 16, 16, SolidBackground())
    b = skipping.render(field, cams, 16, 16, SolidBackground())
    torch.testing.assert_close(a.rgb, b.rgb)
    torch.testing.assert_close(a.depth, b.depth)


def test_occupancy_skipping_keeps_gradients():
    from anyto3d.fields.encoding import GridEncodingConfig
    from anyto3d.fields.nerf import NeRFField, NeRFFieldConfig

    field = NeRFField(NeRFFieldConfig(encoding=GridEncodingConfig(kind="dense", dense_resolution=8, dense_features=4)))
    plain = VolumeRenderer(VolumeRendererConfig(n_samples=16, stratified=False))
    skipping = VolumeRenderer(VolumeRendererConfig(n_samples=16, stratified=False), occupancy=OccupancyGridConfig(resolution=8, dilation=0))
    skipping.update_occupancy(field)
    assert skipping.occupancy.occupied_fraction() < 0.5  # the initial blob
    rays_o = torch.tensor([[0.0, -3.0, 0.0], [0.0, -3.0, 0.9]])
    rays_d = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    grads = []
    for renderer in (plain, skipping):
        field.zero_grad()
        renderer.render_rays(field, rays_o, rays_d, SolidBackground()).rgb.sum().backward()
        grads.append(field.encoding.grid.grad.clone())
    # Skipped samples carry (nearly) no weight, so the gradients agree.
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-3)
    assert grads[1].abs().sum() > 0


def test_occupancy_of_a_4d_field_is_the_union_over_times():
    field = SphereField(r=0.2, sigma=50.0, velocity=(1.2, 0.0, 0.0))
    renderer = VolumeRenderer(VolumeRendererConfig(n_samples=32), occupancy=OccupancyGridConfig(resolution=16, dilation=0))
    renderer.update_occupancy(field, times=torch.tensor([0.0, 0.5]))
    points = torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.0, 0.0], [-0.6, 0.0, 0.0]])
    assert renderer.occupancy.query(points).tolist() == [True, True, False]


def test_nan_density_is_a_clear_error():
    from anyto3d.errors import NonFiniteError

    renderer = VolumeRenderer(VolumeRendererConfig(n_samples=8))
    with pytest.raises(NonFiniteError, match="NaN/Inf density"):
        renderer.render(ConstantField(float("nan")), orbit_cameras(1), 4, 4, SolidBackground())
