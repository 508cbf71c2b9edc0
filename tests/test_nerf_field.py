"""NeRF field: density bias and activation values, the box, normals, and a small photometric fit."""

import math

import pytest
import torch
import torch.nn.functional as F

from anyto3d.cameras import orbit_cameras
from anyto3d.errors import InputError
from anyto3d.fields.encoding import CPU_HASH_GRID, GridEncodingConfig
from anyto3d.fields.nerf import CPU_DENSE_NERF, FieldOutput, NeRFField, NeRFFieldConfig, trunc_exp
from anyto3d.images import psnr
from anyto3d.render.background import SolidBackground
from anyto3d.render.volume import OccupancyGridConfig, VolumeRenderer, VolumeRendererConfig

SMALL_DENSE = GridEncodingConfig(kind="dense", dense_resolution=16, dense_features=4)


def _blob_only(**kwargs) -> NeRFField:
    """A field whose MLPs output 0, so density = activation(bias)."""
    field = NeRFField(NeRFFieldConfig(encoding=SMALL_DENSE, **kwargs))
    with torch.no_grad():
        field.density_mlp[-1].weight.zero_()
    return field


def test_blob_bias_values():
    points = torch.tensor([[0.0, 0.0, 0.0], [0.25, 0.0, 0.0], [0.0, 0.3, 0.4]])
    magic3d = _blob_only(density_bias="blob_magic3d").density(points)
    torch.testing.assert_close(magic3d, F.softplus(torch.tensor([10.0, 10.0 * (1 - 0.25 / 0.5), 10.0 * (1 - 0.5 / 0.5)])))
    dreamfusion = _blob_only(density_bias="blob_dreamfusion", density_blob_scale=5.0, density_blob_std=0.2).density(points)
    expected = 5.0 * torch.exp(-torch.tensor([0.0, 0.0625, 0.25]) / (2 * 0.04))
    torch.testing.assert_close(dreamfusion, F.softplus(expected))
    exp_centre = _blob_only(density_activation="exp").density(points[:1])
    assert exp_centre.item() == pytest.approx(math.exp(10.0), rel=1e-5)
    none = _blob_only(density_bias="none").density(points)
    torch.testing.assert_close(none, torch.full((3,), math.log(2.0)))


def test_points_outside_the_box_have_zero_density():
    field = _blob_only(radius=0.5, density_bias="none")
    points = torch.tensor([[0.49, 0.0, -0.49], [0.51, 0.0, 0.0], [0.0, -0.6, 0.0], [0.0, 0.0, 2.0]])
    density = field.density(points)
    assert density[0] > 0 and torch.all(density[1:] == 0)


def test_trunc_exp_clamps_its_gradient():
    x = torch.tensor([1.0, 20.0], requires_grad=True)
    trunc_exp(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([math.e, math.exp(15.0)]))


def _smooth_field(normal_type: str) -> NeRFField:
    """Blob plus a smooth random perturbation in a dense grid (low-frequency content)."""
    cfg = NeRFFieldConfig(encoding=SMALL_DENSE, density_bias="blob_dreamfusion", normal_type=normal_type, finite_difference_eps=1e-3)
    field = NeRFField(cfg).double()
    torch.manual_seed(3)
    with torch.no_grad():
        coarse = torch.randn(1, 4, 4, 4, 4, dtype=torch.float64)
        field.encoding.grid.copy_(F.interpolate(coarse, size=(16, 16, 16), mode="trilinear", align_corners=True))
    return field


def test_finite_difference_normals_match_analytic_normals():
    fd = _smooth_field("finite_difference")
    analytic = _smooth_field("analytic")
    analytic.load_state_dict(fd.state_dict())
    points = (torch.rand(300, 3, dtype=torch.float64) - 0.5) * 1.2
    n_fd = fd(points, with_normal=True).normal
    n_an = analytic(points, with_normal=True).normal
    cosine = (n_fd * n_an).sum(-1)
    assert cosine.mean() > 0.999 and cosine.min() > 0.98
    torch.testing.assert_close(n_an.norm(dim=-1), torch.ones(300, dtype=torch.float64))


@pytest.mark.parametrize("normal_type", ["finite_difference", "analytic"])
def test_normals_of_a_radial_blob_point_outward(normal_type):
    field = _blob_only(density_bias="blob_dreamfusion", normal_type=normal_type)
    points = F.normalize(torch.randn(50, 3), dim=-1) * torch.rand(50, 1).add(0.1) * 0.8
    out = field(points, with_normal=True)
    assert isinstance(out, FieldOutput) and out.albedo.shape == (50, 3)
    assert torch.all((out.normal * F.normalize(points, dim=-1)).sum(-1) > 0.999)


def test_analytic_normals_carry_gradients_to_the_field():
    field = NeRFField(NeRFFieldConfig(encoding=SMALL_DENSE, normal_type="analytic"))
    with torch.no_grad():
        field.encoding.grid.normal_()
    points = torch.rand(20, 3) - 0.5
    normal = field(points, with_normal=True).normal
    normal[:, 2].sum().backward()
    assert field.encoding.grid.grad.abs().sum() > 0
    assert field.density_mlp[0].weight.grad.abs().sum() > 0
    with torch.no_grad():  # evaluation renders: normals without a graph
        assert not field(points, with_normal=True).normal.requires_grad


def test_hash_field_and_param_groups():
    field = NeRFField(NeRFFieldConfig(encoding=CPU_HASH_GRID))
    out = field(torch.rand(9, 3) * 2 - 1, with_normal=True)
    assert out.density.shape == (9,) and out.normal.shape == (9, 3)
    groups = field.param_groups(lr_grid=0.01, lr_mlp=0.001)
    assert [g["name"] for g in groups] == ["grid", "mlp"]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in field.parameters())


def test_bad_input_is_rejected():
    field = NeRFField(NeRFFieldConfig(encoding=SMALL_DENSE))
    with pytest.raises(InputError):
        field.density(torch.rand(4, 2))
    with pytest.raises(InputError):
        NeRFFieldConfig(density_activation="relu")
    with pytest.raises(InputError):
        NeRFFieldConfig(normal_type="pred")


class _Ball(torch.nn.Module):
    """Ground truth: a soft ball of radius 0.45 whose colour varies with direction."""

    def density(self, points, times=None):
        return 80.0 * torch.sigmoid((0.45 - points.norm(dim=-1)) / 0.02)

    def forward(self, points, times=None, with_normal=False):
        albedo = torch.stack([torch.sigmoid(6 * points[:, 0]), torch.sigmoid(6 * points[:, 1]), 0.2 + 0.6 * torch.sigmoid(-6 * points[:, 2])], -1)
        return FieldOutput(self.density(points), albedo)


def test_static_fit_raises_psnr():
    torch.manual_seed(0)
    renderer = VolumeRenderer(VolumeRendererConfig(n_samples=32), occupancy=OccupancyGridConfig(resolution=32))
    cams = orbit_cameras(6, elevation_deg=20.0)
    held_out = orbit_cameras(3, elevation_deg=-10.0, azimuth_start_deg=30.0)
    bg = SolidBackground()
    with torch.no_grad():
        target = renderer.render(_Ball(), cams, 24, 24, bg, stratified=False).rgb
        target_held = renderer.render(_Ball(), held_out, 24, 24, bg, stratified=False).rgb
    field = NeRFField(CPU_DENSE_NERF)
    opt = torch.optim.Adam(field.param_groups(lr_grid=0.05, lr_mlp=0.01), betas=(0.9, 0.99), eps=1e-15)
    origins, dirs = cams.rays(24, 24)
    rays_o, rays_d, colours = origins.reshape(-1, 3), dirs.reshape(-1, 3), target.reshape(-1, 3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = psnr(renderer.render(field, held_out, 24, 24, bg, stratified=False).rgb, target_held)
    for step in range(60):
        if step % 20 == 0:
            renderer.update_occupancy(field, generator=gen)
        pick = torch.randint(0, rays_o.shape[0], (1024,), generator=gen)
        out = renderer.render_rays(field, rays_o[pick], rays_d[pick], bg, generator=gen)
        loss = F.mse_loss(out.rgb, colours[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = psnr(renderer.render(field, held_out, 24, 24, bg, stratified=False).rgb, target_held)
    print(f"static fit: held-out PSNR {before:.2f} -> {after:.2f} dB")
    assert after > 22.0 and after > before + 8.0
