"""The mesh renderer against an analytic sphere: silhouette, normals, colours, depth, alignment."""

import math

import pytest
import torch
import trimesh

from anyto3d.cameras import LightBatch, orbit_cameras
from anyto3d.errors import InputError, NonFiniteError
from anyto3d.images import mask_iou
from anyto3d.mesh import Mesh
from anyto3d.render.mesh_renderer import MeshRenderer, MeshRendererConfig

SIZE = 64
DISTANCE = 3.5  # the unit sphere spans asin(1/3.5) = 16.6 deg of the 20 deg half field of view


@pytest.fixture(scope="module")
def sphere() -> Mesh:
    return Mesh.from_trimesh(trimesh.creation.icosphere(subdivisions=3))  # vertices on the unit sphere


@pytest.fixture(scope="module")
def cameras():
    return orbit_cameras(n_views=3, elevation_deg=20.0, distance=DISTANCE, fovy_deg=40.0, azimuth_start_deg=10.0)


def sphere_hits(cameras, height, width):
    """Analytic ray / unit-sphere intersection: hit mask, distance t, and hit point per pixel."""
    origins, dirs = cameras.rays(height, width)
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - 1.0
    disc = b * b - c
    hit = disc > 0
    t = -b - disc.clamp(min=0).sqrt()
    return hit, t, origins + t[..., None] * dirs


def mesh_hits(mesh: Mesh, cameras, height, width):
    """Where each pixel ray enters a **convex** mesh, independently of the rasteriser: the ray is
    inside every face's half-space between t_in = max of the entering planes' t and t_out = min
    of the leaving planes' t (Kay-Kajiya slabs). Distance t [B, H, W] (inf on a miss), point."""
    origins, dirs = cameras.rays(height, width)
    o, d = origins.reshape(-1, 3).double(), dirs.reshape(-1, 3).double()
    normals = mesh.face_normals().double()  # [F, 3], outward
    offsets = (normals * mesh.face_vertices()[:, 0].double()).sum(-1)  # n . x = offset on the plane
    facing = d @ normals.T  # [R, F]
    t_plane = (offsets[None] - o @ normals.T) / facing
    t_in = torch.where(facing < 0, t_plane, torch.full_like(t_plane, -math.inf)).max(dim=1).values
    t_out = torch.where(facing > 0, t_plane, torch.full_like(t_plane, math.inf)).min(dim=1).values
    t = torch.where((t_in <= t_out) & (t_in > 0), t_in, torch.full_like(t_in, math.inf)).view(origins.shape[:-1])
    return t, (origins.double() + t.clamp(max=1e3)[..., None] * dirs.double()).float()


def interior(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 4 neighbours are also in ``mask`` (away from the silhouette band)."""
    m = mask.float()[:, None]
    padded = torch.nn.functional.pad(m, (1, 1, 1, 1))
    neighbours = padded[..., :-2, 1:-1] * padded[..., 2:, 1:-1] * padded[..., 1:-1, :-2] * padded[..., 1:-1, 2:]
    return (mask & (neighbours[:, 0] > 0)).bool()


def test_opacity_matches_the_analytic_disc(sphere, cameras):
    out = MeshRenderer().render(sphere, cameras, SIZE, SIZE)
    hit, _, _ = sphere_hits(cameras, SIZE, SIZE)
    assert out.opacity.shape == (3, SIZE, SIZE, 1) and out.rgb.shape == (3, SIZE, SIZE, 3)
    for k in range(3):
        assert mask_iou(out.opacity[k, ..., 0], hit[k].float()) >= 0.97
    # Antialiased: a band of fractional coverage at the silhouette only.
    fractional = (out.opacity > 0.01) & (out.opacity < 0.99)
    assert fractional.sum() > 50 and (out.opacity[interior(hit)[..., None]] == 1).all()


def test_depth_is_where_the_pixel_ray_meets_the_mesh(sphere, cameras):
    out = MeshRenderer(MeshRendererConfig(antialias=False)).render(sphere, cameras[:2], SIZE, SIZE)
    t, _ = mesh_hits(sphere, cameras[:2], SIZE, SIZE)
    covered = out.opacity[..., 0] > 0
    # Pixel alignment with CameraBatch.rays: same coverage, and the ray through each covered
    # pixel meets the mesh at the rendered distance (half a pixel off would cost up to ~0.1).
    assert torch.equal(covered, torch.isfinite(t))
    assert (out.depth[..., 0][covered] - t[covered]).abs().max() < 1e-4
    assert (out.depth[..., 0][~covered] == 0).all()


def test_normals_at_the_image_centre_face_the_camera(sphere, cameras):
    out = MeshRenderer(MeshRendererConfig(shading="normal")).render(sphere, cameras, SIZE, SIZE)
    centre = out.normal[:, SIZE // 2 - 1 : SIZE // 2 + 1, SIZE // 2 - 1 : SIZE // 2 + 1]  # the 4 central pixels
    to_camera = torch.nn.functional.normalize(cameras.position, dim=-1).view(-1, 1, 1, 3)
    assert ((centre * to_camera).sum(-1) > 0.99).all()
    covered = out.depth[..., 0] > 0
    assert torch.allclose(out.normal.norm(dim=-1)[covered], torch.ones(1), atol=1e-5)
    assert (out.normal[~covered] == 0).all()
    # Normal shading composites (n + 1) / 2 over the background.
    covered = interior(out.opacity[..., 0] >= 1)
    assert torch.allclose(out.rgb[covered], ((out.normal + 1) / 2)[covered], atol=1e-6)
    assert torch.allclose(out.normal_image()[covered], out.rgb[covered], atol=1e-6)


def test_vertex_colours_and_color_fn_give_the_expected_colours(sphere, cameras):
    hit, _, _ = sphere_hits(cameras, SIZE, SIZE)
    _, points = mesh_hits(sphere, cameras, SIZE, SIZE)
    renderer = MeshRenderer()
    colored = Mesh(sphere.vertices, sphere.faces, colors=(sphere.vertices + 1) / 2)
    by_vertex = renderer.render(colored, cameras, SIZE, SIZE, background=torch.tensor([0.0, 0.0, 0.0]))
    by_fn = renderer.render(sphere, cameras, SIZE, SIZE, color_fn=lambda p: (p + 1) / 2)
    inside = interior(hit & (by_vertex.opacity[..., 0] >= 1))
    expected = (points + 1) / 2  # the colour is an affine function of position: exact on each face
    assert (by_vertex.rgb[inside] - expected[inside]).abs().max() < 1e-4
    assert (by_fn.rgb[inside] - expected[inside]).abs().max() < 1e-4
    # Backgrounds: black for the vertex-colour render, white by default.
    empty = interior(~hit)
    assert (by_vertex.rgb[empty] == 0).all() and (by_fn.rgb[empty] == 1).all()
    # No colours, no function: white.
    plain = renderer.render(sphere, cameras, SIZE, SIZE, background=torch.tensor([0.2, 0.3, 0.4]))
    assert torch.allclose(plain.rgb[inside], torch.ones(3))
    assert torch.allclose(plain.rgb[empty], torch.tensor([0.2, 0.3, 0.4]))


def test_color_fn_sees_only_covered_pixels(sphere, cameras):
    seen = []

    def color_fn(p):
        seen.append(p.shape[0])
        return torch.zeros_like(p)

    out = MeshRenderer(MeshRendererConfig(antialias=False)).render(sphere, cameras, SIZE, SIZE, color_fn=color_fn)
    assert seen == [int((out.opacity > 0).sum())]


def test_background_function_of_the_view_direction(sphere, cameras):
    out = MeshRenderer().render(sphere, cameras, SIZE, SIZE, background=lambda d: (d + 1) / 2)
    _, dirs = cameras.rays(SIZE, SIZE)
    hit, _, _ = sphere_hits(cameras, SIZE, SIZE)
    empty = interior(~hit)
    assert torch.allclose(out.rgb[empty], ((dirs + 1) / 2)[empty], atol=1e-6)


def test_lambertian_headlight_is_bright_facing_the_camera_and_ambient_at_grazing(sphere, cameras):
    lights = LightBatch(position=cameras.position * 100.0, ambient=torch.full((3,), 0.25))  # far light
    out = MeshRenderer(MeshRendererConfig(shading="lambertian", antialias=False)).render(
        sphere, cameras, SIZE, SIZE, lights=lights
    )
    centre = out.rgb[:, SIZE // 2 - 1 : SIZE // 2 + 1, SIZE // 2 - 1 : SIZE // 2 + 1]
    assert (centre > 0.99).all()
    covered = out.opacity[..., 0] > 0
    # ambient + (1 - ambient) max(n . l, 0) with l toward the light from the surface point.
    _, dirs = cameras.rays(SIZE, SIZE)
    points = cameras.position.view(-1, 1, 1, 3) + out.depth * dirs
    to_light = torch.nn.functional.normalize(lights.position.view(-1, 1, 1, 3) - points, dim=-1)
    expected = 0.25 + 0.75 * (out.normal * to_light).sum(-1).clamp(min=0)
    assert torch.allclose(out.rgb[covered], expected[covered][:, None].expand(-1, 3), atol=1e-4)
    assert out.rgb[covered].min() < 0.6  # pixels near the silhouette are nearly grazing


@pytest.mark.parametrize("subdivisions", [3, 5])
def test_opacity_gives_gradients_that_grow_the_sphere(subdivisions, cameras):
    # Subdivision 5 has triangles of about a pixel, seen as thin slivers near the silhouette:
    # the silhouette edge is then several triangles away from the pixel centre.
    sphere = Mesh.from_trimesh(trimesh.creation.icosphere(subdivisions=subdivisions))
    scale = torch.tensor(1.0, requires_grad=True)
    mesh = Mesh(sphere.vertices * scale, sphere.faces)
    out = MeshRenderer().render(mesh, cameras[0], SIZE, SIZE)
    out.opacity.sum().backward()
    # Coverage ~ pi r^2 (in pixels) grows like 2 x itself per unit of scale.
    area = out.opacity.sum().item()
    assert scale.grad.item() == pytest.approx(2 * area, rel=0.15)


def test_degenerate_faces_are_skipped_and_nan_vertices_rejected(sphere, cameras):
    renderer = MeshRenderer()
    extra = torch.cat([sphere.faces, torch.tensor([[0, 0, 1], [5, 6, 5]])])
    with_degenerate = renderer.render(Mesh(sphere.vertices, extra), cameras, 32, 32)
    clean = renderer.render(sphere, cameras, 32, 32)
    assert torch.equal(with_degenerate.rgb, clean.rgb) and torch.equal(with_degenerate.opacity, clean.opacity)
    bad = sphere.vertices.clone()
    bad[3, 1] = math.nan
    with pytest.raises(NonFiniteError):
        renderer.render(Mesh(bad, sphere.faces), cameras, 32, 32)


def test_bad_configuration_is_an_input_error(sphere, cameras):
    with pytest.raises(InputError, match="shading"):
        MeshRenderer(MeshRendererConfig(shading="phong"))
    with pytest.raises(InputError, match="color_fn"):
        MeshRenderer().render(sphere, cameras, 16, 16, color_fn=lambda p: p[:, :2])
    with pytest.raises(InputError, match="background"):
        MeshRenderer().render(sphere, cameras, 16, 16, background=torch.zeros(4))
