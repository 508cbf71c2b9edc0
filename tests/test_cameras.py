import math

import torch

from anyto3d import cameras as C


def test_look_at_basis_is_orthonormal_and_looks_at_origin():
    cams = C.CameraBatch.from_spherical(
        torch.tensor([0.3, -0.5, math.pi / 2]), torch.tensor([0.1, 2.0, 0.0]), torch.tensor([2.5, 1.5, 2.0]), 0.7
    )
    R = cams.c2w[:, :3, :3]
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3).expand(3, 3, 3), atol=1e-5)
    assert torch.allclose(torch.det(R), torch.ones(3), atol=1e-5)  # right-handed
    forward = -cams.c2w[:, :3, 2]
    to_origin = -cams.position / cams.position.norm(dim=-1, keepdim=True)
    assert torch.allclose(forward, to_origin, atol=1e-5)
    # Straight-down camera is well defined (fallback up).
    assert torch.isfinite(cams.c2w).all()


def test_convention_z_up_azimuth_from_x_toward_y():
    cams = C.CameraBatch.from_spherical(torch.tensor([0.0, 0.0, math.pi / 6]), torch.tensor([0.0, math.pi / 2, 0.0]), 2.0, 0.7)
    assert torch.allclose(cams.position[0], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(cams.position[1], torch.tensor([0.0, 2.0, 0.0]), atol=1e-6)
    assert cams.position[2, 2] > 0.99  # positive elevation is above the xy-plane
    # Camera up vector has a positive world-z component for a level camera.
    assert cams.c2w[0, 2, 1] > 0.99


def test_rays_and_mvp_agree_pixel_for_pixel():
    cams = C.CameraBatch.from_spherical(torch.tensor([0.4]), torch.tensor([1.1]), torch.tensor([2.2]), torch.tensor([0.8]))
    H, W = 12, 16
    o, d = cams.rays(H, W)
    i, j = 3, 11
    point = o[0, i, j] + 1.7 * d[0, i, j]
    clip = cams.mvp(H, W)[0] @ torch.cat([point, torch.ones(1)])
    ndc = clip[:3] / clip[3]
    col = (ndc[0] + 1) / 2 * W - 0.5
    row = (1 - ndc[1]) / 2 * H - 0.5
    assert abs(col - j) < 1e-3 and abs(row - i) < 1e-3
    # The centre ray points at the origin.
    o2, d2 = cams.rays(2, 2)
    centre = d2[0].mean(dim=(0, 1))
    assert torch.allclose(centre / centre.norm(), -cams.position[0] / cams.position[0].norm(), atol=1e-5)


def test_phase_samplers_respect_ranges_and_seed():
    g = torch.Generator().manual_seed(3)
    cams = C.sample_cameras(C.XBIND_PHASE_II, 2000, g)
    el, az = torch.rad2deg(cams.elevation), torch.rad2deg(cams.azimuth)
    assert el.min() >= -10 - 1e-4 and el.max() <= 45 + 1e-4
    assert az.min() >= -135 - 1e-4 and az.max() <= 225 + 1e-4 and az.max() > 200  # not wrapped
    assert cams.distance.min() >= 1.5 and cams.distance.max() <= 2.0
    fov = torch.rad2deg(cams.fovy)
    assert fov.min() >= 30 - 1e-4 and fov.max() <= 45 + 1e-4
    again = C.sample_cameras(C.XBIND_PHASE_II, 2000, torch.Generator().manual_seed(3))
    assert torch.equal(again.c2w, cams.c2w)
    p1 = C.sample_cameras(C.XBIND_PHASE_I, 500, g)
    assert torch.allclose(p1.distance, torch.full((500,), 2.5)) and torch.allclose(torch.rad2deg(p1.fovy), torch.full((500,), 40.0))


def test_sphere_uniform_elevation_mix_shifts_the_distribution():
    g = torch.Generator().manual_seed(0)
    cfg = C.CameraSamplerConfig(elevation_deg=(0, 90), sphere_uniform_prob=1.0)
    el = C.sample_cameras(cfg, 20000, g).elevation
    # Uniform in sin(el): P(el < 30°) = sin 30° = 0.5 (vs 1/3 for uniform in degrees).
    assert abs((el < math.radians(30)).float().mean().item() - 0.5) < 0.02


def test_multiview_group_is_evenly_spaced_with_shared_parameters():
    cams = C.sample_multiview_cameras(C.FOURDFY, 4, torch.Generator().manual_seed(1))
    az = torch.sort(torch.remainder(cams.azimuth, 2 * math.pi)).values
    gaps = torch.diff(torch.cat([az, az[:1] + 2 * math.pi]))
    assert torch.allclose(gaps, torch.full((4,), math.pi / 2), atol=1e-5)
    for t in (cams.elevation, cams.distance, cams.fovy):
        assert torch.allclose(t, t[:1].expand(4))


def test_video_sampler_one_camera_and_frame_times():
    cams = C.sample_video_cameras(C.FOURDFY, 16, torch.Generator().manual_seed(2))
    assert len(cams) == 16
    assert torch.allclose(cams.c2w, cams.c2w[:1].expand(16, 4, 4))
    t = cams.times
    assert 0 <= t[0] < 1 / 16
    assert torch.allclose(torch.diff(t), torch.full((15,), 1 / 16))
    assert t[-1] < 1


def test_evaluation_orbit_covers_azimuth_uniformly():
    cams = C.orbit_cameras(120, elevation_deg=15, distance=2.5)
    assert len(cams) == 120
    assert torch.allclose(torch.diff(cams.azimuth), torch.full((119,), 2 * math.pi / 120), atol=1e-6)
    assert torch.allclose(cams.elevation, torch.full((120,), math.radians(15)))


def test_relative_camera_zero123_layout():
    ref = C.CameraBatch.from_spherical(0.0, 0.0, 2.5, 0.7)
    tgt = C.CameraBatch.from_spherical(0.2, math.pi / 2, 2.0, 0.7)
    rel = C.relative_camera(ref, tgt)[0]
    # Camera raised by 0.2 rad -> polar angle shrinks: first component -0.2.
    assert torch.allclose(rel, torch.tensor([-0.2, 1.0, 0.0, -0.5]), atol=1e-6)


def test_lights_near_camera_and_seeded():
    cams = C.sample_cameras(C.XBIND_PHASE_I, 64, torch.Generator().manual_seed(0))
    lights = C.sample_lights(cams, generator=torch.Generator().manual_seed(0))
    ratio = lights.position.norm(dim=-1) / cams.distance
    assert ratio.min() >= 0.8 - 1e-5 and ratio.max() <= 1.5 + 1e-5
    cos = torch.nn.functional.cosine_similarity(lights.position, cams.position)
    assert cos.mean() > 0.7
