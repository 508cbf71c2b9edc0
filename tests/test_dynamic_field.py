"""4D-fy's dynamic field: summed static + 4D features, freezing, learning-rate groups, and a 4D fit."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from anyto3d.cameras import CameraBatch
from anyto3d.errors import InputError
from anyto3d.fields.dynamic import CPU_DYNAMIC_NERF, DynamicNeRFField, DynamicNeRFFieldConfig, set_group_lr
from anyto3d.fields.encoding import CPU_DENSE_GRID, CPU_HASH_GRID, GridEncodingConfig
from anyto3d.fields.nerf import FieldOutput
from anyto3d.images import psnr
from anyto3d.render.background import SolidBackground
from anyto3d.render.volume import OccupancyGridConfig, VolumeRenderer, VolumeRendererConfig

SMALL = GridEncodingConfig(kind="dense", dense_resolution=8, dense_features=4, dense_time_resolution=4)


def _small_field(**kwargs) -> DynamicNeRFField:
    return DynamicNeRFField(DynamicNeRFFieldConfig(encoding=SMALL, dynamic_encoding=SMALL, **kwargs))


def test_static_and_dynamic_features_are_summed():
    field = _small_field()
    with torch.no_grad():
        field.static_encoding.grid.normal_()
        field.dynamic_encoding.grid.normal_()
    unit = torch.rand(10, 3)
    times = torch.rand(10)
    expected = field.static_encoding(unit) + field.dynamic_encoding(torch.cat([unit, times[:, None]], -1))
    torch.testing.assert_close(field.encode(unit, times), expected)
    # Same heads as the static field: density responds to time only through the 4D grid.
    points = unit * 2 - 1
    out = field(points, times, with_normal=True)
    assert isinstance(out, FieldOutput) and out.normal.shape == (10, 3)
    torch.testing.assert_close(field.density(points, times), out.density)
    assert not torch.allclose(field.density(points, torch.zeros(10)), field.density(points, torch.ones(10)))
    with torch.no_grad():
        field.dynamic_encoding.grid.zero_()
    torch.testing.assert_close(field.density(points, torch.zeros(10)), field.density(points, torch.ones(10)))


def test_hash_grids_work_in_the_dynamic_field():
    field = DynamicNeRFField(DynamicNeRFFieldConfig(encoding=CPU_HASH_GRID, dynamic_encoding=CPU_HASH_GRID))
    out = field(torch.rand(6, 3) - 0.5, torch.tensor(0.5))  # one time broadcasts
    assert out.density.shape == (6,) and out.albedo.shape == (6, 3)


def test_freeze_dynamic_stops_its_gradients_only():
    field = _small_field()
    field.freeze_dynamic(True)
    points, times = torch.rand(16, 3) - 0.5, torch.rand(16)
    out = field(points, times)
    (out.density.sum() + out.albedo.sum()).backward()
    assert field.dynamic_encoding.grid.grad is None
    assert field.static_encoding.grid.grad.abs().sum() > 0
    assert field.albedo_mlp[0].weight.grad.abs().sum() > 0
    field.freeze_dynamic(False)
    field(points, times).density.sum().backward()
    assert field.dynamic_encoding.grid.grad.abs().sum() > 0


def test_param_groups_and_stage_three_learning_rate():
    field = _small_field()
    groups = field.param_groups(lr_static=0.01, lr_dynamic=0.01, lr_mlp=0.001)
    assert [(g["name"], g["lr"]) for g in groups] == [("static_grid", 0.01), ("dynamic_grid", 0.01), ("mlp", 0.001)]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in field.parameters())
    opt = torch.optim.Adam(groups)
    set_group_lr(opt, "static_grid", 1e-4)  # 4D-fy stage 3
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 0.01, 0.001]
    with pytest.raises(InputError):
        set_group_lr(opt, "background", 0.1)


def test_times_are_required_and_checked():
    field = _small_field()
    with pytest.raises(InputError):
        field.density(torch.rand(4, 3))
    with pytest.raises(InputError):
        field(torch.rand(4, 3), torch.rand(3))
    with pytest.raises(InputError):
        DynamicNeRFField(DynamicNeRFFieldConfig(encoding=CPU_DENSE_GRID, dynamic_encoding=CPU_HASH_GRID))


class SlidingBall(torch.nn.Module):
    """Ground truth: a two-coloured soft ball of radius 0.35 sliding 0.6 along x (and bobbing in y)."""

    def centre(self, times):
        return torch.stack([0.3 * (2 * times - 1), 0.1 * torch.sin(math.pi * times), torch.zeros_like(times)], -1)

    def density(self, points, times=None):
        return 60.0 * torch.sigmoid((0.35 - (points - self.centre(times)).norm(dim=-1)) / 0.02)

    def forward(self, points, times=None, with_normal=False):
        local = points - self.centre(times)
        albedo = torch.stack(
            [torch.sigmoid(8 * local[:, 0]), 0.3 + 0.4 * torch.sigmoid(8 * local[:, 2]), torch.sigmoid(-8 * local[:, 0])], -1
        )
        return FieldOutput(self.density(points, times), albedo)


def _views(times: list[float], azimuth_offset_deg: float, n_views: int = 4) -> CameraBatch:
    n = len(times) * n_views
    azimuth = torch.tensor([azimuth_offset_deg + 360.0 * k / n_views for k in range(n_views)]).repeat(len(times))
    cams = CameraBatch.from_spherical(
        torch.full((n,), math.radians(15.0)), torch.deg2rad(azimuth), torch.full((n,), 2.5), torch.full((n,), math.radians(40.0))
    )
    return replace(cams, times=torch.tensor(times).repeat_interleave(n_views))


def test_4d_fit_generalises_to_held_out_times():
    """Fit 8 frames x 4 views (32x32) of a moving object; PSNR at the 7 in-between times (seen
    from 4 other azimuths) must reach 25 dB. ~35 CPU-seconds (about 30 s on an idle 2-core machine)."""
    torch.manual_seed(0)
    size, n_frames = 32, 8
    train_times = [k / (n_frames - 1) for k in range(n_frames)]
    held_times = [(k + 0.5) / (n_frames - 1) for k in range(n_frames - 1)]
    bg = SolidBackground()
    truth = VolumeRenderer(VolumeRendererConfig(n_samples=64, stratified=False))
    train_cams, held_cams = _views(train_times, 0.0), _views(held_times, 45.0)
    with torch.no_grad():
        target = truth.render(SlidingBall(), train_cams, size, size, bg).rgb
        target_held = truth.render(SlidingBall(), held_cams, size, size, bg).rgb
    origins, dirs = train_cams.rays(size, size)
    rays_o, rays_d, colours = origins.reshape(-1, 3), dirs.reshape(-1, 3), target.reshape(-1, 3)
    ray_times = train_cams.times.repeat_interleave(size * size)

    field = DynamicNeRFField(CPU_DYNAMIC_NERF)  # dense 32^3 + dense 24^3 x 8 time slices
    opt = torch.optim.Adam(field.param_groups(lr_static=0.05, lr_dynamic=0.05, lr_mlp=0.01), betas=(0.9, 0.99), eps=1e-15)
    renderer = VolumeRenderer(VolumeRendererConfig(n_samples=32), occupancy=OccupancyGridConfig(resolution=32))
    gen = torch.Generator().manual_seed(0)
    for step in range(100):
        if step % 25 == 0:
            renderer.update_occupancy(field, torch.tensor(train_times), gen)
        pick = torch.randint(0, rays_o.shape[0], (2048,), generator=gen)
        out = renderer.render_rays(field, rays_o[pick], rays_d[pick], bg, times=ray_times[pick], generator=gen)
        loss = F.mse_loss(out.rgb, colours[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        held = psnr(renderer.render(field, held_cams, size, size, bg, stratified=False).rgb, target_held)
        static_guess = psnr(renderer.render(field, replace(held_cams, times=torch.full((len(held_cams),), 0.0)), size, size, bg, stratified=False).rgb, target_held)
    print(f"4D fit: held-out PSNR {held:.2f} dB (frame-0 field at those times: {static_guess:.2f} dB)")
    assert held >= 25.0
    assert held > static_guess + 5.0  # the motion is learned, not a static average
